// Writing a file that only grows, with its whole blocks past the page cache (O_DIRECT): the
// server's packs (pack-writer.ts).
//
// A pack is written once, fsynced, and read again only for a restore, a verify or an edit's
// base chunks that the mirror cannot give. Through the page cache, each GiB written took
// 1.3–3.0 s of kernel CPU on this machine (a KVM guest, where a fresh page-cache page is
// expensive), against 0.2 s with O_DIRECT from reused aligned memory; the fsync then has
// little left to write (docs/performance.md). So the bytes are gathered in an aligned
// buffer; whole 4 KiB blocks go to the disk directly, and the parts of a block at either end
// of a write go through the page cache, never both ways for one block (the kernel keeps the
// two coherent either way, but a direct write over cached pages first waits for them to
// reach the disk).
//
// The mirror is not written this way, although that made the 1 GiB initial backup faster
// still: an edit reads the mirror's old file back, from the page cache when it was written
// through it, and from the disk when it was not, which made both edits of the 1 GiB file
// slower in the bench (docs/decisions.md, "Packs past the page cache").
//
// Direct I/O needs the memory, the file position and the length aligned. The memory comes
// from one WebAssembly memory (its start is page-aligned) cut into a few slabs. Where there
// is no slab free, no WebAssembly (`node --jitless`), no O_DIRECT (another OS, a file system
// without it) or a direct write is refused (EINVAL), the same bytes go through the page cache
// instead: slower, never wrong.

import { constants } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { errnoCode } from "../errors.js";

/** Alignment of every direct write (memory, position, length): disks have 512-byte or 4 KiB blocks. */
export const BLOCK_BYTES = 4096;
/** Bytes of one slab of aligned memory. */
export const SLAB_BYTES = 4 * 1024 * 1024;
/** Slabs in the process (32 MiB), taken on first use; memory only as they are touched. */
const SLAB_COUNT = 8;

/** The file an appender writes to. */
export interface AppendTarget {
  /** Any write may go through it (the page cache). */
  readonly handle: FileHandle;
  /** The same file opened with O_DIRECT for whole blocks, or null (see openDirect). */
  direct: FileHandle | null;
}

/**
 * `path` (an existing file) opened for direct writes, or null where that is not possible:
 * the appender then writes through the page cache alone.
 */
export async function openDirect(path: string): Promise<FileHandle | null> {
  const flag = constants.O_DIRECT;
  if (flag === undefined || slabs() === null) return null;
  try {
    return await open(path, constants.O_WRONLY | flag);
  } catch {
    return null;
  }
}

let pool: Buffer[] | null | undefined;

/** The one part of WebAssembly used here (its types come with the DOM's, not Node's). */
interface WasmMemoryConstructor {
  new (descriptor: { initial: number }): { buffer: ArrayBuffer };
}

function slabs(): Buffer[] | null {
  if (pool !== undefined) return pool;
  try {
    // 64 KiB WebAssembly pages; the memory's start is page-aligned, so every slab is.
    const { Memory } = (globalThis as unknown as { WebAssembly: { Memory: WasmMemoryConstructor } })
      .WebAssembly;
    const memory = new Memory({ initial: (SLAB_BYTES * SLAB_COUNT) / 65536 });
    pool = [];
    for (let i = 0; i < SLAB_COUNT; i++) pool.push(Buffer.from(memory.buffer, i * SLAB_BYTES, SLAB_BYTES));
  } catch {
    pool = null;
  }
  return pool;
}

/** `count` slabs, or null when fewer are free. */
function takeSlabs(count: number): Buffer[] | null {
  const free = slabs();
  if (!free || free.length < count) return null;
  return free.splice(free.length - count, count);
}

function alignDown(n: number): number {
  return n - (n % BLOCK_BYTES);
}

function alignUp(n: number): number {
  return alignDown(n + BLOCK_BYTES - 1);
}

/** A spilled buffer whose writes are under way: it holds the file's bytes [base, end). */
interface InFlight {
  buffer: Buffer;
  base: number;
  end: number;
  done: Promise<void>;
}

/**
 * The bytes of a file being written from its start, held in a buffer until `spill` writes
 * them. Callers put bytes either with `write` (copied) or straight into `buffer` at `used`
 * (then `advance`). With more than one buffer, a spill only starts its writes: bytes go into
 * the next buffer meanwhile, and a spill waits only when every other buffer is still being
 * written (`settle` waits for all). One caller at a time: `write`, `spill` and `settle` must
 * not overlap.
 */
export class BlockAppender {
  /** Holds the file's bytes from `base` on; the buffer callers write into. */
  buffer: Buffer;
  /** The other buffers, free to take. */
  private readonly free: Buffer[];
  /** Spilled buffers whose writes are under way, oldest first. */
  private readonly inFlight: InFlight[] = [];
  /** Whether the buffers are slabs (aligned, given back by `release`). */
  private readonly slab: boolean;
  /** File position of buffer[0], a multiple of BLOCK_BYTES. */
  private base = 0;
  /** Bytes in the buffer from `base`. */
  private filled = 0;
  /** Bytes of the file written so far, by writes that are over (the rest is in the buffers). */
  private onDisk = 0;
  /** Where the writes started so far end (onDisk once they are all over). */
  private spilled = 0;
  /** Bytes written with O_DIRECT (for tests and measurements). */
  directBytes = 0;

  /**
   * A buffer of `bytes` (at most SLAB_BYTES for an aligned one; more, or no slab free, and
   * every write goes through the page cache). `aligned`: whether direct writes are wanted.
   */
  constructor(bytes: number, aligned: boolean);
  constructor(bytes: number, slabs: Buffer[]);
  constructor(bytes: number, aligned: boolean | Buffer[]) {
    const size = Math.max(alignUp(bytes), BLOCK_BYTES * 2);
    let given = Array.isArray(aligned) ? aligned : [];
    if (aligned === true && size <= SLAB_BYTES) given = takeSlabs(1) ?? [];
    this.slab = given.length > 0;
    this.buffer = given[0]?.subarray(0, size) ?? Buffer.allocUnsafe(size);
    this.free = given.slice(1).map((slab) => slab.subarray(0, size));
  }

  /**
   * An appender with `buffers` aligned buffers of `bytes` (at most SLAB_BYTES), or null when
   * not that many slabs are free: for a caller that would rather write its own way than hold
   * more memory.
   */
  static ifAligned(bytes: number, buffers: number): BlockAppender | null {
    const taken = bytes <= SLAB_BYTES ? takeSlabs(buffers) : null;
    return taken ? new BlockAppender(bytes, taken) : null;
  }

  /** Whether whole blocks can go to the disk directly (the buffers are aligned). */
  get aligned(): boolean {
    return this.slab;
  }

  /** Where the next byte goes in `buffer`. */
  get used(): number {
    return this.filled;
  }

  /** Room left in `buffer` after `used`. */
  get room(): number {
    return this.buffer.length - this.filled;
  }

  /** The file's size once everything given is written. */
  get size(): number {
    return this.base + this.filled;
  }

  /** `n` bytes were put into `buffer` at `used`. */
  advance(n: number): void {
    if (n < 0 || n > this.room) throw new RangeError(`advance by ${n} with ${this.room} bytes of room`);
    this.filled += n;
  }

  /** Append `parts` (copied), spilling whenever the buffer is full. */
  async write(target: AppendTarget, parts: readonly Buffer[]): Promise<void> {
    for (const part of parts) {
      for (let from = 0; from < part.length; ) {
        if (this.room === 0) await this.spill(target);
        const n = part.copy(this.buffer, this.filled, from);
        this.filled += n;
        from += n;
      }
    }
  }

  /**
   * Write out everything given so far. With one buffer it is written when this resolves;
   * with more, only once `settle` resolves. The last partial block stays in the buffer, so
   * that later bytes join it.
   */
  async spill(target: AppendTarget): Promise<void> {
    const end = this.size;
    const keep = alignDown(end);
    const source = this.buffer;
    const sourceBase = this.base;
    if (this.spilled < end) {
      const done = this.writeOut(target, source, sourceBase, this.spilled, end);
      this.spilled = end;
      if (this.inFlight.length === 0 && this.free.length === 0) {
        // One buffer: write, then go on in the same buffer.
        await done;
        this.onDisk = end;
      } else {
        const flight: InFlight = { buffer: source, base: sourceBase, end, done: done.then(() => {}) };
        this.inFlight.push(flight);
        // The oldest write must be over before its buffer is taken again.
        if (this.free.length === 0) await this.finishOldest();
        const next = this.free.shift() as Buffer;
        source.copy(next, 0, keep - sourceBase, this.filled);
        this.buffer = next;
      }
    }
    if (this.buffer === source) source.copy(source, 0, keep - sourceBase, this.filled);
    this.filled = end - keep;
    this.base = keep;
  }

  /** Wait for every write under way (a failed one throws here, and the rest are still waited for). */
  async settle(): Promise<void> {
    let failure: unknown = null;
    while (this.inFlight.length > 0) {
      try {
        await this.finishOldest();
      } catch (error) {
        failure ??= error;
      }
    }
    if (failure !== null) throw failure;
  }

  /** Wait for the oldest write under way; its buffer is free again, whatever the outcome. */
  private async finishOldest(): Promise<void> {
    const oldest = this.inFlight[0] as InFlight;
    try {
      await oldest.done;
      this.onDisk = Math.max(this.onDisk, oldest.end);
    } finally {
      this.inFlight.shift();
      this.free.push(oldest.buffer);
    }
  }

  /**
   * A copy of the bytes [offset, offset + length) when any of them is not written yet, else
   * undefined (the file has them all). A range that begins in the file and ends in memory
   * must not be asked for: bytes handed over together are in memory or in the file.
   */
  held(offset: number, length: number): Buffer | undefined {
    const end = offset + length;
    if (offset >= this.base) return Buffer.from(this.buffer.subarray(offset - this.base, end - this.base));
    const first = this.inFlight.findIndex((flight) => offset >= flight.base && offset < flight.end);
    if (first < 0) return undefined;
    // Being written from spilled buffers right now: from those, and the rest from this one.
    const copy = Buffer.allocUnsafe(length);
    let at = offset;
    for (const flight of this.inFlight.slice(first)) {
      if (at >= end) break;
      const to = Math.min(end, flight.end);
      flight.buffer.copy(copy, at - offset, at - flight.base, to - flight.base);
      at = to;
    }
    if (at < end) this.buffer.copy(copy, at - offset, at - this.base, end - this.base);
    return copy;
  }

  /** Start again from an empty file (which the caller truncated; no write may be under way). */
  reset(): void {
    this.base = 0;
    this.filled = 0;
    this.onDisk = 0;
    this.spilled = 0;
  }

  /** Give the buffers back; nothing may use them afterwards (no write may be under way). */
  release(): void {
    if (!this.slab) return;
    for (const buffer of [this.buffer, ...this.free, ...this.inFlight.map((flight) => flight.buffer)]) {
      slabs()?.push(Buffer.from(buffer.buffer, buffer.byteOffset, SLAB_BYTES));
    }
    this.free.length = 0;
    this.inFlight.length = 0;
  }

  /**
   * Write [from, to) of the file from `source` (holding the file from `sourceBase`): whole
   * blocks directly, the partial ones at either end through the page cache.
   */
  private async writeOut(
    target: AppendTarget,
    source: Buffer,
    sourceBase: number,
    from: number,
    to: number,
  ): Promise<void> {
    const bytes = (a: number, b: number) => source.subarray(a - sourceBase, b - sourceBase);
    let at = from;
    if (target.direct && this.slab) {
      const headEnd = Math.min(to, alignUp(at));
      if (headEnd > at) {
        await writeAll(target.handle, bytes(at, headEnd), at);
        at = headEnd;
      }
      const bodyEnd = alignDown(to);
      if (bodyEnd > at && (await this.writeDirect(target, bytes(at, bodyEnd), at))) at = bodyEnd;
    }
    if (to > at) await writeAll(target.handle, bytes(at, to), at);
  }

  /** Write whole blocks directly; false when the file would not take them so (then it is not tried again). */
  private async writeDirect(target: AppendTarget, bytes: Buffer, position: number): Promise<boolean> {
    const direct = target.direct;
    if (!direct) return false;
    try {
      await writeAll(direct, bytes, position);
      this.directBytes += bytes.length;
      return true;
    } catch (error) {
      // EINVAL: this file or device will not take these writes directly; the others
      // (a full disk, an I/O error) are the caller's.
      if (errnoCode(error) !== "EINVAL") throw error;
      target.direct = null;
      await direct.close().catch(() => {});
      return false;
    }
  }
}

/** Write all of `bytes` at `position` (a full disk writes short before it fails). */
async function writeAll(handle: FileHandle, bytes: Buffer, position: number): Promise<void> {
  for (let done = 0; done < bytes.length; ) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, position + done);
    done += bytesWritten;
  }
}
