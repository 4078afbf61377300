// A delta inside one chunk (protocol version 4, docs/protocol.md section 13): when a changed
// chunk replaces one the server holds (its "basis"), the server sends a checksum pair per
// block of the basis, the client finds those blocks in its new chunk with a rolling
// checksum, and sends only the block numbers and the bytes between them. A one-byte change
// then costs a block of bytes and the checksums instead of the whole 16–256 KiB chunk.
// The server rebuilds the chunk from the basis and checks it against the chunk's SHA-256,
// so a weak-checksum collision or a wrong delta can never store a wrong chunk.

import { createHash } from "node:crypto";

/** The block size the server uses: about √(12 × chunk size) for a 64 KiB chunk, which minimizes checksums + one changed block. */
export const DELTA_BLOCK_BYTES = 1024;
/** Bytes of a block's strong checksum on the wire: the start of its SHA-256. */
export const STRONG_BYTES = 8;
/** Bytes per block in a list of checksums: weak u32, then the strong checksum. */
export const SUM_BYTES = 4 + STRONG_BYTES;

/** The checksums of a basis's blocks (the last one may be shorter). */
export interface BlockSums {
  blockSize: number;
  /** The basis's length in bytes. */
  length: number;
  /** Weak and strong checksums, SUM_BYTES per block, in block order. */
  sums: Buffer;
}

/** Delta ops (the CHUNK_DELTA payload after its index). */
const OP_COPY = 0x01;
const OP_LITERAL = 0x02;

/** A COPY op: blocks `block` … `block + count − 1` of the basis. */
export function copyOp(block: number, count: number): Buffer {
  const op = Buffer.allocUnsafe(9);
  op[0] = OP_COPY;
  op.writeUInt32BE(block, 1);
  op.writeUInt32BE(count, 5);
  return op;
}

/** The head of a LITERAL op of `length` bytes (the bytes follow it). */
export function literalHead(length: number): Buffer {
  const head = Buffer.allocUnsafe(5);
  head[0] = OP_LITERAL;
  head.writeUInt32BE(length, 1);
  return head;
}

/** A delta that cannot be applied to its basis (a protocol violation by its sender). */
export class DeltaError extends Error {}

/**
 * The weak checksum of `data[from, to)`: a the byte sum, b the sum of the running sums,
 * both modulo 2^16, as (b << 16) | a. It rolls: see `deltaOps`.
 */
function weakSum(data: Uint8Array, from: number, to: number): number {
  let a = 0;
  let b = 0;
  for (let i = from; i < to; i++) {
    a = (a + (data[i] as number)) & 0xffff;
    b = (b + a) & 0xffff;
  }
  return ((b << 16) | a) >>> 0;
}

function strongSum(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest().subarray(0, STRONG_BYTES);
}

export function blockCount(length: number, blockSize: number): number {
  return Math.ceil(length / blockSize);
}

/** The checksums of each block of `basis`. */
export function blockSums(basis: Uint8Array, blockSize = DELTA_BLOCK_BYTES): BlockSums {
  const count = blockCount(basis.length, blockSize);
  const sums = Buffer.allocUnsafe(count * SUM_BYTES);
  for (let k = 0; k < count; k++) {
    const from = k * blockSize;
    const to = Math.min(basis.length, from + blockSize);
    sums.writeUInt32BE(weakSum(basis, from, to), k * SUM_BYTES);
    strongSum(basis.subarray(from, to)).copy(sums, k * SUM_BYTES + 4);
  }
  return { blockSize, length: basis.length, sums };
}

/**
 * The ops that build `target` from the basis whose checksums are `basis`: COPY (0x01,
 * block u32, count u32) for runs of the basis's whole blocks found in it, LITERAL (0x02,
 * length u32, bytes) for the bytes between them. Full-size blocks are looked for anywhere;
 * the basis's shorter last block only at the end of `target`.
 */
export function deltaOps(target: Uint8Array, basis: BlockSums): Buffer {
  const { blockSize, sums } = basis;
  const full = Math.floor(basis.length / blockSize);
  /** Weak checksum → the full blocks that have it, in block order. */
  const byWeak = new Map<number, number[]>();
  for (let k = 0; k < full; k++) {
    const weak = sums.readUInt32BE(k * SUM_BYTES);
    const list = byWeak.get(weak);
    if (list) list.push(k);
    else byWeak.set(weak, [k]);
  }
  const out: Buffer[] = [];
  let literalFrom = 0;
  /** The COPY run being extended: its first block and count (0: none). */
  const run = { block: 0, count: 0 };
  const flushLiteral = (to: number) => {
    if (to <= literalFrom) return;
    flushRun();
    out.push(literalHead(to - literalFrom), Buffer.from(target.subarray(literalFrom, to)));
  };
  const flushRun = () => {
    if (run.count === 0) return;
    out.push(copyOp(run.block, run.count));
    run.count = 0;
  };
  /** Block `block` of the basis is target[at, at + its length). */
  const copyBlock = (at: number, block: number) => {
    flushLiteral(at);
    if (run.count > 0 && run.block + run.count === block) run.count++;
    else {
      flushRun();
      run.block = block;
      run.count = 1;
    }
    literalFrom = at + Math.min(blockSize, basis.length - block * blockSize);
  };
  const n = blockSize;
  let i = 0;
  let a = 0;
  let b = 0;
  let fresh = true;
  while (full > 0 && i + n <= target.length) {
    if (fresh) {
      const weak = weakSum(target, i, i + n);
      a = weak & 0xffff;
      b = weak >>> 16;
      fresh = false;
    }
    const candidates = byWeak.get(((b << 16) | a) >>> 0);
    let found = -1;
    if (candidates) {
      const strong = strongSum(target.subarray(i, i + n));
      // The block after the run being extended first: a changed chunk keeps its blocks' order.
      const preferred = run.count > 0 ? run.block + run.count : -1;
      for (const k of candidates) {
        if (
          sums.compare(strong, 0, STRONG_BYTES, k * SUM_BYTES + 4, k * SUM_BYTES + 4 + STRONG_BYTES) !== 0
        ) {
          continue;
        }
        if (found < 0 || k === preferred) found = k;
        if (k === preferred) break;
      }
    }
    if (found >= 0) {
      copyBlock(i, found);
      i += n;
      fresh = true;
      continue;
    }
    // Roll the window one byte on.
    if (i + n < target.length) {
      const leaving = target[i] as number;
      const entering = target[i + n] as number;
      a = (a - leaving + entering) & 0xffff;
      b = (b - n * leaving + a) & 0xffff;
    }
    i++;
  }
  // The basis's shorter last block, where a chunk's last bytes usually are: at the end.
  const lastLength = basis.length - full * blockSize;
  const from = target.length - lastLength;
  if (lastLength > 0 && from >= literalFrom) {
    const at = full * SUM_BYTES;
    const tail = target.subarray(from);
    if (
      weakSum(tail, 0, tail.length) === sums.readUInt32BE(at) &&
      sums.compare(strongSum(tail), 0, STRONG_BYTES, at + 4, at + 4 + STRONG_BYTES) === 0
    ) {
      copyBlock(from, full);
    }
  }
  flushLiteral(target.length);
  flushRun();
  return Buffer.concat(out);
}

/**
 * The bytes the ops build from `basis` cut in blocks of `blockSize`; they must come to
 * `length` bytes exactly. Throws DeltaError for ops that are cut short, unknown, reach
 * past the basis or build more than `length` bytes (memory stays bounded by `length`).
 */
export function applyDelta(basis: Uint8Array, blockSize: number, ops: Uint8Array, length: number): Buffer {
  const src = Buffer.from(ops.buffer, ops.byteOffset, ops.byteLength);
  const out = Buffer.allocUnsafe(length);
  const blocks = blockCount(basis.length, blockSize);
  let written = 0;
  let at = 0;
  while (at < src.length) {
    const op = src[at];
    if (op === OP_COPY) {
      if (at + 9 > src.length) throw new DeltaError("a COPY op is cut short");
      const block = src.readUInt32BE(at + 1);
      const count = src.readUInt32BE(at + 5);
      at += 9;
      if (count === 0 || block + count > blocks) {
        throw new DeltaError(
          `a COPY op names blocks ${block}–${block + count - 1} of a basis with ${blocks}`,
        );
      }
      const from = block * blockSize;
      const to = Math.min(basis.length, (block + count) * blockSize);
      if (written + (to - from) > length) throw new DeltaError(`the ops build more than ${length} bytes`);
      out.set(basis.subarray(from, to), written);
      written += to - from;
    } else if (op === OP_LITERAL) {
      if (at + 5 > src.length) throw new DeltaError("a LITERAL op is cut short");
      const size = src.readUInt32BE(at + 1);
      at += 5;
      if (size === 0 || at + size > src.length) throw new DeltaError("a LITERAL op is empty or cut short");
      if (written + size > length) throw new DeltaError(`the ops build more than ${length} bytes`);
      src.copy(out, written, at, at + size);
      written += size;
      at += size;
    } else {
      throw new DeltaError(`unknown delta op 0x${(op as number).toString(16)}`);
    }
  }
  if (written !== length) throw new DeltaError(`the ops build ${written} bytes, not ${length}`);
  return out;
}
