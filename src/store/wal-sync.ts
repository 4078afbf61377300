// Durable SQLite commits without an fsync on the event loop. better-sqlite3 runs SQLite on
// the calling thread, and with synchronous = FULL every commit waits there for the fsync
// of the write-ahead log: on the server's hot path (a group commit of versions, a batch of
// chunk rows) that held up every connection for about a millisecond per commit. Instead,
// such a commit runs with synchronous = NORMAL (in WAL mode: no fsync at commit, the log is
// synced before each checkpoint, the database after it, so a crash may lose the last
// commits but never damages the database), and the caller then fsyncs the log file on the
// thread pool before it relies on the commit. The connection stays at FULL for every other
// write (prune, repacking), which must be durable before files are removed.

import type Database from "better-sqlite3";
import { PathSyncer } from "./path-syncer.js";

export class WalSync {
  /** The log file: the database's name with "-wal". */
  private readonly log: string;
  private readonly syncer = new PathSyncer();

  constructor(
    private readonly db: Database.Database,
    /** The database file. */
    file: string,
  ) {
    this.log = `${file}-wal`;
  }

  /** Run `write` (a transaction) without waiting for the disk; call `sync` before relying on it. */
  commitLazily<T>(write: () => T): T {
    this.db.pragma("synchronous = NORMAL");
    try {
      return write();
    } finally {
      this.db.pragma("synchronous = FULL");
    }
  }

  /**
   * Resolves once every commit made before the call is on disk: an fsync of the log that
   * starts after the call. Calls that come while one runs share the next one.
   */
  sync(): Promise<void> {
    return this.syncer.sync(this.log);
  }
}
