// Compression of single chunks for the pack files: zstd at a fixed level, or the bytes as
// they are when zstd does not save at least MIN_GAIN of them (incompressible data then costs
// one quick zstd attempt and a copy, and reads back with no decompression at all).
// bench/compression.ts and docs/store.md give the measurements behind the choice.

import zstd from "zstd-napi/binding.js";
import { type Bytes, bytesOf, partsOf } from "../bytes.js";
import { ChunkCodec, type ChunkCodecValue } from "./pack-format.js";

/** zstd level used unless the store is told otherwise (see docs/store.md for why). */
export const DEFAULT_ZSTD_LEVEL = 3;
/** A compressed chunk is kept only when it is at least this fraction smaller than the chunk. */
export const MIN_GAIN = 0.03;
/**
 * Chunks of at least this size are first tried by a sample: three pieces of SAMPLE_PIECE
 * bytes (from the start, middle and end). When zstd cannot shrink even the sample, the
 * chunk is stored raw without compressing the whole (docs/store.md, Compression).
 */
export const SAMPLE_FROM = 16 * 1024;
const SAMPLE_PIECE = 1024;

export interface EncodedChunk {
  codec: ChunkCodecValue;
  storedLength: number;
}

/** Bad stored bytes: they do not decode to a chunk of the expected length. */
export class ChunkDecodeError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ChunkDecodeError";
  }
}

/** One compression and one decompression context, reused across chunks (not thread-safe). */
export class ChunkCodecContext {
  private readonly cctx = new zstd.CCtx();
  private readonly dctx = new zstd.DCtx();
  private readonly sample = Buffer.allocUnsafe(3 * SAMPLE_PIECE);
  private readonly sampleOut = Buffer.allocUnsafe(zstd.compressBound(3 * SAMPLE_PIECE));
  /** Where a chunk given in parts is joined for zstd, which takes one buffer; kept for the next. */
  private joined: Buffer | undefined;

  constructor(level = DEFAULT_ZSTD_LEVEL) {
    if (!Number.isInteger(level) || level < zstd.minCLevel() || level > zstd.maxCLevel()) {
      throw new RangeError(`zstd levels run from ${zstd.minCLevel()} to ${zstd.maxCLevel()}, got ${level}`);
    }
    // Set once for compress2: the level, and the content size in every frame's header,
    // which decode relies on to never produce more than the index says.
    this.cctx.setParameter(zstd.CParameter.compressionLevel, level);
    this.cctx.setParameter(zstd.CParameter.contentSizeFlag, 1);
    this.cctx.setParameter(zstd.CParameter.checksumFlag, 0);
  }

  /** Room `encode` may need in its target for a chunk of `length` bytes. */
  static bound(length: number): number {
    return Math.max(length, zstd.compressBound(length));
  }

  /**
   * Encode `chunk` (whole or in parts) into `target` at `offset`, which must have
   * `bound(length)` bytes of room; returns how it was stored.
   */
  encode(chunk: Bytes, target: Buffer, offset: number): EncodedChunk {
    const data = partsOf(chunk);
    const length = bytesOf(data);
    const keepBelow = Math.floor(length * (1 - MIN_GAIN));
    if (keepBelow > 0 && (length < SAMPLE_FROM || this.sampleShrinks(data, length))) {
      const room = target.subarray(offset, offset + zstd.compressBound(length));
      const stored = this.cctx.compress2(
        room,
        data.length === 1 ? (data[0] as Buffer) : this.join(data, length),
      );
      if (stored <= keepBelow) return { codec: ChunkCodec.zstd, storedLength: stored };
    }
    copyRange(data, 0, length, target, offset);
    return { codec: ChunkCodec.raw, storedLength: length };
  }

  /** Whether zstd shrinks a sample of `data` (at least SAMPLE_FROM bytes) by MIN_GAIN. */
  private sampleShrinks(data: readonly Buffer[], length: number): boolean {
    const middle = Math.floor((length - SAMPLE_PIECE) / 2);
    copyRange(data, 0, SAMPLE_PIECE, this.sample, 0);
    copyRange(data, middle, middle + SAMPLE_PIECE, this.sample, SAMPLE_PIECE);
    copyRange(data, length - SAMPLE_PIECE, length, this.sample, 2 * SAMPLE_PIECE);
    const stored = this.cctx.compress2(this.sampleOut, this.sample);
    return stored <= this.sample.length * (1 - MIN_GAIN);
  }

  /** `data`'s parts joined in a buffer of this context's, valid until the next join. */
  private join(data: readonly Buffer[], length: number): Buffer {
    if (!this.joined || this.joined.length < length) this.joined = Buffer.allocUnsafe(length);
    copyRange(data, 0, length, this.joined, 0);
    return this.joined.subarray(0, length);
  }

  /**
   * The chunk's bytes from its stored bytes. Never allocates more than `rawLength`; throws
   * ChunkDecodeError when the stored bytes do not decode to exactly `rawLength` bytes.
   */
  decode(codec: ChunkCodecValue, stored: Buffer, rawLength: number): Buffer {
    if (codec === ChunkCodec.raw) {
      if (stored.length !== rawLength) throw new ChunkDecodeError("a raw record of the wrong length");
      return stored;
    }
    const out = Buffer.allocUnsafe(rawLength);
    let length: number;
    try {
      length = this.dctx.decompress(out, stored);
    } catch (error) {
      throw new ChunkDecodeError("the zstd frame does not decode", { cause: error });
    }
    if (length !== rawLength) {
      throw new ChunkDecodeError(`the zstd frame holds ${length} bytes, not ${rawLength}`);
    }
    return out;
  }
}

/** Copy bytes `start` to `end` of the concatenation of `parts` into `target` at `at`. */
function copyRange(parts: readonly Buffer[], start: number, end: number, target: Buffer, at: number): void {
  let partStart = 0;
  for (const part of parts) {
    const partEnd = partStart + part.length;
    if (partEnd > start && partStart < end) {
      const from = Math.max(start, partStart) - partStart;
      const to = Math.min(end, partEnd) - partStart;
      at += part.copy(target, at, from, to);
    }
    if (partEnd >= end) return;
    partStart = partEnd;
  }
}
