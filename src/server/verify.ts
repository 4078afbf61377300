// `keepwatch verify`: reads every stored chunk of a destination's history and checks every
// file version against them, without writing anything, even beside a running server.
//
// The order makes it safe beside a server, which only ever adds: first a snapshot of the
// versions (index.db, read-only), then the chunks. A version in the snapshot was committed
// after its chunks were durable, so they are all in the packs read afterwards. When no
// store holds chunks.db, its rows are copied (and it is closed again at once, so a server
// can still start) and each chunk is read where the index says, exactly as `get` would; when
// a server holds it, every pack file is walked record by record instead. A prune, the only
// thing that moves or removes chunks, cannot start meanwhile: verify holds the DEST lock
// in read mode (dest-lock.ts). Everything verify learns goes to a temporary SQLite
// database, so memory stays bounded whatever the size of the history.

import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { access } from "node:fs/promises";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { errnoCode, KeepwatchError } from "../errors.js";
import { ChunkCodecContext } from "../store/chunk-codec.js";
import { ChunkIndex } from "../store/chunk-index.js";
import { INDEX_FILE, PACKS_FOLDER } from "../store/local-chunk-store.js";
import type { VersionRecord } from "../store/metadata-store.js";
import { RECORD_HEADER_BYTES } from "../store/pack-format.js";
import { checkRecord, listPackFiles, PackWalker } from "../store/pack-scan.js";
import { SqliteMetadataStore } from "../store/sqlite-metadata-store.js";
import { applyPageCache } from "../store/sqlite-settings.js";
import { DestLock } from "./dest-lock.js";
import { CONTROL_DIR } from "./destination.js";

/** The metadata store's file in DEST/.keepwatch. */
export const METADATA_FILE = "index.db";

export interface VerifyOptions {
  /** Also read each content whole and check it against its SHA-256. */
  full?: boolean;
  listener?: VerifyListener;
}

/** What verify tells as it goes; every method is optional. */
export interface VerifyListener {
  /** How the chunks are read: "packs" when a running server holds the chunk index. */
  reading?(mode: VerifyReport["mode"]): void;
  /** The phase under way and how far it is (bytes for reading, contents for checking). */
  progress?(phase: VerifyPhase, done: number, total: number): void;
  /** A stored chunk (or a stretch of a pack) that does not read back. */
  damagedChunk?(damage: DamagedChunk): void;
  /** A file version that cannot be restored as it was stored. */
  affectedVersion?(version: AffectedVersion): void;
}

export type VerifyPhase = "reading" | "checking";

export interface DamagedChunk {
  /** Hex chunk id; absent for a stretch of a pack whose record headers cannot be read. */
  id?: string;
  pack: string;
  offset: number;
  problem: string;
}

export interface ChunkProblem {
  /** Hex chunk id. */
  id: string;
  problem: string;
}

export interface AffectedVersion {
  set: string;
  path: string;
  versionId: number;
  /** When it was committed (ms, server clock). */
  time: number;
  size: number;
  /** Hex SHA-256 of the content. */
  sha256: string;
  /** The chunks at fault; empty when the fault is the content as a whole (its size or hash). */
  chunks: ChunkProblem[];
  /** The fault in a sentence fragment, e.g. "2 chunks damaged". */
  problem: string;
}

export interface VerifyReport {
  /** index: chunks.db was read; packs: a server holds it, so the pack files were walked. */
  mode: "index" | "packs";
  packs: number;
  /** Stored chunks read, their uncompressed bytes, and the bytes read from packs. */
  chunks: number;
  bytes: number;
  storedBytes: number;
  /** Versions of every kind, and file versions among them. */
  versions: number;
  fileVersions: number;
  contents: number;
  sets: number;
  /** Stored chunks that do not read back; stretches of packs that hold no readable record. */
  damagedChunks: number;
  damagedStretches: number;
  /** Chunks a content needs that the store does not hold. */
  missingChunks: number;
  /** File versions that cannot be restored as stored. */
  affectedVersions: number;
  /** Sound chunks no content uses (left by an interrupted upload or prune; prune reclaims them). */
  unreferenced: { chunks: number; bytes: number };
  /** Whether --full re-hashed the contents. */
  full: boolean;
  clean: boolean;
}

/** Chunk states in the scratch database. */
const UNCHECKED = 0;
const SOUND = 1;
const DAMAGED = 2;

/** Rows written per scratch transaction. */
const BATCH = 5000;

/** Verify the history of `dest`. Throws KW_NO_HISTORY, KW_DEST_IN_USE (a prune runs). */
export async function verifyDestination(dest: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const control = join(resolve(dest), CONTROL_DIR);
  await assertHistory(dest, control);
  const lock = DestLock.acquire(control, "verify");
  const scratch = new Scratch();
  let meta: SqliteMetadataStore | undefined;
  try {
    meta = SqliteMetadataStore.openReadOnly(join(control, METADATA_FILE));
    const run = new VerifyRun(control, meta, scratch, options);
    return await run.run();
  } finally {
    await meta?.close();
    scratch.close();
    lock.release();
  }
}

/** Throws KW_NO_HISTORY unless DEST/.keepwatch/index.db exists. */
export async function assertHistory(dest: string, control: string): Promise<void> {
  try {
    await access(join(control, METADATA_FILE));
  } catch (error) {
    if (errnoCode(error) !== "ENOENT" && errnoCode(error) !== "ENOTDIR") throw error;
    throw new KeepwatchError(
      "KW_NO_HISTORY",
      `The folder ${resolve(dest)} holds no keepwatch history (no ${CONTROL_DIR}/${METADATA_FILE}); give the DEST folder of a keepwatch server.`,
    );
  }
}

class VerifyRun {
  private readonly codec = new ChunkCodecContext();
  private readonly listener: VerifyListener;
  private readonly report: VerifyReport;

  constructor(
    private readonly control: string,
    private readonly meta: SqliteMetadataStore,
    private readonly scratch: Scratch,
    private readonly options: VerifyOptions,
  ) {
    this.listener = options.listener ?? {};
    this.report = {
      mode: "index",
      packs: 0,
      chunks: 0,
      bytes: 0,
      storedBytes: 0,
      versions: 0,
      fileVersions: 0,
      contents: 0,
      sets: 0,
      damagedChunks: 0,
      damagedStretches: 0,
      missingChunks: 0,
      affectedVersions: 0,
      unreferenced: { chunks: 0, bytes: 0 },
      full: options.full ?? false,
      clean: false,
    };
  }

  async run(): Promise<VerifyReport> {
    await this.snapshotVersions();
    if (!this.copyChunkIndex()) this.report.mode = "packs";
    this.listener.reading?.(this.report.mode);
    if (this.report.mode === "index") await this.readIndexedChunks();
    else await this.walkPacks();
    await this.checkContents();
    this.reportAffected();
    const r = this.report;
    r.unreferenced = this.scratch.unreferenced();
    r.clean =
      r.damagedChunks === 0 && r.damagedStretches === 0 && r.missingChunks === 0 && r.affectedVersions === 0;
    return r;
  }

  /** Copy every version into the scratch database: the snapshot everything else checks. */
  private async snapshotVersions(): Promise<void> {
    const sets = new Set<string>();
    let batch: VersionRecord[] = [];
    for await (const version of this.meta.allVersions()) {
      sets.add(version.set);
      this.report.versions++;
      if (version.kind === "file") this.report.fileVersions++;
      batch.push(version);
      if (batch.length >= BATCH) {
        this.scratch.addVersions(batch);
        batch = [];
      }
    }
    this.scratch.addVersions(batch);
    this.report.sets = sets.size;
  }

  /**
   * Copy chunks.db's packs and rows into the scratch database; false when a store holds it
   * (a running server), so the packs must be walked instead. Closed at once either way.
   */
  private copyChunkIndex(): boolean {
    const path = join(this.control, INDEX_FILE);
    // No chunks.db: no chunk was ever stored; any chunk a content needs is missing.
    if (!existsSync(path)) return true;
    let index: ChunkIndex;
    try {
      index = ChunkIndex.openReadOnly(path);
    } catch (error) {
      const code = errnoCode(error);
      if (code === "SQLITE_BUSY" || code === "SQLITE_LOCKED") return false;
      if (error instanceof KeepwatchError) throw error;
      throw new KeepwatchError(
        "KW_SERVER_IO",
        `The chunk index ${path} cannot be read (${describe(error)}); check the permissions of ${this.control}.`,
        { cause: error },
      );
    }
    try {
      this.scratch.copyIndex(index);
      return true;
    } catch (error) {
      const code = errnoCode(error);
      if (code === "SQLITE_BUSY" || code === "SQLITE_LOCKED") return false;
      throw error;
    } finally {
      index.close();
    }
  }

  /** Read each chunk the index names, where it names it, and check it as `get` does. */
  private async readIndexedChunks(): Promise<void> {
    const packs = this.scratch.packs();
    const total = this.scratch.storedBytesTotal();
    let done = 0;
    this.report.packs = packs.length;
    for (const pack of packs) {
      let walker: PackWalker | undefined;
      let opened: unknown;
      try {
        walker = await PackWalker.open(join(this.control, pack.path));
      } catch (error) {
        opened = error;
      }
      const marks = this.scratch.marker();
      try {
        for (const row of this.scratch.chunksOfPack(pack.path)) {
          const length = RECORD_HEADER_BYTES + row.storedLength;
          done += length;
          if (!walker) {
            const why = errnoCode(opened) === "ENOENT" ? "its pack file is gone" : describe(opened);
            marks.mark(row.id, DAMAGED, why);
            this.damaged({ id: row.id, pack: pack.path, offset: row.offset, problem: why });
            continue;
          }
          const record = await walker.read(row.offset, length);
          const check = checkRecord(record, this.codec, {
            id: row.id,
            codec: row.codec,
            rawLength: row.rawLength,
            storedLength: row.storedLength,
          });
          this.report.storedBytes += record.length;
          if (check.ok) {
            marks.mark(row.id, SOUND, null);
            this.report.chunks++;
            this.report.bytes += row.rawLength;
          } else {
            marks.mark(row.id, DAMAGED, check.problem);
            this.damaged({ id: row.id, pack: pack.path, offset: row.offset, problem: check.problem });
          }
          this.listener.progress?.("reading", done, total);
        }
      } finally {
        marks.done();
        await walker?.close();
      }
    }
  }

  /** Beside a running server: walk every pack file and keep a sound copy of each chunk found. */
  private async walkPacks(): Promise<void> {
    const paths = await listPackFiles(join(this.control, PACKS_FOLDER), PACKS_FOLDER);
    const sizes: { path: string; walker: PackWalker | null }[] = [];
    let total = 0;
    for (const path of paths) {
      try {
        const walker = await PackWalker.open(join(this.control, path));
        sizes.push({ path, walker });
        total += walker.size;
      } catch (error) {
        // A pack removed meanwhile was an orphan the server's start cleaned up.
        if (errnoCode(error) === "ENOENT") continue;
        sizes.push({ path, walker: null });
        this.damagedStretch({ pack: path, offset: 0, problem: describe(error) });
      }
    }
    this.report.packs = sizes.length;
    let before = 0;
    for (const { path, walker } of sizes) {
      if (!walker) continue;
      const found = this.scratch.finder();
      try {
        for await (const record of walker.records(this.codec)) {
          if (record.kind === "sound") {
            const h = record.header;
            const stored = RECORD_HEADER_BYTES + h.storedLength;
            if (found.sound(h.id, path, record.offset, h)) {
              this.report.chunks++;
              this.report.bytes += h.rawLength;
            }
            this.report.storedBytes += stored;
          } else if (record.kind === "damaged") {
            const damage = { pack: path, offset: record.offset, problem: record.problem };
            if (record.id) {
              found.damaged(record.id, path, record.offset, record.problem);
              this.damaged({ ...damage, id: record.id });
            } else this.damagedStretch(damage);
          }
          this.listener.progress?.("reading", before + record.offset, total);
        }
      } finally {
        found.done();
        await walker.close();
      }
      before += walker.size;
      this.listener.progress?.("reading", before, total);
    }
  }

  /** Check each content the snapshot's file versions use: every chunk present, sound, of its length. */
  private async checkContents(): Promise<void> {
    const total = this.scratch.contentCount();
    let done = 0;
    const results = this.scratch.contentResults();
    try {
      for (const sha of this.scratch.contents()) {
        done++;
        this.report.contents++;
        const info = await this.meta.findContent(sha);
        if (!info) {
          results.add(sha, null, { problem: "its content is not in the history index", chunks: [] });
          continue;
        }
        const refs = await this.meta.contentChunks(sha);
        const bad: ChunkProblem[] = [];
        let missing = 0;
        let sum = 0;
        for (const ref of refs) {
          sum += ref.length;
          const stored = results.use(ref.id);
          const id = ref.id.toString("hex");
          if (!stored) {
            missing++;
            bad.push({ id, problem: "missing" });
          } else if (stored.state !== SOUND) {
            bad.push({ id, problem: `damaged: ${stored.problem ?? "unreadable"}` });
          } else if (stored.rawLength !== ref.length) {
            bad.push({ id, problem: `${stored.rawLength} bytes stored, ${ref.length} expected` });
          }
        }
        this.report.missingChunks += missing;
        let fault: { problem: string; chunks: ChunkProblem[] } | null = null;
        if (bad.length > 0) fault = { problem: describeChunks(bad), chunks: bad };
        else if (sum !== info.size) {
          fault = { problem: `its chunks add up to ${sum} bytes, not ${info.size}`, chunks: [] };
        } else if (
          this.options.full &&
          !(await this.hashMatches(
            sha,
            Array.from(refs, (r) => r.id),
          ))
        ) {
          fault = { problem: "its chunks do not hash to its SHA-256", chunks: [] };
        }
        results.add(sha, info.size, fault);
        this.listener.progress?.("checking", done, total);
      }
    } finally {
      results.done();
    }
  }

  /** --full: read the content's chunks in order and compare the whole with its SHA-256. */
  private async hashMatches(sha: Buffer, ids: Buffer[]): Promise<boolean> {
    const hash = createHash("sha256");
    const walkers = new Map<string, PackWalker>();
    try {
      for (const id of ids) {
        const where = this.scratch.location(id);
        if (!where) return false;
        let walker = walkers.get(where.pack);
        if (!walker) {
          walker = await PackWalker.open(join(this.control, where.pack));
          walkers.set(where.pack, walker);
        }
        const check = checkRecord(
          await walker.read(where.offset, RECORD_HEADER_BYTES + where.storedLength),
          this.codec,
        );
        if (!check.ok) return false;
        hash.update(check.data);
      }
    } finally {
      for (const walker of walkers.values()) await walker.close();
    }
    return hash.digest().equals(sha);
  }

  /** Tell about every file version whose content is at fault, by set, path and version. */
  private reportAffected(): void {
    for (const version of this.scratch.affectedVersions()) {
      this.report.affectedVersions++;
      this.listener.affectedVersion?.(version);
    }
  }

  private damaged(damage: { id: Buffer; pack: string; offset: number; problem: string }): void {
    this.report.damagedChunks++;
    this.listener.damagedChunk?.({ ...damage, id: damage.id.toString("hex") });
  }

  private damagedStretch(damage: DamagedChunk): void {
    this.report.damagedStretches++;
    this.listener.damagedChunk?.(damage);
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function describeChunks(bad: ChunkProblem[]): string {
  const missing = bad.filter((b) => b.problem === "missing").length;
  const parts: string[] = [];
  if (bad.length - missing > 0) parts.push(`${bad.length - missing} chunk(s) damaged`);
  if (missing > 0) parts.push(`${missing} chunk(s) missing`);
  return parts.join(", ");
}

// ------------------------------------------------------------------ the scratch database

interface ScratchChunk {
  id: Buffer;
  offset: number;
  storedLength: number;
  rawLength: number;
  codec: number;
}

/**
 * What verify has learnt, in a temporary SQLite database (deleted when closed; SQLite
 * keeps only its page cache in memory): the versions snapshot, the stored chunks with their
 * state, and the contents at fault.
 */
class Scratch {
  private readonly db: Database.Database;

  constructor() {
    // An empty file name: a private temporary database on disk, removed at close.
    this.db = new Database("");
    this.db.pragma("journal_mode = OFF");
    this.db.pragma("synchronous = OFF");
    // SQLite's 2 MiB page cache, as the history's databases: 141–146 MiB of RSS with
    // better-sqlite3's 16 MiB on 400,081 versions, 131–132 MiB with 2 (ad hoc).
    applyPageCache(this.db);
    this.db.exec(`
      CREATE TABLE versions (
        id INTEGER PRIMARY KEY, set_name TEXT NOT NULL, path TEXT NOT NULL, time INTEGER NOT NULL,
        kind TEXT NOT NULL, size INTEGER NOT NULL, sha BLOB
      );
      CREATE INDEX versions_by_sha ON versions (sha) WHERE sha IS NOT NULL;
      CREATE TABLE packs (path TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
      CREATE TABLE chunks (
        id BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL, stored_len INTEGER NOT NULL,
        raw_len INTEGER NOT NULL, codec INTEGER NOT NULL, state INTEGER NOT NULL, problem TEXT,
        used INTEGER NOT NULL DEFAULT 0
      ) WITHOUT ROWID;
      CREATE INDEX chunks_by_pack ON chunks (pack, offset);
      CREATE TABLE contents (sha BLOB PRIMARY KEY, size INTEGER, problem TEXT, chunks TEXT) WITHOUT ROWID;
    `);
  }

  addVersions(versions: VersionRecord[]): void {
    const add = this.db.prepare(
      "INSERT INTO versions (id, set_name, path, time, kind, size, sha) VALUES (?, ?, ?, ?, ?, ?, ?)",
    );
    this.db.transaction(() => {
      for (const v of versions)
        add.run(v.id, v.set, v.path, v.time, v.kind, v.size, v.kind === "file" ? v.sha256 : null);
    })();
  }

  copyIndex(index: ChunkIndex): void {
    const addPack = this.db.prepare("INSERT INTO packs (path, size) VALUES (?, ?)");
    const addChunk = this.db.prepare(
      "INSERT INTO chunks (id, pack, offset, stored_len, raw_len, codec, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
    );
    this.db.transaction(() => {
      for (const pack of index.packs()) {
        addPack.run(pack.path, pack.size);
        for (const c of index.chunksOf(pack.id)) {
          addChunk.run(c.id, pack.path, c.offset, c.storedLength, c.rawLength, c.codec, UNCHECKED);
        }
      }
    })();
  }

  packs(): { path: string; size: number }[] {
    return this.db
      .prepare<[], { path: string; size: number }>("SELECT path, size FROM packs ORDER BY path")
      .all();
  }

  storedBytesTotal(): number {
    const row = this.db
      .prepare<[], { total: number | null }>(
        `SELECT sum(stored_len + ${RECORD_HEADER_BYTES}) AS total FROM chunks`,
      )
      .get();
    return row?.total ?? 0;
  }

  /** The rows of one pack in file order (a pack holds at most a few thousand). */
  chunksOfPack(pack: string): ScratchChunk[] {
    return this.db
      .prepare<[string], { id: Buffer; offset: number; stored_len: number; raw_len: number; codec: number }>(
        "SELECT id, offset, stored_len, raw_len, codec FROM chunks WHERE pack = ? ORDER BY offset",
      )
      .all(pack)
      .map((r) => ({
        id: r.id,
        offset: r.offset,
        storedLength: r.stored_len,
        rawLength: r.raw_len,
        codec: r.codec,
      }));
  }

  /** Records chunk states found in index mode, one transaction per pack. */
  marker(): { mark(id: Buffer, state: number, problem: string | null): void; done(): void } {
    const set = this.db.prepare<[number, string | null, Buffer]>(
      "UPDATE chunks SET state = ?, problem = ? WHERE id = ?",
    );
    this.db.exec("BEGIN");
    return {
      mark: (id, state, problem) => {
        set.run(state, problem, id);
      },
      done: () => this.db.exec("COMMIT"),
    };
  }

  /** Records what a pack walk finds, one transaction per pack. */
  finder(): {
    /** A sound copy; true when it is the first sound one of this chunk. */
    sound(
      id: Buffer,
      pack: string,
      offset: number,
      h: { storedLength: number; rawLength: number; codec: number },
    ): boolean;
    damaged(id: Buffer, pack: string, offset: number, problem: string): void;
    done(): void;
  } {
    const get = this.db.prepare<[Buffer], { state: number }>("SELECT state FROM chunks WHERE id = ?");
    const put = this.db.prepare(
      `INSERT INTO chunks (id, pack, offset, stored_len, raw_len, codec, state, problem) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET pack = excluded.pack, offset = excluded.offset, stored_len = excluded.stored_len,
         raw_len = excluded.raw_len, codec = excluded.codec, state = excluded.state, problem = excluded.problem`,
    );
    this.db.exec("BEGIN");
    return {
      sound: (id, pack, offset, h) => {
        const before = get.get(id);
        if (before?.state === SOUND) return false;
        put.run(id, pack, offset, h.storedLength, h.rawLength, h.codec, SOUND, null);
        return true;
      },
      damaged: (id, pack, offset, problem) => {
        if (get.get(id)) return;
        put.run(id, pack, offset, 0, 0, 0, DAMAGED, problem);
      },
      done: () => this.db.exec("COMMIT"),
    };
  }

  /** Distinct contents of the snapshot's file versions. */
  contentCount(): number {
    return (
      this.db
        .prepare<[], { n: number }>("SELECT count(DISTINCT sha) AS n FROM versions WHERE sha IS NOT NULL")
        .get()?.n ?? 0
    );
  }

  *contents(): Generator<Buffer> {
    // Paged, so the scratch database can be written between pages.
    const page = this.db.prepare<[Buffer, number], { sha: Buffer }>(
      "SELECT DISTINCT sha FROM versions WHERE sha IS NOT NULL AND sha > ? ORDER BY sha LIMIT ?",
    );
    let after: Buffer = Buffer.alloc(0);
    for (;;) {
      const rows = page.all(after, 500);
      for (const row of rows) yield row.sha;
      const last = rows.at(-1);
      if (!last || rows.length < 500) return;
      after = last.sha;
    }
  }

  /** Looks chunks up (marking them used) and records each content's verdict, in batches. */
  contentResults(): {
    use(id: Buffer): { state: number; rawLength: number; problem: string | null } | undefined;
    add(sha: Buffer, size: number | null, fault: { problem: string; chunks: ChunkProblem[] } | null): void;
    done(): void;
  } {
    const get = this.db.prepare<[Buffer], { state: number; raw_len: number; problem: string | null }>(
      "SELECT state, raw_len, problem FROM chunks WHERE id = ?",
    );
    const use = this.db.prepare<[Buffer]>("UPDATE chunks SET used = 1 WHERE id = ? AND used = 0");
    const add = this.db.prepare<[Buffer, number | null, string | null, string | null]>(
      "INSERT INTO contents (sha, size, problem, chunks) VALUES (?, ?, ?, ?)",
    );
    let writes = 0;
    this.db.exec("BEGIN");
    const tick = () => {
      if (++writes < BATCH) return;
      writes = 0;
      this.db.exec("COMMIT; BEGIN");
    };
    return {
      use: (id) => {
        const row = get.get(id);
        if (!row) return undefined;
        use.run(id);
        tick();
        return { state: row.state, rawLength: row.raw_len, problem: row.problem };
      },
      add: (sha, size, fault) => {
        add.run(sha, size, fault?.problem ?? null, fault ? JSON.stringify(fault.chunks) : null);
        tick();
      },
      done: () => this.db.exec("COMMIT"),
    };
  }

  /** Where a sound copy of `id` is. */
  location(id: Buffer): { pack: string; offset: number; storedLength: number } | undefined {
    const row = this.db
      .prepare<[Buffer], { pack: string; offset: number; stored_len: number }>(
        `SELECT pack, offset, stored_len FROM chunks WHERE id = ? AND state = ${SOUND}`,
      )
      .get(id);
    return row ? { pack: row.pack, offset: row.offset, storedLength: row.stored_len } : undefined;
  }

  /** File versions whose content is at fault or whose size is not their content's, by set and path. */
  *affectedVersions(): Generator<AffectedVersion> {
    const rows = this.db
      .prepare<
        [],
        {
          id: number;
          set_name: string;
          path: string;
          time: number;
          size: number;
          sha: Buffer;
          problem: string | null;
          chunks: string | null;
          content_size: number | null;
        }
      >(
        `SELECT v.id, v.set_name, v.path, v.time, v.size, v.sha, c.problem, c.chunks, c.size AS content_size
         FROM versions v JOIN contents c ON c.sha = v.sha
         WHERE c.problem IS NOT NULL OR v.size != c.size
         ORDER BY v.set_name, v.path, v.id`,
      )
      .iterate();
    for (const row of rows) {
      yield {
        set: row.set_name,
        path: row.path,
        versionId: row.id,
        time: row.time,
        size: row.size,
        sha256: row.sha.toString("hex"),
        chunks: row.chunks ? (JSON.parse(row.chunks) as ChunkProblem[]) : [],
        problem: row.problem ?? `its size is ${row.size} bytes but its content has ${row.content_size}`,
      };
    }
  }

  unreferenced(): { chunks: number; bytes: number } {
    const row = this.db
      .prepare<[], { n: number; bytes: number | null }>(
        `SELECT count(*) AS n, sum(raw_len) AS bytes FROM chunks WHERE used = 0 AND state = ${SOUND}`,
      )
      .get();
    return { chunks: row?.n ?? 0, bytes: row?.bytes ?? 0 };
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
