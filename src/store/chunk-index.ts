// The local chunk store's index: one SQLite database (WAL, synchronous=FULL, so a committed
// transaction is durable when it returns; a batch of new chunks is durable when
// commitBatch's promise resolves, see wal-sync.ts) saying which pack holds each chunk and where.
// The schema is versioned with user_version and upgraded by MIGRATIONS; statements are
// prepared once and stay private to this module.

import Database from "better-sqlite3";
import { KeepwatchError } from "../errors.js";
import { applyHistorySettings } from "./sqlite-settings.js";
import { WalSync } from "./wal-sync.js";

/** The schema version this code writes; MIGRATIONS[v] upgrades version v to v + 1. */
export const INDEX_SCHEMA_VERSION = 1;

const MIGRATIONS: ((db: Database.Database) => void)[] = [
  // 0 → 1: packs and chunks.
  (db) => {
    db.exec(`
      CREATE TABLE packs (
        id BLOB PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        chunks INTEGER NOT NULL,
        raw_bytes INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'sealed'))
      ) WITHOUT ROWID;
      CREATE TABLE chunks (
        id BLOB PRIMARY KEY,
        pack BLOB NOT NULL REFERENCES packs (id),
        offset INTEGER NOT NULL,
        stored_len INTEGER NOT NULL,
        raw_len INTEGER NOT NULL,
        codec INTEGER NOT NULL
      ) WITHOUT ROWID;
      CREATE INDEX chunks_by_pack ON chunks (pack, offset);
    `);
  },
];

export type PackState = "open" | "sealed";

export interface PackRow {
  id: Buffer;
  /** Relative to the store folder. */
  path: string;
  /** Bytes of the file that index rows may point into; anything after is not the store's. */
  size: number;
  chunks: number;
  rawBytes: number;
  state: PackState;
}

export interface ChunkRow {
  id: Buffer;
  pack: Buffer;
  offset: number;
  storedLength: number;
  rawLength: number;
  codec: number;
}

/** A chunk's row with its pack's path. */
export interface ChunkLocation extends ChunkRow {
  path: string;
}

interface RawPack {
  id: Buffer;
  path: string;
  size: number;
  chunks: number;
  raw_bytes: number;
  state: PackState;
}

interface RawChunk {
  id: Buffer;
  pack: Buffer;
  offset: number;
  stored_len: number;
  raw_len: number;
  codec: number;
}

function toPack(row: RawPack): PackRow {
  return {
    id: row.id,
    path: row.path,
    size: row.size,
    chunks: row.chunks,
    rawBytes: row.raw_bytes,
    state: row.state,
  };
}

function toChunk(row: RawChunk): ChunkRow {
  return {
    id: row.id,
    pack: row.pack,
    offset: row.offset,
    storedLength: row.stored_len,
    rawLength: row.raw_len,
    codec: row.codec,
  };
}

/** A batch of new chunks in one pack, committed together. */
export interface ChunkBatch {
  pack: PackRow;
  chunks: ChunkRow[];
}

/** One step of a repack: chunks moved into a new pack, packs whose rows all go. */
export interface RepackCommit {
  /** The new pack the moved chunks now live in, if any were moved. */
  pack?: PackRow;
  moved: { id: Buffer; offset: number }[];
  /** Chunks forgotten. */
  deleted: Buffer[];
  /** Packs that no chunk row points to any more; their rows are removed. */
  emptied: Buffer[];
  /** Packs that lost some rows but keep others; their counters are recomputed. */
  touched: Buffer[];
}

export class ChunkIndex {
  private readonly stmt;
  private readonly wal: WalSync;

  private constructor(
    private readonly db: Database.Database,
    /** True when this open created the database (there was no schema before). */
    readonly created: boolean,
    path: string,
  ) {
    this.wal = new WalSync(db, path);
    this.stmt = {
      locate: db.prepare<[Buffer], RawChunk & { path: string }>(
        "SELECT c.id, c.pack, c.offset, c.stored_len, c.raw_len, c.codec, p.path FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.id = ?",
      ),
      has: db.prepare<[Buffer], { one: number }>("SELECT 1 AS one FROM chunks WHERE id = ?"),
      firstPage: db.prepare<[number], { id: Buffer }>("SELECT id FROM chunks ORDER BY id LIMIT ?"),
      nextPage: db.prepare<[Buffer, number], { id: Buffer }>(
        "SELECT id FROM chunks WHERE id > ? ORDER BY id LIMIT ?",
      ),
      totals: db.prepare<[], { chunks: number; raw: number; stored: number }>(
        "SELECT coalesce(sum(chunks), 0) AS chunks, coalesce(sum(raw_bytes), 0) AS raw, coalesce(sum(size), 0) AS stored FROM packs",
      ),
      packs: db.prepare<[], RawPack>("SELECT id, path, size, chunks, raw_bytes, state FROM packs"),
      packOf: db.prepare<[Buffer], RawPack>(
        "SELECT id, path, size, chunks, raw_bytes, state FROM packs WHERE id = ?",
      ),
      chunksOf: db.prepare<[Buffer], RawChunk>(
        "SELECT id, pack, offset, stored_len, raw_len, codec FROM chunks WHERE pack = ? ORDER BY offset",
      ),
      upsertPack: db.prepare<[Buffer, string, number, number, number, PackState]>(
        `INSERT INTO packs (id, path, size, chunks, raw_bytes, state) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET size = excluded.size, chunks = excluded.chunks,
           raw_bytes = excluded.raw_bytes, state = excluded.state`,
      ),
      sealPack: db.prepare<[number, Buffer]>("UPDATE packs SET state = 'sealed', size = ? WHERE id = ?"),
      addChunk: db.prepare<[Buffer, Buffer, number, number, number, number]>(
        "INSERT INTO chunks (id, pack, offset, stored_len, raw_len, codec) VALUES (?, ?, ?, ?, ?, ?)",
      ),
      moveChunk: db.prepare<[Buffer, number, Buffer]>("UPDATE chunks SET pack = ?, offset = ? WHERE id = ?"),
      deleteChunk: db.prepare<[Buffer]>("DELETE FROM chunks WHERE id = ?"),
      deletePack: db.prepare<[Buffer]>("DELETE FROM packs WHERE id = ?"),
      recount: db.prepare<[Buffer, Buffer, Buffer]>(
        `UPDATE packs SET chunks = (SELECT count(*) FROM chunks WHERE pack = ?),
           raw_bytes = (SELECT coalesce(sum(raw_len), 0) FROM chunks WHERE pack = ?) WHERE id = ?`,
      ),
    };
  }

  /**
   * Open (creating if missing) the index at `path`. Takes SQLite's lock for good
   * (locking_mode=EXCLUSIVE), so a second process opening the same store fails here instead
   * of removing the first one's pack files as orphans.
   */
  static open(path: string): ChunkIndex {
    let db: Database.Database | undefined;
    try {
      db = new Database(path, { timeout: 1000 });
      db.pragma("locking_mode = EXCLUSIVE");
      applyHistorySettings(db);
      const created = migrate(db, path);
      return new ChunkIndex(db, created, path);
    } catch (error) {
      db?.close();
      if (error instanceof KeepwatchError) throw error;
      if (error instanceof Error && "code" in error && error.code === "SQLITE_BUSY") {
        throw new KeepwatchError(
          "KW_SERVER_IO",
          `The chunk index ${path} is in use by another process; stop the other keepwatch server using this destination.`,
          { cause: error },
        );
      }
      throw error;
    }
  }

  /**
   * Open an existing index at `path` for reading only, without SQLite's exclusive lock. Fails
   * with SQLITE_BUSY while a store holds it open. Used by verify, which never writes; a
   * reader open also keeps a store from opening, so readers should close it soon.
   */
  static openReadOnly(path: string): ChunkIndex {
    const db = new Database(path, { readonly: true, fileMustExist: true, timeout: 0 });
    try {
      const version = db.pragma("user_version", { simple: true }) as number;
      if (version !== INDEX_SCHEMA_VERSION) {
        throw new KeepwatchError(
          "KW_SERVER_IO",
          `The chunk index ${path} has schema version ${version}, not ${INDEX_SCHEMA_VERSION}; use the keepwatch that wrote it.`,
        );
      }
      return new ChunkIndex(db, false, path);
    } catch (error) {
      db.close();
      throw error;
    }
  }

  locate(id: Buffer): ChunkLocation | undefined {
    const row = this.stmt.locate.get(id);
    return row ? { ...toChunk(row), path: row.path } : undefined;
  }

  has(id: Buffer): boolean {
    return this.stmt.has.get(id) !== undefined;
  }

  /** Up to `limit` chunk ids in id order, after `after` (from the start when undefined). */
  page(after: Buffer | undefined, limit: number): Buffer[] {
    const rows = after ? this.stmt.nextPage.all(after, limit) : this.stmt.firstPage.all(limit);
    return rows.map((r) => r.id);
  }

  totals(): { chunks: number; rawBytes: number; storedBytes: number } {
    const row = this.stmt.totals.get() ?? { chunks: 0, raw: 0, stored: 0 };
    return { chunks: row.chunks, rawBytes: row.raw, storedBytes: row.stored };
  }

  packs(): PackRow[] {
    return this.stmt.packs.all().map(toPack);
  }

  pack(id: Buffer): PackRow | undefined {
    const row = this.stmt.packOf.get(id);
    return row ? toPack(row) : undefined;
  }

  /** The chunk rows of a pack, in file order. */
  chunksOf(pack: Buffer): ChunkRow[] {
    return this.stmt.chunksOf.all(pack).map(toChunk);
  }

  /** Record new chunks and their pack's new size and state, in one transaction. */
  commitBatch(batch: ChunkBatch): Promise<void> {
    // Durable once the log is synced, off the event loop (wal-sync.ts).
    this.wal.commitLazily(() =>
      this.db.transaction(() => {
        const p = batch.pack;
        this.stmt.upsertPack.run(p.id, p.path, p.size, p.chunks, p.rawBytes, p.state);
        for (const c of batch.chunks) {
          this.stmt.addChunk.run(c.id, c.pack, c.offset, c.storedLength, c.rawLength, c.codec);
        }
      })(),
    );
    return this.wal.sync();
  }

  /** Mark a pack sealed at `size`: nothing more will be appended to it. */
  sealPack(id: Buffer, size: number): void {
    this.stmt.sealPack.run(size, id);
  }

  /** Apply one step of a repack, in one transaction. */
  commitRepack(change: RepackCommit): void {
    this.db.transaction(() => {
      const p = change.pack;
      if (p) this.stmt.upsertPack.run(p.id, p.path, p.size, p.chunks, p.rawBytes, p.state);
      for (const m of change.moved) {
        if (!p) throw new Error("moved chunks need a pack");
        this.stmt.moveChunk.run(p.id, m.offset, m.id);
      }
      for (const id of change.deleted) this.stmt.deleteChunk.run(id);
      for (const id of change.emptied) {
        if (this.stmt.chunksOf.get(id)) throw new Error("a pack still holding chunks cannot be removed");
        this.stmt.deletePack.run(id);
      }
      for (const id of change.touched) this.stmt.recount.run(id, id, id);
    })();
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

/** Bring the schema to INDEX_SCHEMA_VERSION; returns true when there was none before. */
function migrate(db: Database.Database, path: string): boolean {
  // A write transaction at once: it takes the exclusive lock even when nothing changes.
  return db
    .transaction(() => {
      const version = db.pragma("user_version", { simple: true }) as number;
      if (version > INDEX_SCHEMA_VERSION) {
        throw new KeepwatchError(
          "KW_SERVER_IO",
          `The chunk index ${path} has schema version ${version}, newer than this keepwatch (${INDEX_SCHEMA_VERSION}); use a newer keepwatch.`,
        );
      }
      for (let v = version; v < INDEX_SCHEMA_VERSION; v++)
        (MIGRATIONS[v] as (db: Database.Database) => void)(db);
      if (version !== INDEX_SCHEMA_VERSION) db.pragma(`user_version = ${INDEX_SCHEMA_VERSION}`);
      return version === 0;
    })
    .immediate();
}
