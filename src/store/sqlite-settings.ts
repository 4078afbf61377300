// The settings keepwatch's SQLite databases share: the server's two of the history (the
// history index, src/store/sqlite-metadata-store.ts, and the chunk index,
// src/store/chunk-index.ts) and, for the page cache, the client's state (src/client/state.ts) and
// verify's scratch database (src/server/verify.ts).

import type Database from "better-sqlite3";

/**
 * SQLite's own default page cache (2 MiB), not better-sqlite3's 16 MiB. A large backup
 * fills the cache and keeps it: about 10 MiB of the server's RSS in all for an 8 GiB file,
 * and 16 MiB of the client's when it compares a tree of 190,000 files with its state. Neither
 * ran slower with 2 MiB (docs/performance.md).
 */
export function applyPageCache(db: Database.Database): void {
  db.pragma("cache_size = -2000");
}

/** Write-ahead log, every commit synced, foreign keys checked, and the page cache above. */
export function applyHistorySettings(db: Database.Database): void {
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = FULL");
  db.pragma("foreign_keys = ON");
  applyPageCache(db);
}
