// A set of chunk ids kept in a private temporary SQLite database rather than in memory, so
// that prune can hold every referenced chunk of a large history (tens of millions of ids)
// with bounded memory. The database file is removed when the set is closed.

import Database from "better-sqlite3";
import type { ChunkId } from "./chunk-store.js";

/** Ids added per transaction. */
const BATCH = 10_000;

export class ChunkIdSet {
  private readonly db: Database.Database;
  private readonly stmt;
  private pending = 0;

  constructor() {
    // An empty file name: SQLite's private temporary database, on disk, gone at close.
    this.db = new Database("");
    this.db.pragma("journal_mode = OFF");
    this.db.pragma("synchronous = OFF");
    this.db.exec("CREATE TABLE ids (id BLOB PRIMARY KEY) WITHOUT ROWID");
    this.stmt = {
      add: this.db.prepare<[Buffer]>("INSERT OR IGNORE INTO ids (id) VALUES (?)"),
      has: this.db.prepare<[Buffer], { one: number }>("SELECT 1 AS one FROM ids WHERE id = ?"),
      remove: this.db.prepare<[Buffer]>("DELETE FROM ids WHERE id = ?"),
      count: this.db.prepare<[], { n: number }>("SELECT count(*) AS n FROM ids"),
      page: this.db.prepare<[Buffer, number], { id: Buffer }>(
        "SELECT id FROM ids WHERE id > ? ORDER BY id LIMIT ?",
      ),
    };
  }

  /** A set holding every id `ids` yields. */
  static async from(ids: AsyncIterable<ChunkId> | Iterable<ChunkId>): Promise<ChunkIdSet> {
    const set = new ChunkIdSet();
    try {
      for await (const id of ids) set.add(id);
      return set;
    } catch (error) {
      set.close();
      throw error;
    }
  }

  add(id: ChunkId): void {
    this.write(() => this.stmt.add.run(id));
  }

  delete(id: ChunkId): void {
    this.write(() => this.stmt.remove.run(id));
  }

  has(id: ChunkId): boolean {
    return this.stmt.has.get(id) !== undefined;
  }

  get size(): number {
    this.commit();
    return this.stmt.count.get()?.n ?? 0;
  }

  /** Every id, in id order; the set must not change meanwhile. */
  *[Symbol.iterator](): Generator<ChunkId> {
    this.commit();
    let after: Buffer = Buffer.alloc(0);
    for (;;) {
      const rows = this.stmt.page.all(after, 1000);
      for (const row of rows) yield row.id;
      const last = rows.at(-1);
      if (!last || rows.length < 1000) return;
      after = last.id;
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** Writes are grouped into transactions of BATCH. */
  private write(fn: () => void): void {
    if (this.pending === 0) this.db.exec("BEGIN");
    fn();
    if (++this.pending >= BATCH) this.commit();
  }

  private commit(): void {
    if (this.pending === 0) return;
    this.pending = 0;
    this.db.exec("COMMIT");
  }
}
