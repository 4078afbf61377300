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
/**
 * Slabs in the process (16 MiB), made on first use; memory only as they are touched. Two
 * for the pack being filled, two for the one a repack writes.
 */
export const SLAB_COUNT = 4;

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

/**
 * The bytes of a file being written from its start, held in a buffer until `spill` writes
 * them. Callers put bytes either with `write` (copied) or straight into `buffer` at `used`
 * (then `advance`). With a second buffer, a spill only starts its writes: bytes go into the
 * other buffer meanwhile, and the next spill (or `settle`) waits for them. One caller at a
 * time: `write`, `spill` and `settle` must not overlap.
 */
export class BlockAppender {
  /** Holds the file's bytes from `base` on; the buffer callers write into. */
  buffer: Buffer;
  /** The other buffer, whose writes may be under way; null with one buffer. */
  private spare: Buffer | null;
  /** Whether the buffers are slabs (aligned, given back by `release`). */
  private readonly slab: boolean;
  /** File position of buffer[0], a multiple of BLOCK_BYTES. */
  private base = 0;
  /** Bytes in the buffer from `base`. */
  private filled = 0;
  /** Bytes of the file written so far (the rest is in the buffers). */
  private onDisk = 0;
  /** The writes under way from `spare`, which holds [spareBase, spareEnd); null when none. */
  private writing: Promise<void> | null = null;
  private spareBase = 0;
  private spareEnd = 0;
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
    this.spare = given[1]?.subarray(0, size) ?? null;
  }

  /**
   * An appender with `buffers` aligned buffers (1 or 2) of `bytes` (at most SLAB_BYTES), or
   * null when not that many slabs are free: for a caller that would rather write its own way
   * than hold more memory.
   */
  static ifAligned(bytes: number, buffers: 1 | 2): BlockAppender | null {
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
   * with two, only once `settle` (or the next spill) resolves. The last partial block stays
   * in the buffer, so that later bytes join it.
   */
  async spill(target: AppendTarget): Promise<void> {
    await this.settle();
    const end = this.size;
    const keep = alignDown(end);
    const from = this.onDisk;
    const source = this.buffer;
    const sourceBase = this.base;
    const writes = from < end ? this.writeOut(target, source, sourceBase, from, end) : null;
    if (this.spare && writes) {
      // The other buffer takes the last partial block and what comes next.
      source.copy(this.spare, 0, keep - sourceBase, this.filled);
      this.buffer = this.spare;
      this.spare = source;
      this.spareBase = sourceBase;
      this.spareEnd = end;
      this.writing = writes.then(() => {
        this.onDisk = end;
      });
      // Its failure is heard when it is waited for (the next spill, settle), not before.
      this.writing.catch(() => {});
    } else {
      if (writes) await writes;
      this.onDisk = end;
      source.copy(source, 0, keep - sourceBase, this.filled);
    }
    this.filled = end - keep;
    this.base = keep;
  }

  /** Wait for the writes under way (a failed one throws here). */
  async settle(): Promise<void> {
    const writing = this.writing;
    if (!writing) return;
    try {
      await writing;
    } finally {
      this.writing = null;
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
    if (!this.writing || !this.spare || offset < this.spareBase) return undefined;
    // Written from the other buffer right now: from there, and the rest from this one.
    const copy = Buffer.allocUnsafe(length);
    const fromSpare = Math.min(end, this.spareEnd) - offset;
    this.spare.copy(copy, 0, offset - this.spareBase, offset - this.spareBase + fromSpare);
    if (fromSpare < length) this.buffer.copy(copy, fromSpare, this.spareEnd - this.base, end - this.base);
    return copy;
  }

  /** Give the buffers back; nothing may use them afterwards (no write may be under way). */
  release(): void {
    if (!this.slab) return;
    for (const buffer of [this.buffer, this.spare]) {
      if (buffer) slabs()?.push(Buffer.from(buffer.buffer, buffer.byteOffset, SLAB_BYTES));
    }
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
