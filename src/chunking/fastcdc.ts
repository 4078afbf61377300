// FastCDC content-defined chunking (Xia et al., USENIX ATC 2016): cuts a byte stream into
// chunks whose boundaries depend only on the bytes near them, so an insertion or deletion
// moves the boundaries around it and leaves every other chunk, and its hash, unchanged.
// Streaming: a file of any size goes through in pieces, with memory bounded by maxSize.
// The algorithm and its parameters are described, with measurements, in docs/chunking.md.

import { createHash } from "node:crypto";
import { gearTable } from "./gear.js";

export interface ChunkParams {
  /** No cut before a chunk has this many bytes; they are skipped, not hashed. */
  minSize: number;
  /**
   * The normal size, a power of two: before it a cut needs the harder mask (log2(avgSize) +
   * normalization bits), from it on the easier one (log2(avgSize) − normalization bits).
   */
  avgSize: number;
  /** A cut is forced when a chunk reaches this many bytes. */
  maxSize: number;
  /** The paper's normalization level (NC): 0 is plain one-mask chunking. Default 1. */
  normalization?: number;
}

/** One chunk of a stream. */
export interface Chunk {
  /** Position of the chunk's first byte in the stream. */
  offset: number;
  length: number;
  /** The chunk's bytes: a view of the buffer given to `push` when it lies within it, else a copy. */
  data: Buffer;
}

/**
 * The parameters keepwatch stores data with. Changing any of them changes chunk boundaries
 * (so existing chunks no longer match new backups of the same files); see docs/chunking.md.
 */
export const DEFAULT_CHUNK_PARAMS: Readonly<Required<ChunkParams>> = Object.freeze({
  minSize: 16 * 1024,
  avgSize: 64 * 1024,
  maxSize: 256 * 1024,
  normalization: 1,
});

/** No parameters may allow a chunk larger than this (64 MiB), so peers can bound buffers. */
export const CHUNK_SIZE_LIMIT = 64 * 1024 * 1024;

// The gear table, and the same table shifted left by one bit, for the two-bytes-per-step
// loop in `findCut` (the "rolling two bytes each time" of FastCDC's 2020 journal version).
const GEAR = gearTable();
const GEAR_SHIFTED = GEAR.map((g) => g << 1);

/**
 * A mask of `bits` one-bits whose highest is bit 30. High bits of the gear hash depend on
 * more bytes (bit j on the last j + 1), so the cut test looks at the last 31 bytes. Bit 31
 * is left out so that the mask shifted left by one, used for the first byte of each pair in
 * `findCut`, still fits in 32 bits.
 */
function highMask(bits: number): number {
  return ((2 ** bits - 1) * 2 ** (31 - bits)) | 0;
}

function resolveParams(params: ChunkParams): Required<ChunkParams> {
  const { minSize, avgSize, maxSize } = params;
  const normalization = params.normalization ?? DEFAULT_CHUNK_PARAMS.normalization;
  for (const [name, value] of Object.entries({ minSize, avgSize, maxSize, normalization })) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(`chunk parameter ${name} must be a non-negative integer, got ${value}`);
    }
  }
  if (!(minSize <= avgSize && avgSize <= maxSize && maxSize >= 1 && maxSize <= CHUNK_SIZE_LIMIT)) {
    throw new RangeError(
      `chunk sizes must satisfy minSize ≤ avgSize ≤ maxSize ≤ ${CHUNK_SIZE_LIMIT}, got ${minSize}/${avgSize}/${maxSize}`,
    );
  }
  const bits = Math.log2(avgSize);
  if (!Number.isInteger(bits) || bits - normalization < 1 || bits + normalization > 30) {
    throw new RangeError(
      `avgSize must be a power of two with 1 ≤ log2(avgSize) ± normalization ≤ 30, got ${avgSize} at level ${normalization}`,
    );
  }
  return { minSize, avgSize, maxSize, normalization };
}

/** Everything a cut decision needs: the sizes and the two masks. */
interface CutRule {
  readonly minSize: number;
  readonly avgSize: number;
  readonly maxSize: number;
  readonly maskS: number;
  readonly maskL: number;
}

function cutRule(params: Required<ChunkParams>): CutRule {
  const bits = Math.log2(params.avgSize);
  return {
    minSize: params.minSize,
    avgSize: params.avgSize,
    maxSize: params.maxSize,
    maskS: highMask(bits + params.normalization),
    maskL: highMask(bits - params.normalization),
  };
}

/**
 * Cuts a stream into content-defined chunks. Feed it with `push`, end with `finish`; after
 * `finish` it starts a new stream at offset 0. Holds fewer than maxSize bytes between pushes.
 */
export class Chunker {
  readonly params: Readonly<Required<ChunkParams>>;
  private readonly rule: CutRule;
  /** The current chunk's bytes received in earlier pushes; grows up to maxSize as needed. */
  private carry: Buffer = Buffer.alloc(0);
  private carryLength = 0;
  /** The gear hash of the current chunk's bytes scanned so far (0 until minSize is passed). */
  private hash = 0;
  /** Stream offset of the current chunk's first byte. */
  private offset = 0;

  constructor(params: ChunkParams = DEFAULT_CHUNK_PARAMS) {
    this.params = Object.freeze(resolveParams(params));
    this.rule = cutRule(this.params);
  }

  /**
   * The chunks completed by `data`, in stream order. Chunks lying within `data` are views of
   * it: the caller must not overwrite `data` while it still uses them. Nothing else of
   * `data` is kept after the call returns.
   */
  push(data: Uint8Array): Chunk[] {
    const src = asBuffer(data);
    const end = src.length;
    const chunks: Chunk[] = [];
    let start = 0;
    if (this.carryLength > 0) {
      const cut = findEnd(this.rule, src, 0, end, this.carryLength, this.hash);
      if (cut < 0) {
        this.hash = hashAtEnd;
        this.keep(src, 0);
        return chunks;
      }
      const length = this.carryLength + cut;
      const joined = Buffer.allocUnsafe(length);
      this.carry.copy(joined, 0, 0, this.carryLength);
      src.copy(joined, this.carryLength, 0, cut);
      chunks.push({ offset: this.offset, length, data: joined });
      this.offset += length;
      this.carryLength = 0;
      start = cut;
    }
    for (;;) {
      const cut = findEnd(this.rule, src, start, end, 0, 0);
      if (cut < 0) {
        this.hash = hashAtEnd;
        break;
      }
      const length = cut - start;
      chunks.push({ offset: this.offset, length, data: src.subarray(start, cut) });
      this.offset += length;
      start = cut;
    }
    if (start < end) this.keep(src, start);
    return chunks;
  }

  /** The stream's last chunk (a copy), or null when the stream ended on a boundary or was empty. */
  finish(): Chunk | null {
    const length = this.carryLength;
    const chunk =
      length > 0 ? { offset: this.offset, length, data: Buffer.from(this.carry.subarray(0, length)) } : null;
    this.carryLength = 0;
    this.hash = 0;
    this.offset = 0;
    return chunk;
  }

  /** Appends src[from…] to the carried bytes of the current chunk (fewer than maxSize in all). */
  private keep(src: Buffer, from: number): void {
    const length = this.carryLength + src.length - from;
    if (length > this.carry.length) {
      // Grow by doubling: a small file costs a small buffer, a large one at most maxSize.
      const grown = Buffer.allocUnsafe(
        Math.min(this.rule.maxSize, Math.max(length, 2 * this.carry.length, 4096)),
      );
      this.carry.copy(grown, 0, 0, this.carryLength);
      this.carry = grown;
    }
    src.copy(this.carry, this.carryLength, from);
    this.carryLength = length;
  }
}

/** All chunks of one buffer, each a view of it (no copies, no carried state). */
export function chunkBuffer(buf: Uint8Array, params: ChunkParams = DEFAULT_CHUNK_PARAMS): Chunk[] {
  const src = asBuffer(buf);
  const rule = cutRule(resolveParams(params));
  const chunks: Chunk[] = [];
  for (let start = 0; start < src.length; ) {
    const cut = findEnd(rule, src, start, src.length, 0, 0);
    const end = cut < 0 ? src.length : cut;
    chunks.push({ offset: start, length: end - start, data: src.subarray(start, end) });
    start = end;
  }
  return chunks;
}

/** A chunk's id: the SHA-256 of its bytes (hardware-accelerated in node:crypto). */
export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Looks for the end of the current chunk in src[from, end), given that `done` of its bytes
 * came before src[from] and `h` is their gear hash. Returns the index in src just after the
 * chunk's last byte, or −1 when src ends first (then `hashAtEnd` holds the hash to go on with).
 */
function findEnd(rule: CutRule, src: Buffer, from: number, end: number, done: number, h: number): number {
  const base = from - done; // where the chunk starts, relative to src (≤ from)
  const maxEnd = base + rule.maxSize;
  const stop = end < maxEnd ? end : maxEnd;
  let i = base + rule.minSize; // the first minSize bytes are skipped, not hashed
  if (i < from) i = from;
  let normalEnd = base + rule.avgSize;
  if (normalEnd < i) normalEnd = i;
  if (normalEnd > stop) normalEnd = stop;
  const at = findCut(src, i, normalEnd, stop, h, rule.maskS, rule.maskL);
  if (at >= 0) return at;
  return stop === maxEnd ? stop : -1;
}

/** The gear hash where the last `findCut` ran out of bytes (read right after the call). */
let hashAtEnd = 0;

/**
 * Hashes src[i, stop) starting from hash `h`, testing mask S before `normalEnd` and mask L
 * from it on. Returns the index just after the first byte whose hash passes, or −1 (then
 * `hashAtEnd` holds the hash). A free function: V8 ran it about 20% faster than the same
 * loop as a method.
 */
function findCut(
  src: Buffer,
  i: number,
  normalEnd: number,
  stop: number,
  h: number,
  maskS: number,
  maskL: number,
): number {
  // The pair steps compute exactly what two single steps would: after the first byte the
  // hash would be h1 = (h << 1) + g[a], and (h << 2) + (g[a] << 1) is h1 << 1, which is
  // tested against mask << 1; adding g[b] then gives (h1 << 1) + g[b]. One shift and one
  // loop test per two bytes instead of two.
  const g = GEAR;
  const g2 = GEAR_SHIFTED;
  const maskS2 = maskS << 1;
  const maskL2 = maskL << 1;
  const lastPairS = normalEnd - 1;
  while (i < lastPairS) {
    h = ((h << 2) + (g2[src[i] as number] as number)) | 0;
    if ((h & maskS2) === 0) return i + 1;
    h = (h + (g[src[i + 1] as number] as number)) | 0;
    if ((h & maskS) === 0) return i + 2;
    i += 2;
  }
  if (i < normalEnd) {
    h = ((h << 1) + (g[src[i] as number] as number)) | 0;
    i++;
    if ((h & maskS) === 0) return i;
  }
  const lastPairL = stop - 1;
  while (i < lastPairL) {
    h = ((h << 2) + (g2[src[i] as number] as number)) | 0;
    if ((h & maskL2) === 0) return i + 1;
    h = (h + (g[src[i + 1] as number] as number)) | 0;
    if ((h & maskL) === 0) return i + 2;
    i += 2;
  }
  if (i < stop) {
    h = ((h << 1) + (g[src[i] as number] as number)) | 0;
    i++;
    if ((h & maskL) === 0) return i;
  }
  hashAtEnd = h;
  return -1;
}
