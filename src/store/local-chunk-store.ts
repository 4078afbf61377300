// The chunk store on local disk: chunks compressed (or not, see chunk-codec.ts) into
// append-only pack files under packs/, located by an SQLite index (chunks.db). Pack bytes
// are fsynced before the index rows that point into them are committed, so the index never
// names bytes that are not durable; packs are only ever appended to, and space is reclaimed
// by copying survivors into a new pack before the old one is removed (docs/store.md).

import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open, readdir, rm, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type Bytes, bytesOf, partsOf } from "../bytes.js";
import { errnoCode, KeepwatchError } from "../errors.js";
import { SLAB_BYTES } from "./block-appender.js";
import { ChunkCodecContext, ChunkDecodeError, DEFAULT_ZSTD_LEVEL } from "./chunk-codec.js";
import { ChunkIndex, type ChunkRow, type PackRow } from "./chunk-index.js";
import type { ChunkId, ChunkStore, ChunkStoreStats } from "./chunk-store.js";
import {
  type ChunkCodecValue,
  crc32,
  decodeRecordHeader,
  MAX_CHUNK_BYTES,
  PackFormatError,
  RECORD_HEADER_BYTES,
} from "./pack-format.js";
import { PackReaders } from "./pack-readers.js";
import { PackWriter, packIdFromName, type RecordPlace } from "./pack-writer.js";
import { syncFolder } from "./path-syncer.js";

/** The index's file name in the store folder. */
export const INDEX_FILE = "chunks.db";
/** The folder of pack files in the store folder. */
export const PACKS_FOLDER = "packs";

export interface LocalChunkStoreOptions {
  /** A pack is sealed, and a new one begun, once it holds this many bytes (default 32 MiB). */
  packTargetBytes?: number;
  /** Bytes gathered in memory before they are written to the pack file (default 4 MiB). */
  bufferBytes?: number;
  /** zstd level (default DEFAULT_ZSTD_LEVEL). */
  zstdLevel?: number;
  /**
   * Called synchronously at each step of a repack (for crash tests and progress): the store
   * stands still at that step until the callback returns.
   */
  onRepackStep?: (step: RepackStep) => void;
}

/**
 * The steps of one repack round, in order: survivors copied into a new pack (not yet
 * durable); the new pack fsynced; the index committed to the new locations; the old packs'
 * files removed.
 */
export type RepackStep = "copied" | "synced" | "committed" | "removed";

/** What opening the store found and repaired after an unclean stop. */
export interface OpenReport {
  /** Pack files (relative paths) that no index row named, removed. */
  removedOrphans: string[];
  /** Packs a crash left open, cut back to the size the index committed. */
  truncated: string[];
  /** Packs the index names whose file is missing; their chunks read as KW_CHUNK_MISSING. */
  missing: string[];
}

/** Where and how a chunk is stored. */
export interface StoredChunk {
  /** The pack's path relative to the store folder. */
  pack: string;
  /** Offset of the record header in the pack. */
  offset: number;
  codec: ChunkCodecValue;
  rawLength: number;
  storedLength: number;
  /** False while it waits for `flush`. */
  durable: boolean;
}

const DEFAULT_PACK_TARGET = 32 * 1024 * 1024;
/** One slab of aligned memory, so that the pack's whole blocks are written directly (block-appender.ts). */
const DEFAULT_BUFFER = SLAB_BYTES;
const LIST_PAGE = 1000;

interface Pending extends RecordPlace {
  id: Buffer;
  writer: PackWriter;
}

interface Found {
  offset: number;
  codec: number;
  rawLength: number;
  storedLength: number;
  path: string;
  /** Set for a chunk still waiting for flush. */
  writer?: PackWriter;
}

export class LocalChunkStore implements ChunkStore {
  private readonly codec: ChunkCodecContext;
  private readonly readers: PackReaders;
  private readonly packTarget: number;
  private readonly bufferBytes: number;
  private readonly onRepackStep: ((step: RepackStep) => void) | undefined;

  /** The pack new chunks go to; created by the first put after open or after a seal. */
  private writer: PackWriter | undefined;
  /** Of the writer's pack: bytes, chunks and raw bytes the index has committed. */
  private committed = { size: 0, chunks: 0, rawBytes: 0 };
  /** Chunks put since the last commit, by hex id. */
  private readonly pending = new Map<string, Pending>();
  private pendingRawBytes = 0;
  /** How many times a failed write lost pending chunks, and the last failure that did. */
  private losses = 0;
  private lastLoss: unknown;
  /** Tail of the queue that runs writes (put, flush, delete, close) one at a time. */
  private tail: Promise<unknown> = Promise.resolve();
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(
    /** The store folder (DEST/.keepwatch). */
    readonly folder: string,
    private readonly index: ChunkIndex,
    /** What opening found and repaired. */
    readonly openReport: OpenReport,
    options: LocalChunkStoreOptions,
  ) {
    this.codec = new ChunkCodecContext(options.zstdLevel ?? DEFAULT_ZSTD_LEVEL);
    this.readers = new PackReaders(folder);
    this.packTarget = options.packTargetBytes ?? DEFAULT_PACK_TARGET;
    this.bufferBytes = options.bufferBytes ?? DEFAULT_BUFFER;
    this.onRepackStep = options.onRepackStep;
  }

  /**
   * Open the store in `folder`, creating it if needed, and repair what an unclean stop
   * left: pack files no index row names are removed, packs left open are cut back to their
   * committed size. Refuses pack files without an index rather than remove them.
   */
  static async open(folder: string, options: LocalChunkStoreOptions = {}): Promise<LocalChunkStore> {
    const packsFolder = join(folder, PACKS_FOLDER);
    await mkdir(packsFolder, { recursive: true, mode: 0o700 });
    const files = await listPackFiles(packsFolder);
    const index = ChunkIndex.open(join(folder, INDEX_FILE));
    try {
      if (index.created && files.length > 0) {
        index.close();
        await removeIndexFiles(folder);
        throw new KeepwatchError(
          "KW_SERVER_IO",
          `The chunk store ${folder} has ${files.length} pack files but no index (${INDEX_FILE}); restore the index from a backup, or move packs/ away to start an empty store.`,
        );
      }
      // SQLite does not fsync the folder when it creates the database file.
      if (index.created) await syncFolder(folder);
      const report = await recover(folder, index, files);
      return new LocalChunkStore(folder, index, report, options);
    } catch (error) {
      index.close();
      throw error;
    }
  }

  async put(id: ChunkId, data: Bytes): Promise<void> {
    this.assertOpen();
    checkId(id);
    const length = bytesOf(partsOf(data));
    if (length > MAX_CHUNK_BYTES) {
      throw new RangeError(`a chunk holds at most ${MAX_CHUNK_BYTES} bytes, got ${length}`);
    }
    const key = id.toString("hex");
    if (this.pending.has(key) || this.index.has(id)) return;
    await this.exclusive(async () => {
      if (this.pending.has(key) || this.index.has(id)) return;
      if (!this.writer) {
        this.writer = new PackWriter(this.folder, this.bufferBytes);
      }
      const writer = this.writer;
      let place: RecordPlace;
      try {
        place = await writer.appendChunk(id, data, this.codec);
      } catch (error) {
        await this.abandonWriter(error);
        throw error;
      }
      this.pending.set(key, { ...place, id: Buffer.from(id), writer });
      this.pendingRawBytes += length;
      if (writer.size >= this.packTarget) await this.commit(true);
    });
  }

  async has(id: ChunkId): Promise<boolean> {
    this.assertOpen();
    return this.pending.has(id.toString("hex")) || this.index.has(id);
  }

  async get(id: ChunkId): Promise<Buffer> {
    this.assertOpen();
    for (let attempt = 1; ; attempt++) {
      const found = this.find(id);
      if (!found) throw missing(id);
      const length = RECORD_HEADER_BYTES + found.storedLength;
      let record = found.writer?.buffered(found.offset, length);
      if (!record) {
        try {
          record = await this.readers.read(found.path, found.offset, length);
        } catch (error) {
          // A repack moved the chunk between the lookup and the open: look it up again.
          if (errnoCode(error) === "ENOENT") {
            if (attempt < 3) continue;
            throw missing(id, found.path);
          }
          throw error;
        }
      }
      return this.verify(id, found, record);
    }
  }

  flush(since?: number): Promise<void> {
    this.assertOpen();
    return this.exclusive(async () => {
      await this.commit(false);
      if (since !== undefined && this.losses > since) throw this.lastLoss;
    });
  }

  lossMark(): number {
    return this.losses;
  }

  async *list(): AsyncIterable<ChunkId> {
    this.assertOpen();
    // Pending chunks first; a chunk committed while we page through is then skipped.
    const early = new Set<string>();
    for (const [key, p] of this.pending) {
      early.add(key);
      yield Buffer.from(p.id);
    }
    let after: Buffer | undefined;
    for (;;) {
      this.assertOpen();
      const page = this.index.page(after, LIST_PAGE);
      for (const id of page) if (!early.has(id.toString("hex"))) yield id;
      if (page.length < LIST_PAGE) return;
      after = page[page.length - 1];
    }
  }

  delete(ids: Iterable<ChunkId>): Promise<void> {
    this.assertOpen();
    const doomed = new Set<string>();
    for (const id of ids) if (id.length === 32) doomed.add(id.toString("hex"));
    return this.exclusive(async () => {
      if (doomed.size === 0) return;
      await this.commit(false);
      const byPack = new Map<string, Set<string>>();
      for (const key of doomed) {
        const row = this.index.locate(Buffer.from(key, "hex"));
        if (!row) continue;
        const packKey = row.pack.toString("hex");
        const set = byPack.get(packKey) ?? new Set<string>();
        byPack.set(packKey, set.add(key));
      }
      if (byPack.size === 0) return;
      // The pack being filled is repacked like any other, so it is sealed first.
      if (this.writer && byPack.has(this.writer.id.toString("hex"))) await this.commit(true);
      await this.repack(byPack);
    });
  }

  async stats(): Promise<ChunkStoreStats> {
    this.assertOpen();
    const totals = this.index.totals();
    const uncommitted = this.writer ? this.writer.size - this.committed.size : 0;
    return {
      chunks: totals.chunks + this.pending.size,
      bytes: totals.rawBytes + this.pendingRawBytes,
      storedBytes: totals.storedBytes + uncommitted,
    };
  }

  /** Where and how `id` is stored, or undefined when it is not (for verify and tests). */
  async locate(id: ChunkId): Promise<StoredChunk | undefined> {
    this.assertOpen();
    const found = this.find(id);
    if (!found) return undefined;
    return {
      pack: found.path,
      offset: found.offset,
      codec: found.codec as ChunkCodecValue,
      rawLength: found.rawLength,
      storedLength: found.storedLength,
      durable: found.writer === undefined,
    };
  }

  close(): Promise<void> {
    this.closing ??= this.exclusive(async () => {
      try {
        await this.commit(true);
      } finally {
        this.closed = true;
        await this.writer?.close();
        this.writer = undefined;
        this.readers.closeAll();
        this.index.close();
      }
    });
    return this.closing;
  }

  // ------------------------------------------------------------ writing

  /** Run `fn` after every write queued before it; the queue goes on whatever `fn` does. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(() => {
      this.assertOpen();
      return fn();
    });
    this.tail = run.catch(() => {});
    return run;
  }

  /**
   * Make the pending chunks durable: fsync the pack, then commit its rows in one
   * transaction. With `seal`, the pack is also closed for good.
   */
  private async commit(seal: boolean): Promise<void> {
    const writer = this.writer;
    if (!writer) return;
    if (this.pending.size > 0) {
      try {
        await writer.sync();
      } catch (error) {
        await this.abandonWriter(error);
        throw error;
      }
      const chunks: ChunkRow[] = [];
      for (const p of this.pending.values()) {
        chunks.push({
          id: p.id,
          pack: writer.id,
          offset: p.offset,
          storedLength: p.storedLength,
          rawLength: p.rawLength,
          codec: p.codec,
        });
      }
      const pack: PackRow = {
        id: writer.id,
        path: writer.path,
        size: writer.size,
        chunks: this.committed.chunks + chunks.length,
        rawBytes: this.committed.rawBytes + this.pendingRawBytes,
        state: seal ? "sealed" : "open",
      };
      const durable = this.index.commitBatch({ pack, chunks });
      this.committed = { size: pack.size, chunks: pack.chunks, rawBytes: pack.rawBytes };
      this.pending.clear();
      this.pendingRawBytes = 0;
      await durable;
    } else if (seal && this.committed.size > 0) {
      this.index.sealPack(writer.id, this.committed.size);
    }
    if (seal) {
      this.writer = undefined;
      this.committed = { size: 0, chunks: 0, rawBytes: 0 };
      await writer.close();
    }
  }

  /**
   * Drop the pack being written after a failed write or fsync, and with it the chunks not
   * yet committed (counted as a loss, see `flush`). Its file stays: the next open cuts it
   * back to its committed size, or removes it when nothing was committed.
   */
  private async abandonWriter(cause: unknown): Promise<void> {
    if (this.pending.size > 0) {
      this.losses++;
      this.lastLoss = cause;
    }
    const writer = this.writer;
    this.writer = undefined;
    this.committed = { size: 0, chunks: 0, rawBytes: 0 };
    this.pending.clear();
    this.pendingRawBytes = 0;
    await writer?.close().catch(() => {});
  }

  /**
   * Rewrite the packs in `byPack` (pack hex id → hex ids of chunks to forget) without
   * those chunks. Survivors are copied into new packs; each new pack is fsynced before
   * one transaction points the index at it and drops the forgotten rows, and only then are
   * the old pack files removed. Interrupted anywhere, the index names only durable bytes.
   */
  private async repack(byPack: Map<string, Set<string>>): Promise<void> {
    let out: PackWriter | undefined;
    let moved: { id: Buffer; offset: number }[] = [];
    let outRaw = 0;
    let deleted: Buffer[] = [];
    let emptied: PackRow[] = [];
    /** Packs some of whose chunks have moved while others still wait. */
    const partial = new Set<string>();

    const finishRound = async () => {
      let pack: PackRow | undefined;
      if (out) {
        this.step("copied");
        await out.sync();
        this.step("synced");
        pack = {
          id: out.id,
          path: out.path,
          size: out.size,
          chunks: moved.length,
          rawBytes: outRaw,
          state: "sealed",
        };
      }
      this.index.commitRepack({
        ...(pack ? { pack } : {}),
        moved,
        deleted,
        emptied: emptied.map((p) => p.id),
        touched: [...partial].map((key) => Buffer.from(key, "hex")),
      });
      this.step("committed");
      await out?.close();
      if (emptied.length > 0) {
        const folders = new Set<string>();
        for (const p of emptied) {
          this.readers.retire(p.path);
          const abs = join(this.folder, p.path);
          await unlink(abs).catch((error) => {
            if (errnoCode(error) !== "ENOENT") throw error;
          });
          folders.add(dirname(abs));
        }
        for (const f of folders) await syncFolder(f);
        this.step("removed");
      }
      out = undefined;
      moved = [];
      outRaw = 0;
      deleted = [];
      emptied = [];
    };

    for (const [packKey, doomed] of byPack) {
      const pack = this.index.pack(Buffer.from(packKey, "hex"));
      if (!pack) continue;
      for (const row of this.index.chunksOf(pack.id)) {
        if (doomed.has(row.id.toString("hex"))) {
          deleted.push(row.id);
          continue;
        }
        const length = RECORD_HEADER_BYTES + row.storedLength;
        const record = await this.readers.read(pack.path, row.offset, length);
        if (record.length !== length) {
          throw new KeepwatchError(
            "KW_CHUNK_CORRUPT",
            `Pack ${pack.path} ends inside the record of chunk ${row.id.toString("hex")}; nothing was deleted from it.`,
          );
        }
        out ??= new PackWriter(this.folder, this.bufferBytes);
        moved.push({ id: row.id, offset: await out.appendRecord(record) });
        outRaw += row.rawLength;
        partial.add(packKey);
        if (out.size >= this.packTarget) await finishRound();
      }
      partial.delete(packKey);
      emptied.push(pack);
    }
    await finishRound();
  }

  private step(step: RepackStep): void {
    this.onRepackStep?.(step);
  }

  // ------------------------------------------------------------ reading

  private find(id: ChunkId): Found | undefined {
    const p = this.pending.get(id.toString("hex"));
    if (p) return { ...p, path: p.writer.path, writer: p.writer };
    const row = this.index.locate(id);
    if (!row) return undefined;
    return {
      offset: row.offset,
      codec: row.codec,
      rawLength: row.rawLength,
      storedLength: row.storedLength,
      path: row.path,
    };
  }

  /** Check a record read back against the index and the chunk id; return the chunk. */
  private verify(id: ChunkId, found: Found, record: Buffer): Buffer {
    const fail = (reason: string, cause?: unknown) =>
      new KeepwatchError(
        "KW_CHUNK_CORRUPT",
        `Stored chunk ${id.toString("hex")} (pack ${found.path}, offset ${found.offset}) is damaged: ${reason}.`,
        { cause },
      );
    if (record.length < RECORD_HEADER_BYTES) throw fail("the pack file ends inside its record header");
    let header: ReturnType<typeof decodeRecordHeader>;
    try {
      header = decodeRecordHeader(record);
    } catch (error) {
      if (error instanceof PackFormatError) throw fail(error.message, error);
      throw error;
    }
    if (!header.id.equals(id)) throw fail("the record there holds another chunk");
    if (
      header.codec !== found.codec ||
      header.rawLength !== found.rawLength ||
      header.storedLength !== found.storedLength
    ) {
      throw fail("the record header disagrees with the index");
    }
    const stored = record.subarray(RECORD_HEADER_BYTES);
    if (stored.length !== header.storedLength) throw fail("the pack file ends inside the record");
    if (crc32(stored) !== header.storedCrc) throw fail("the stored bytes fail their CRC-32");
    let data: Buffer;
    try {
      data = this.codec.decode(header.codec, stored, header.rawLength);
    } catch (error) {
      if (error instanceof ChunkDecodeError) throw fail(error.message, error);
      throw error;
    }
    if (!createHash("sha256").update(data).digest().equals(id)) throw fail("its SHA-256 does not match");
    return data;
  }

  private assertOpen(): void {
    if (this.closed) throw new Error("the chunk store is closed");
  }
}

function checkId(id: ChunkId): void {
  if (id.length !== 32) throw new RangeError(`a chunk id is a 32-byte SHA-256, got ${id.length} bytes`);
}

function missing(id: ChunkId, pack?: string): KeepwatchError {
  const where = pack ? `its pack file ${pack} is gone` : "the store does not hold it";
  return new KeepwatchError("KW_CHUNK_MISSING", `Chunk ${id.toString("hex")} cannot be read: ${where}.`);
}

interface PackFile {
  id: Buffer;
  /** Relative to the store folder. */
  path: string;
}

/** The files under packs/ named like packs; other entries are left alone. */
async function listPackFiles(packsFolder: string): Promise<PackFile[]> {
  const out: PackFile[] = [];
  for (const fan of await readdir(packsFolder, { withFileTypes: true })) {
    if (!fan.isDirectory() || !/^[0-9a-f]{2}$/.test(fan.name)) continue;
    for (const entry of await readdir(join(packsFolder, fan.name), { withFileTypes: true })) {
      const id = entry.isFile() ? packIdFromName(entry.name) : undefined;
      // A pack sits in the folder named after its id's first byte.
      if (!id?.toString("hex").startsWith(fan.name)) continue;
      out.push({ id, path: join(PACKS_FOLDER, fan.name, entry.name) });
    }
  }
  return out;
}

async function removeIndexFiles(folder: string): Promise<void> {
  for (const suffix of ["", "-wal", "-shm", "-journal"]) {
    await rm(join(folder, `${INDEX_FILE}${suffix}`), { force: true });
  }
}

/**
 * Repair after an unclean stop. A pack file without a row was being written (new data
 * never committed, or a repack's output never committed) or was being removed (a repack
 * committed, then stopped): either way no row points into it, so it goes. A pack left
 * open may hold bytes after its committed size that no row points to: they are cut off.
 */
async function recover(folder: string, index: ChunkIndex, files: PackFile[]): Promise<OpenReport> {
  const report: OpenReport = { removedOrphans: [], truncated: [], missing: [] };
  const rows = new Map(index.packs().map((p) => [p.id.toString("hex"), p]));
  const onDisk = new Set<string>();
  const touchedFolders = new Set<string>();
  for (const file of files) {
    const key = file.id.toString("hex");
    if (rows.has(key)) {
      onDisk.add(key);
      continue;
    }
    await unlink(join(folder, file.path));
    touchedFolders.add(dirname(join(folder, file.path)));
    report.removedOrphans.push(file.path);
  }
  for (const f of touchedFolders) await syncFolder(f);
  for (const [key, pack] of rows) {
    if (!onDisk.has(key)) {
      report.missing.push(pack.path);
      continue;
    }
    if (pack.state !== "open") continue;
    const abs = join(folder, pack.path);
    if ((await stat(abs)).size > pack.size) {
      const handle = await open(abs, constants.O_WRONLY);
      try {
        await handle.truncate(pack.size);
        await handle.sync();
      } finally {
        await handle.close();
      }
      report.truncated.push(pack.path);
    }
    index.sealPack(pack.id, pack.size);
  }
  return report;
}
