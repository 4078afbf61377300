// Tests of the settings keepwatch's SQLite databases share: what they are once applied.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import Database from "better-sqlite3";
import { applyHistorySettings, applyPageCache } from "./sqlite-settings.js";

test("a history database logs ahead, syncs every commit, checks foreign keys and keeps a 2 MiB page cache", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "kw-sqlite-settings-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const db = new Database(join(dir, "x.db"));
  try {
    applyHistorySettings(db);
    assert.equal(db.pragma("journal_mode", { simple: true }), "wal");
    assert.equal(db.pragma("synchronous", { simple: true }), 2, "FULL");
    assert.equal(db.pragma("foreign_keys", { simple: true }), 1);
    assert.equal(db.pragma("cache_size", { simple: true }), -2000);
  } finally {
    db.close();
  }
});

test("the page cache alone is 2 MiB, whatever else the database keeps", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "kw-sqlite-settings-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const db = new Database(join(dir, "y.db"));
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    assert.notEqual(db.pragma("cache_size", { simple: true }), -2000, "better-sqlite3's own is larger");
    applyPageCache(db);
    assert.equal(db.pragma("cache_size", { simple: true }), -2000);
    assert.equal(db.pragma("synchronous", { simple: true }), 1, "and the rest is left as it was");
  } finally {
    db.close();
  }
});
