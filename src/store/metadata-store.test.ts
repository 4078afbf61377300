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
  HISTORY_BELOW_PAGE_SQL,
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
