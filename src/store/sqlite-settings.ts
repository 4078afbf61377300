// The settings the server's two SQLite databases of the history share (the history index,
// src/store/sqlite-metadata-store.ts, and the chunk index, src/store/chunk-index.ts).

import type Database from "better-sqlite3";

/**
 * Write-ahead log, every commit synced, foreign keys checked; and SQLite's own default
 * page cache (2 MiB), not better-sqlite3's 16 MiB: a large backup fills that cache and
 * keeps it, about 10 MiB of the server's RSS in all for an 8 GiB file, and the 20,000
 * small files of the bench ran no slower (docs/performance.md).
 */
export function applyHistorySettings(db: Database.Database): void {
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.pragma("foreign_keys = ON");
  db.pragma("cache_size = -2000");
}
