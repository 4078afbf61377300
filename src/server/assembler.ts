// Writes a new version's mirror file while its chunks arrive, in file order: each chunk
// the client sends is written as it comes, and the chunks the server already held are
// filled in just before the first sent chunk that follows them (or, for a streamed
// manifest, as soon as its description reaches them: advance). The whole file's SHA-256 is
// computed on the way, so the version can be committed as soon as the last chunk is in,
// without reading the file back from the history (docs/performance.md).
//
// The chunks a manifest copies from its base are read, when it can, from the mirror's
// current file at that path, which normally holds the base: one sequential read of a
// plain file instead of a pack lookup, a CRC and a SHA-256 per chunk. The mirror is only a
// view that anyone may have changed, so when the whole does not match its SHA-256 the file
// is assembled again from the history alone.

import { createHash, type Hash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import { bytesOf } from "../bytes.js";
import type { ChunkList } from "../chunking/chunk-list.js";
import { KeepwatchError } from "../errors.js";
import type { Mirror, PendingFile } from "../store/mirror.js";
import type { ByteBudget } from "./budget.js";
import type { History } from "./history.js";

/** Bytes of arrived chunks gathered before one write to the pending file. */
const WRITE_BYTES = 1024 * 1024;
/**
 * Parts gathered before that write, at most. A part is a view of a read from the socket
 * and keeps that whole read in memory (a TLS record of up to 16 KiB, a plain read of up to
 * 64 KiB): tiny chunks must not hold thousands of them for one MiB of data. Chunks of the
 * usual sizes arrive in fewer parts than this per MiB.
 */
const WRITE_PARTS = 256;
/** Bytes read from the mirror's old file at once (a run of chunks stops short of this). */
const READ_BYTES = 2 * 1024 * 1024;
/**
 * Bytes written between two flushes to disk started while the file is still being written:
 * the disk then works while the rest is assembled, and the fsync before the install finds
 * little left to do (for a 1 GiB file it took 1.5 s at the end on this machine's disk).
 */
const FLUSH_EVERY_BYTES = 64 * 1024 * 1024;

/** Where a manifest's base is likely to be found in the mirror. */
export interface BaseSource {
  /** The mirror's file that should hold the base. */
  path: string;
  /** The base's size in bytes. */
  size: number;
  /** For each chunk of the new version: its offset in the base, or −1 when it is not copied. */
  offsets: Float64Array;
}

/** A run of neighbouring base chunks being read from the mirror's old file. */
interface OldRun {
  /** The run's first chunk, and the chunk after its last. */
  first: number;
  last: number;
  data: Buffer;
  read: Promise<{ bytesRead: number }>;
}

export class Assembler {
  /** The index of the next chunk to write. */
  private next = 0;
  /** Bytes written to the pending file (the position of the next write). */
  private written = 0;
  private hash: Hash = createHash("sha256");
  private pending: PendingFile | null = null;
  /** Arrived chunks not yet written, in order. */
  private gathered: Buffer[] = [];
  private gatheredBytes = 0;
  /** Bytes taken from the budget for arrived chunks and not yet given back. */
  private held = 0;
  /** The writes still to do, one after the other. */
  private tail: Promise<void> = Promise.resolve();
  private failure: unknown = null;
  /** The mirror's old file, once opened; null when there is none to read from. */
  private old: FileHandle | null | undefined;
  /** Whether any bytes came from the mirror's old file. */
  private usedOld = false;
  /** The two buffers reads from the mirror's old file take in turn, and how many reads there were. */
  private readonly readBuffers: Buffer[] = [];
  private reads = 0;
  /** The next run's read from the mirror's old file, started while the one before is written. */
  private ahead: OldRun | null = null;
  /** The flush to disk under way, if any, and where the next one is due. */
  private flushing: Promise<void> | null = null;
  private flushAt = FLUSH_EVERY_BYTES;

  constructor(
    private readonly mirror: Mirror,
    private readonly history: History,
    private readonly chunks: ChunkList,
    /** The server-wide memory for data in flight: arrived chunks wait in it to be written. */
    private readonly budget: ByteBudget,
    private readonly base: BaseSource | null = null,
  ) {}

  /**
   * Chunk `index` arrived (checked against its id), in parts that are kept, not copied,
   * until they are written. Chunks must come in ascending order. Resolves once the chunk is
   * queued for writing, which waits while the server's budget for data in flight is used up.
   */
  async add(index: number, data: readonly Buffer[]): Promise<void> {
    if (this.failure !== null) return;
    const length = bytesOf(data);
    await this.budget.acquire(length);
    if (this.failure !== null) {
      // Discarded while this waited for room: discard gave back what it held, not this.
      this.budget.give(length);
      return;
    }
    this.held += length;
    this.enqueue(async () => {
      await this.fillUpTo(index);
      this.gather(data);
      this.next = index + 1;
      if (this.gatheredBytes >= WRITE_BYTES || this.gathered.length >= WRITE_PARTS)
        await this.writeGathered();
    });
  }

  /**
   * The chunks before `end` are known and none of them is still to arrive (a streamed
   * manifest): write them now rather than when the next chunk arrives.
   */
  advance(end: number): void {
    if (this.failure !== null || end <= this.next) return;
    this.enqueue(() => this.fillUpTo(end));
  }

  /**
   * Write the chunks after the last one that arrived, then check the whole against
   * `sha256`: the pending file, ready to install. Throws (leaving nothing behind) when a
   * chunk cannot be read or the content does not match.
   */
  async finish(sha256: Buffer): Promise<PendingFile> {
    this.enqueue(async () => {
      await this.fillUpTo(this.chunks.length);
      await this.writeGathered();
      const sound = this.hash.digest().equals(sha256);
      if (!sound && this.usedOld) {
        // The mirror's file did not hold the base after all: from the history alone
        // (closed, it stays null: openOld no longer opens it).
        await this.closeOld();
        this.usedOld = false;
        this.hash = createHash("sha256");
        this.next = 0;
        this.written = 0;
        this.flushAt = FLUSH_EVERY_BYTES;
        const pending = await this.ensurePending();
        await pending.handle.truncate(0);
        await this.fillUpTo(this.chunks.length);
        if (!this.hash.digest().equals(sha256)) throw mismatch();
      } else if (!sound) {
        throw mismatch();
      }
    });
    await this.tail;
    await this.closeOld();
    await this.settleFlush();
    if (this.failure !== null) {
      const failure = this.failure;
      await this.discard();
      throw failure;
    }
    const pending = await this.ensurePending();
    this.pending = null;
    return pending;
  }

  /** Stop, and remove the pending file once the write under way (if any) is done. */
  async discard(): Promise<void> {
    this.failure ??= new Error("the assembly was discarded");
    await this.tail;
    await this.closeOld();
    await this.settleFlush();
    this.gathered = [];
    this.gatheredBytes = 0;
    this.budget.give(this.held);
    this.held = 0;
    const pending = this.pending;
    this.pending = null;
    if (pending) await this.mirror.discard(pending);
  }

  private enqueue(step: () => Promise<void>): void {
    this.tail = this.tail.then(async () => {
      if (this.failure !== null) return;
      try {
        await step();
      } catch (error) {
        this.failure = error;
      }
    });
  }

  /**
   * Write the chunks from `next` up to (not including) `end`: runs of chunks copied from
   * the base from the mirror's old file, the others from the history one at a time (so an
   * assembly holds at most one of them, or one run, in memory).
   */
  private async fillUpTo(end: number): Promise<void> {
    if (this.next >= end) return;
    await this.writeGathered();
    const pending = await this.ensurePending();
    while (this.next < end) {
      if (this.failure !== null) throw this.failure;
      if (await this.fillFromOld(end, pending)) continue;
      const ref = this.chunks.at(this.next);
      const data = await this.history.chunks.get(ref.id);
      if (data.length !== ref.length) {
        throw new KeepwatchError(
          "KW_CHUNK_CORRUPT",
          `A stored chunk (${ref.id.toString("hex").slice(0, 16)}…) has ${data.length} bytes instead of ${ref.length}; run "keepwatch verify".`,
        );
      }
      // The write goes to the thread pool; the hash is taken meanwhile.
      const writing = this.writeAt(pending, [data]);
      this.hash.update(data);
      await writing;
      this.next++;
    }
  }

  /** Fill a run of chunks from `next` from the mirror's old file; false when it cannot. */
  private async fillFromOld(end: number, pending: PendingFile): Promise<boolean> {
    const offsets = this.base?.offsets;
    if (!offsets || (offsets[this.next] ?? -1) < 0) return false;
    const old = await this.openOld();
    if (!old) return false;
    let run = this.ahead;
    this.ahead = null;
    if (run?.first !== this.next) {
      await run?.read.catch(() => {});
      run = this.readRun(old, offsets, this.next, end);
    }
    // The next run is read while this one is hashed and written.
    const following = offsets[run.last] ?? -1;
    if (following >= 0 && run.last < end) this.ahead = this.readRun(old, offsets, run.last, end);
    const { bytesRead } = await run.read;
    if (bytesRead !== run.data.length) {
      // Shorter than the base: not the base. The history has every chunk.
      await this.closeOld();
      return false;
    }
    this.usedOld = true;
    const writing = this.writeAt(pending, [run.data]);
    this.hash.update(run.data);
    await writing;
    this.next = run.last;
    return true;
  }

  /** Start reading the run of neighbouring base chunks from `first` (not reaching `end`). */
  private readRun(old: FileHandle, offsets: Float64Array, first: number, end: number): OldRun {
    const start = offsets[first] as number;
    let length = this.chunks.at(first).length;
    let last = first + 1;
    while (last < end && offsets[last] === start + length) {
      const more = this.chunks.at(last).length;
      if (length + more > READ_BYTES) break;
      length += more;
      last++;
    }
    // Two buffers in turn, one read while the other is written: one allocation per read
    // was garbage at disk speed.
    const slot = this.reads++ % 2;
    this.readBuffers[slot] ??= Buffer.allocUnsafe(READ_BYTES);
    const buffer = this.readBuffers[slot] as Buffer;
    const data = length <= READ_BYTES ? buffer.subarray(0, length) : Buffer.allocUnsafe(length);
    return { first, last, data, read: old.read(data, 0, length, start) };
  }

  private async openOld(): Promise<FileHandle | null> {
    if (this.old !== undefined) return this.old;
    const base = this.base as BaseSource;
    const handle = await this.mirror.openExisting(base.path);
    if (handle && (await handle.stat()).size !== base.size) {
      await handle.close();
      this.old = null;
    } else {
      this.old = handle;
    }
    return this.old;
  }

  private async closeOld(): Promise<void> {
    const old = this.old;
    this.old = null;
    await this.ahead?.read.catch(() => {});
    this.ahead = null;
    await old?.close().catch(() => {});
  }

  private gather(data: readonly Buffer[]): void {
    for (const part of data) {
      this.hash.update(part);
      this.gathered.push(part);
      this.gatheredBytes += part.length;
    }
  }

  private async writeGathered(): Promise<void> {
    const buffers = this.gathered;
    const bytes = this.gatheredBytes;
    if (buffers.length === 0) return;
    await this.writeAt(await this.ensurePending(), buffers);
    this.gathered = [];
    this.gatheredBytes = 0;
    this.held -= bytes;
    this.budget.give(bytes);
  }

  /** writev at the end of what is written, until every byte is (a full disk writes short). */
  private async writeAt(pending: PendingFile, buffers: Buffer[]): Promise<void> {
    let rest = buffers;
    while (rest.length > 0) {
      const { bytesWritten } = await pending.handle.writev(rest, this.written);
      this.written += bytesWritten;
      let skip = bytesWritten;
      const left: Buffer[] = [];
      for (const buffer of rest) {
        if (skip >= buffer.length) skip -= buffer.length;
        else {
          left.push(skip > 0 ? buffer.subarray(skip) : buffer);
          skip = 0;
        }
      }
      rest = left;
    }
    if (this.written >= this.flushAt && this.flushing === null) {
      this.flushAt = this.written + FLUSH_EVERY_BYTES;
      this.flushing = pending.handle.datasync().then(
        () => {
          this.flushing = null;
        },
        (error: unknown) => {
          this.flushing = null;
          this.failure ??= error;
        },
      );
    }
  }

  /** Wait for the flush under way (the file is then closed or installed). */
  private async settleFlush(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private async ensurePending(): Promise<PendingFile> {
    this.pending ??= await this.mirror.createPending();
    return this.pending;
  }
}

function mismatch(): KeepwatchError {
  return new KeepwatchError(
    "KW_HASH_MISMATCH",
    "The content assembled from its chunks does not match its SHA-256; it was not stored.",
  );
}
