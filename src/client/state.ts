// The client's record of what the server has acknowledged, kept in the user's state
// folder (never inside SRC): for each path its kind, size, mtime, mode, inode and SHA-256.
// A file whose record matches the disk is not sent again, also across restarts.

import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { ChunkList, ENTRY_BYTES } from "../chunking/chunk-list.js";
import { KeepwatchError } from "../errors.js";
import { applyPageCache } from "../store/sqlite-settings.js";

/** Bump with a migration below whenever the schema changes. */
const SCHEMA_VERSION = 6;

export interface FileRecord {
  kind: "file";
  size: number;
  mtimeMs: number;
  mode: number;
  ino: number;
  /** Null in records written before ctime was kept. */
  ctimeMs: number | null;
  sha256: Buffer;
  /** The content's chunk list as acknowledged (ChunkList.stored), the base of the next delta. */
  chunks: Buffer | null;
  /**
   * The fingerprints of those chunks (ChunkList.storedMarks), which let the next read of the file skip
   * the SHA-256 of chunks that did not change; null when not known (small files, records
   * written before fingerprints were kept, or forgotten after a refused version).
   */
  marks: Buffer | null;
}

/** A file record's chunk list (a view of the record), with its fingerprints where it has them. */
export function recordedChunks(record: FileRecord): ChunkList | null {
  const raw = record.chunks;
  if (!raw || raw.length % ENTRY_BYTES !== 0) return null;
  return ChunkList.fromStored(raw, record.marks);
}

export interface FolderRecord {
  kind: "dir";
  mode: number;
}

export type EntryRecord = FileRecord | FolderRecord;

/** What a scan compares with the disk: a record without its hash and chunk list. */
export type EntryStats = Omit<FileRecord, "sha256" | "chunks" | "marks"> | FolderRecord;

interface StatsRow {
  path: string;
  kind: "file" | "dir";
  size: number;
  mtime_ms: number;
  mode: number;
  ino: number;
  ctime_ms: number | null;
}

interface Row extends StatsRow {
  sha256: Buffer | null;
  chunks: Buffer | null;
  marks: Buffer | null;
}

/** The default state folder: $KEEPWATCH_STATE_DIR, else $XDG_STATE_HOME/keepwatch, else ~/.local/state/keepwatch. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KEEPWATCH_STATE_DIR) return env.KEEPWATCH_STATE_DIR;
  const base = env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  return join(base, "keepwatch");
}

/** Writes are grouped into one transaction committed this often (ms). */
const COMMIT_INTERVAL_MS = 100;

export class ClientState {
  private readonly db: Database.Database;
  private readonly stmts;
  private commitTimer: NodeJS.Timeout | null = null;
  /** Callers of `markSent` waiting for the commit at the end of this turn. */
  private markWaiters: { resolve: () => void; reject: (error: unknown) => void }[] = [];

  /**
   * Where the scan writes the sorted names of a folder too large to hold in memory (in
   * unlinked files): the state's own folder, private to its user and on disk.
   */
  readonly scratchFolder: string;

  private constructor(db: Database.Database, scratchFolder: string) {
    this.db = db;
    this.scratchFolder = scratchFolder;
    this.stmts = {
      get: db.prepare<[string], Row>("SELECT * FROM entries WHERE path = ?"),
      // The scan's queries leave out the hash and the chunk list: 20,000 rows' worth of
      // buffers made for nothing took a third of a scan's time.
      // A folder's own entries, or a slice of them by name: a range of paths with no "/"
      // after the folder's part (SQLite skips the deeper rows without handing them over).
      // The last slice of a folder ends where the paths below it do; of SRC, at the end.
      childrenUpTo: db.prepare<[string, string, string, number], StatsRow>(
        "SELECT path, kind, size, mtime_ms, mode, ino, ctime_ms FROM entries WHERE path > ? AND path <= ? AND instr(substr(path, length(?) + 1), '/') = 0 ORDER BY path LIMIT ?",
      ),
      childrenToEnd: db.prepare<[string, string, string, number], StatsRow>(
        "SELECT path, kind, size, mtime_ms, mode, ino, ctime_ms FROM entries WHERE path > ? AND path < ? AND instr(substr(path, length(?) + 1), '/') = 0 ORDER BY path LIMIT ?",
      ),
      topLevelToEnd: db.prepare<[string, number], StatsRow>(
        "SELECT path, kind, size, mtime_ms, mode, ino, ctime_ms FROM entries WHERE path > ? AND instr(path, '/') = 0 ORDER BY path LIMIT ?",
      ),
      pathsAfter: db.prepare<[string, string, number], { path: string }>(
        "SELECT path FROM entries WHERE path > ? AND path < ? ORDER BY path LIMIT ?",
      ),
      upsert: db.prepare(
        "INSERT OR REPLACE INTO entries (path, kind, size, mtime_ms, mode, ino, sha256, chunks, ctime_ms, marks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      forgetMarks: db.prepare<[string]>("UPDATE entries SET marks = NULL WHERE path = ?"),
      knows: db.prepare<[Buffer], { sha256: Buffer }>("SELECT sha256 FROM contents WHERE sha256 = ?"),
      learn: db.prepare<[Buffer]>("INSERT OR IGNORE INTO contents (sha256) VALUES (?)"),
      forgetContent: db.prepare<[Buffer]>("DELETE FROM contents WHERE sha256 = ?"),
      remove: db.prepare<[string]>("DELETE FROM entries WHERE path = ?"),
      removeBelow: db.prepare<[string, string]>("DELETE FROM entries WHERE path >= ? AND path < ?"),
      clear: db.prepare("DELETE FROM entries"),
      markSent: db.prepare<[string]>("INSERT OR IGNORE INTO sent (path) VALUES (?)"),
      isFolder: db.prepare<[string], { path: string }>(
        "SELECT path FROM entries WHERE path = ? AND kind = 'dir'",
      ),
      unmarkSent: db.prepare<[string]>("DELETE FROM sent WHERE path = ?"),
      unmarkSentBelow: db.prepare<[string, string]>("DELETE FROM sent WHERE path >= ? AND path < ?"),
      sentAll: db.prepare<[], { path: string }>("SELECT path FROM sent"),
      sentBelow: db.prepare<[string, string, string], { path: string }>(
        "SELECT path FROM sent WHERE path = ? OR (path >= ? AND path < ?)",
      ),
      clearSent: db.prepare("DELETE FROM sent"),
    };
  }

  /**
   * Open the state of SRC `source` backed up as `set` on the server whose store id is
   * `storeId`. A different server (or a wiped one) has another store id, so nothing is
   * assumed to be there.
   */
  static open(stateDir: string, storeId: string, set: string, source: string): ClientState {
    const key = createHash("sha256").update(`${storeId}\0${set}\0${source}`).digest("hex").slice(0, 24);
    const file = join(stateDir, `${key}.db`);
    let db: Database.Database;
    try {
      mkdirSync(stateDir, { recursive: true, mode: 0o700 });
      db = new Database(file);
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = NORMAL");
      applyPageCache(db);
      migrate(db);
      db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?), (?, ?), (?, ?)").run(
        "store_id",
        storeId,
        "set",
        set,
        "source",
        source,
      );
    } catch (error) {
      throw new KeepwatchError(
        "KW_STATE_UNUSABLE",
        `The client's state folder ${stateDir} cannot be used (${error instanceof Error ? error.message : String(error)}); fix its permissions or set KEEPWATCH_STATE_DIR to another folder.`,
        { cause: error },
      );
    }
    return new ClientState(db, stateDir);
  }

  get(path: string): EntryRecord | undefined {
    const row = this.stmts.get.get(path);
    return row ? toRecord(row) : undefined;
  }

  /**
   * The records of the entries of `folder` ("" for SRC itself) named after `after` and up to
   * `upTo` (null: from the first, to the last), at most `limit` of them, in order of their
   * names, without hashes and chunk lists.
   */
  children(
    folder: string,
    after: string | null,
    upTo: string | null,
    limit: number,
  ): Map<string, EntryStats> {
    const prefix = folder === "" ? "" : `${folder}/`;
    const from = prefix + (after ?? "");
    const rows =
      upTo !== null
        ? this.stmts.childrenUpTo.iterate(from, prefix + upTo, prefix, limit)
        : folder === ""
          ? this.stmts.topLevelToEnd.iterate(from, limit)
          : this.stmts.childrenToEnd.iterate(from, `${folder}0`, prefix, limit);
    const found = new Map<string, EntryStats>();
    for (const row of rows) found.set(row.path, toStats(row));
    return found;
  }

  /**
   * The paths recorded below `path`, leaving out those below another of them: what deletes
   * everything recorded there. Usually the entries of the folder `path` was. A page at a
   * time, so that a folder of any size is never held whole: of the `limit` recorded paths
   * after `after` (null: from the first), those with no recorded folder between them and
   * `path`, and the `after` of the next page (null: this was the last).
   */
  topMostBelow(path: string, after: string | null, limit: number): { paths: string[]; next: string | null } {
    // "0" is the character after "/", so the range holds exactly the paths below `path/`.
    const rows = this.stmts.pathsAfter.all(after ?? `${path}/`, `${path}0`, limit);
    const paths: string[] = [];
    const recorded = (folder: string) => this.stmts.get.get(folder) !== undefined;
    for (const { path: below } of rows) {
      if (!hasAncestor(below, recorded, path.length + 1)) paths.push(below);
    }
    return { paths, next: rows.length < limit ? null : (rows.at(-1)?.path ?? null) };
  }

  /**
   * About to send `path` (a file or a folder): until its answer is recorded, the server
   * may hold it, so a later scan that finds it gone deletes it there. Send only once the
   * promise resolves: the mark is then committed, and a crash right after the send cannot
   * forget it. Reads on this connection see the mark at once. The marks made in one turn of
   * the event loop share one commit, at the end of that turn: with a file's request
   * waiting for its own, 20,000 small files made 20,000 commits, 2.2 s of the client's
   * main thread in a profile (docs/performance.md).
   */
  markSent(path: string): Promise<void> {
    this.write(() => {
      this.stmts.markSent.run(path);
      this.markUnrecordedFolders(path);
    });
    return new Promise((resolve, reject) => {
      this.markWaiters.push({ resolve, reject });
      if (this.markWaiters.length === 1) setImmediate(() => this.commitMarks());
    });
  }

  /** Paths at `path` or below ("" for all) sent without a recorded answer. */
  sentBelow(path: string): string[] {
    const rows =
      path === "" ? this.stmts.sentAll.all() : this.stmts.sentBelow.all(path, `${path}/`, `${path}0`);
    return rows.map((r) => r.path);
  }

  recordFile(path: string, record: Omit<FileRecord, "kind">): void {
    this.write(() => {
      this.stmts.unmarkSent.run(path);
      this.removeChildren(path);
      const { size, mtimeMs, mode, ino, sha256, chunks, ctimeMs, marks } = record;
      this.stmts.upsert.run(path, "file", size, mtimeMs, mode, ino, sha256, chunks, ctimeMs, marks);
      this.stmts.learn.run(sha256);
    });
  }

  recordFolder(path: string, mode: number): void {
    this.write(() => {
      this.stmts.unmarkSent.run(path);
      this.stmts.upsert.run(path, "dir", 0, 0, mode, 0, null, null, null, null);
    });
  }

  /**
   * True when the server acknowledged this content for some path (it keeps it in its
   * history even after that path changes or is deleted, until a prune).
   */
  knowsContent(sha256: Buffer): boolean {
    return this.stmts.knows.get(sha256) !== undefined;
  }

  /** The server said it does not hold this content (pruned): stop assuming it does. */
  forgetContent(sha256: Buffer): void {
    this.write(() => this.stmts.forgetContent.run(sha256));
  }

  /**
   * The server refused a version of `path` read with its chunks' fingerprints: one of them
   * may lie, so the next read takes every chunk's SHA-256 (fingerprint.ts).
   */
  forgetMarks(path: string): void {
    this.write(() => this.stmts.forgetMarks.run(path));
  }

  /** Forget `path` and everything below it. */
  removeTree(path: string): void {
    this.write(() => {
      this.stmts.remove.run(path);
      this.removeChildren(path);
      this.stmts.unmarkSent.run(path);
      this.stmts.unmarkSentBelow.run(`${path}/`, `${path}0`);
    });
  }

  clear(): void {
    this.write(() => {
      this.stmts.clear.run();
      this.stmts.clearSent.run();
    });
  }

  /** Commit what was recorded so far. */
  flush(): void {
    if (this.commitTimer) clearTimeout(this.commitTimer);
    this.commitTimer = null;
    if (this.db.inTransaction) this.db.exec("COMMIT");
  }

  close(): void {
    this.commitMarks();
    this.flush();
    this.db.close();
  }

  /** Commit the marks of this turn (and whatever else is open) and tell their callers. */
  private commitMarks(): void {
    const waiters = this.markWaiters.splice(0);
    if (waiters.length === 0) return;
    try {
      this.flush();
    } catch (error) {
      for (const waiter of waiters) waiter.reject(error);
      return;
    }
    for (const waiter of waiters) waiter.resolve();
  }

  /**
   * Run a write inside the open group transaction (reads on this connection see it at
   * once). Grouping saves a commit per file; a crash loses at most the last interval's
   * records, which only means those files are sent again.
   */
  private write(change: () => void): void {
    if (!this.db.inTransaction) {
      this.db.exec("BEGIN");
      this.commitTimer = setTimeout(() => this.flush(), COMMIT_INTERVAL_MS);
      this.commitTimer.unref();
    }
    change();
  }

  /**
   * The server makes the folders on the way to a path it is sent, where it lacks them: a
   * file can be sent before its folder's own request (a watcher's event for the file comes
   * first). Until such a folder is recorded, it is marked as sent too, so that a scan that
   * finds it gone deletes it; otherwise nothing on the client would know the server has it.
   */
  private markUnrecordedFolders(path: string): void {
    for (let slash = path.lastIndexOf("/"); slash > 0; slash = path.lastIndexOf("/", slash - 1)) {
      const folder = path.slice(0, slash);
      if (this.stmts.isFolder.get(folder)) return;
      this.stmts.markSent.run(folder);
    }
  }

  private removeChildren(path: string): void {
    // "0" is the character after "/", so the range holds exactly the paths below `path/`.
    this.stmts.removeBelow.run(`${path}/`, `${path}0`);
  }
}

/** True when `test` holds for a folder of `path` (from the "/" at `from` or after). */
export function hasAncestor(path: string, test: (folder: string) => boolean, from = 0): boolean {
  for (let slash = path.indexOf("/", from); slash >= 0; slash = path.indexOf("/", slash + 1)) {
    if (test(path.slice(0, slash))) return true;
  }
  return false;
}

function toStats(row: StatsRow): EntryStats {
  if (row.kind === "dir") return { kind: "dir", mode: row.mode };
  return {
    kind: "file",
    size: row.size,
    mtimeMs: row.mtime_ms,
    mode: row.mode,
    ino: row.ino,
    ctimeMs: row.ctime_ms,
  };
}

function toRecord(row: Row): EntryRecord {
  const stats = toStats(row);
  if (stats.kind === "dir") return stats;
  return { ...stats, sha256: row.sha256 ?? Buffer.alloc(0), chunks: row.chunks, marks: row.marks };
}

function migrate(db: Database.Database): void {
  const version = db.pragma("user_version", { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new Error(`the state was written by a newer keepwatch (schema ${version})`);
  }
  if (version < 1) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS entries (
        path TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('file', 'dir')),
        size INTEGER NOT NULL,
        mtime_ms REAL NOT NULL,
        mode INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        sha256 BLOB
      ) WITHOUT ROWID;
    `);
    db.pragma("user_version = 1");
  }
  if (version < 2) {
    // Version 2: chunk lists (bases for deltas) and the contents the server holds.
    db.exec(`
      ALTER TABLE entries ADD COLUMN chunks BLOB;
      CREATE TABLE IF NOT EXISTS contents (sha256 BLOB PRIMARY KEY) WITHOUT ROWID;
    `);
    db.pragma("user_version = 2");
  }
  if (version < 3) {
    // Version 3: each file's ctime, which catches a rewrite whose mtime was set back.
    db.exec("ALTER TABLE entries ADD COLUMN ctime_ms REAL");
    db.pragma("user_version = 3");
  }
  if (version < 4) {
    // Version 4: paths sent whose answer was not recorded (the server may hold them).
    db.exec("CREATE TABLE IF NOT EXISTS sent (path TEXT PRIMARY KEY) WITHOUT ROWID");
    db.pragma("user_version = 4");
  }
  if (version < 5) {
    // Version 5: the fingerprints of each file's chunks (src/chunking/fingerprint.ts).
    db.exec("ALTER TABLE entries ADD COLUMN marks BLOB");
    db.pragma("user_version = 5");
  }
  if (version < 6) {
    // Version 6: folders the server made on the way to a recorded path without a record of
    // their own are marked as sent (see markUnrecordedFolders): a scan now walks the folders
    // on disk and the records of their entries, so it would never meet such a record again
    // once its folder is gone.
    db.exec(`
      INSERT OR IGNORE INTO sent (path)
      WITH RECURSIVE up(folder) AS (
        SELECT DISTINCT substr(path, 1, length(rtrim(path, replace(path, '/', ''))) - 1)
          FROM entries WHERE instr(path, '/') > 0
        UNION
        SELECT substr(folder, 1, length(rtrim(folder, replace(folder, '/', ''))) - 1)
          FROM up WHERE instr(folder, '/') > 0
      )
      SELECT folder FROM up
      WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.path = up.folder AND e.kind = 'dir');
    `);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }
}
