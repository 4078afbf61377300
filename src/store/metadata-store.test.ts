import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import Database from "better-sqlite3";
import { runMetadataStoreConformance } from "./metadata-store.conformance.js";
import type { MetadataStore } from "./metadata-store.js";
import {
  atOrBelow,
  atOrBelowSql,
  FILE_COUNT_SQL,
  HISTORY_BELOW_PAGE_SQL,
  NEWEST_VERSION_SQL,
  SqliteMetadataStore,
} from "./sqlite-metadata-store.js";

runMetadataStoreConformance("SQLite", async () => {
  const dir = await mkdtemp(join(tmpdir(), "kw-meta-"));
  const file = join(dir, "index.db");
  let current: MetadataStore = SqliteMetadataStore.open(file);
  return {
    store: current,
    reopen: async () => {
      await current.close();
      current = SqliteMetadataStore.open(file);
      return current;
    },
    cleanup: async () => {
      await current.close().catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
});

test("a path and what is below it are looked up by a range of the index, not the whole set", async () => {
  // With an OR of "the path" and "below it", SQLite read every version of the set: 30 ms
  // for each delete of a file in a set of 200,000 files.
  const dir = await mkdtemp(join(tmpdir(), "kw-meta-"));
  try {
    const store = SqliteMetadataStore.open(join(dir, "index.db"));
    await store.close();
    const db = new Database(join(dir, "index.db"), { readonly: true });
    try {
      const plan = db
        .prepare(`EXPLAIN QUERY PLAN SELECT id FROM versions WHERE set_id = ? AND ${atOrBelowSql("path")}`)
        .all(1, ...atOrBelow("d")) as { detail: string }[];
      assert.match(
        plan.map((row) => row.detail).join("; "),
        /versions_by_path \(set_id=\? AND path>\? AND path<\?\)/,
      );
      // A subtree's history in pages walks the ids: sorting the subtree for every page
      // would take time growing with its square.
      const pages = db
        .prepare(`EXPLAIN QUERY PLAN ${HISTORY_BELOW_PAGE_SQL}`)
        .all(0, 1, ...atOrBelow("d"), 1000) as { detail: string }[];
      const detail = pages.map((row) => row.detail).join("; ");
      assert.match(detail, /SEARCH v USING INTEGER PRIMARY KEY \(rowid>\?\)/);
      assert.doesNotMatch(detail, /TEMP B-TREE/);
    } finally {
      db.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a set's file count and newest version are read from the index alone, and a schema 1 index is brought up to it", async () => {
  // On 3,000,001 versions the count took 13.6 s when it went back to the table for each
  // path's newest version, 0.9 s from the index (docs/performance.md).
  const dir = await mkdtemp(join(tmpdir(), "kw-meta-"));
  const file = join(dir, "index.db");
  try {
    // The schema of version 1, as the keepwatch before it wrote it, with a few versions.
    const old = new Database(file);
    old.exec(`
      CREATE TABLE sets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
      CREATE TABLE contents (id INTEGER PRIMARY KEY, sha256 BLOB NOT NULL UNIQUE, size INTEGER NOT NULL, chunk_count INTEGER NOT NULL);
      CREATE TABLE content_chunks (
        content_id INTEGER NOT NULL REFERENCES contents (id), idx INTEGER NOT NULL, chunk_id BLOB NOT NULL,
        length INTEGER NOT NULL, PRIMARY KEY (content_id, idx)
      ) WITHOUT ROWID;
      CREATE INDEX content_chunks_by_chunk ON content_chunks (chunk_id);
      CREATE TABLE versions (
        id INTEGER PRIMARY KEY, set_id INTEGER NOT NULL REFERENCES sets (id), path TEXT NOT NULL,
        time INTEGER NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'deleted')),
        size INTEGER NOT NULL, mtime_ms REAL NOT NULL, mode INTEGER NOT NULL,
        content_id INTEGER REFERENCES contents (id)
      );
      CREATE INDEX versions_by_path ON versions (set_id, path, id);
      CREATE INDEX versions_by_content ON versions (content_id);
      INSERT INTO sets (id, name) VALUES (1, 's');
      INSERT INTO contents (id, sha256, size, chunk_count) VALUES (1, zeroblob(32), 0, 0);
      INSERT INTO versions (set_id, path, time, kind, size, mtime_ms, mode, content_id) VALUES
        (1, 'a', 1000, 'file', 0, 0, 420, 1),
        (1, 'b', 1000, 'file', 0, 0, 420, 1),
        (1, 'd', 1000, 'dir', 0, 0, 493, NULL),
        (1, 'b', 2000, 'deleted', 0, 0, 0, NULL),
        (1, 'c', 2000, 'file', 0, 0, 420, 1),
        (1, 'a', 3000, 'dir', 0, 0, 493, NULL);
      PRAGMA user_version = 1;
    `);
    old.close();

    const store = SqliteMetadataStore.open(file);
    assert.equal(await store.fileCountAt("s", 1500), 2, "a and b");
    assert.equal(await store.fileCountAt("s", 2500), 2, "a and c");
    assert.equal(await store.fileCountAt("s"), 1, "c: a became a folder");
    await store.close();

    const db = new Database(file, { readonly: true });
    try {
      assert.equal(db.pragma("user_version", { simple: true }), 2);
      const columns = (db.pragma("index_info(versions_by_path)") as { name: string }[]).map((c) => c.name);
      assert.deepEqual(columns, ["set_id", "path", "id", "time", "kind"]);
      const plan = db.prepare(`EXPLAIN QUERY PLAN ${FILE_COUNT_SQL}`).all(1, 5000) as { detail: string }[];
      assert.match(plan.map((row) => row.detail).join("; "), /COVERING INDEX versions_by_path/);
      // The newest version of a set (`ls`): its id from the index, no sort of the set.
      const newest = db.prepare(`EXPLAIN QUERY PLAN ${NEWEST_VERSION_SQL}`).all(1, 5000) as {
        detail: string;
      }[];
      const newestPlan = newest.map((row) => row.detail).join("; ");
      assert.match(newestPlan, /COVERING INDEX versions_by_path/);
      assert.doesNotMatch(newestPlan, /TEMP B-TREE/);
    } finally {
      db.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
