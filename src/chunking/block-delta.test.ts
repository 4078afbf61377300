// Tests of the delta inside a chunk: any target is rebuilt exactly from any basis, a small
// change costs about a block, and malformed ops are refused with DeltaError (never another
// exception, never a buffer of the wrong size).

import assert from "node:assert/strict";
import { createCipheriv, createHash } from "node:crypto";
import { describe, test } from "node:test";
import fc from "fast-check";
import {
  applyDelta,
  blockSums,
  copyOp,
  DELTA_BLOCK_BYTES,
  DeltaError,
  deltaOps,
  literalHead,
  SUM_BYTES,
} from "./block-delta.js";

function randomBytes(seed: number, length: number): Buffer {
  const key = createHash("sha256").update(`keepwatch block delta test ${seed}`).digest().subarray(0, 16);
  return createCipheriv("aes-128-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

function roundTrip(basis: Buffer, target: Buffer, blockSize = DELTA_BLOCK_BYTES): Buffer {
  const sums = blockSums(basis, blockSize);
  const ops = deltaOps(target, sums);
  assert.deepEqual(applyDelta(basis, blockSize, ops, target.length), target);
  return ops;
}

describe("block delta", () => {
  test("rebuilds any target from any basis", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 5000 }),
        fc.uint8Array({ maxLength: 5000 }),
        fc.integer({ min: 1, max: 300 }),
        (basis, target, blockSize) => {
          roundTrip(Buffer.from(basis), Buffer.from(target), blockSize);
        },
      ),
      { numRuns: 300 },
    );
  });

  test("rebuilds edited chunks, and a small edit costs about a block", () => {
    fc.assert(
      fc.property(
        fc.nat(),
        fc.integer({ min: 16 * 1024, max: 256 * 1024 }),
        fc.integer({ min: 0, max: 1_000_000 }),
        fc.integer({ min: 0, max: 100 }),
        fc.integer({ min: 0, max: 100 }),
        (seed, length, where, removed, inserted) => {
          const basis = randomBytes(seed, length);
          const at = Math.floor((length * where) / 1_000_000);
          const target = Buffer.concat([
            basis.subarray(0, at),
            randomBytes(seed + 1, inserted),
            basis.subarray(at + removed),
          ]);
          const ops = roundTrip(basis, target);
          // Two blocks of literal bytes at most around the edit, one COPY on each side.
          assert.ok(ops.length <= 2 * DELTA_BLOCK_BYTES + inserted + 40, `${ops.length} bytes of ops`);
        },
      ),
      { numRuns: 60 },
    );
  });

  test("a one-byte flip in a 64 KiB chunk: checksums and ops are under 2 KiB together", () => {
    const basis = randomBytes(5, 64 * 1024);
    const target = Buffer.from(basis);
    target[30_000] = (target[30_000] as number) ^ 1;
    const sums = blockSums(basis);
    const ops = roundTrip(basis, target);
    assert.equal(sums.sums.length, 64 * SUM_BYTES);
    assert.ok(sums.sums.length + ops.length < 2048, `${sums.sums.length} + ${ops.length} bytes`);
  });

  test("blocks that moved or repeat are found", () => {
    const a = randomBytes(6, 4096);
    const b = randomBytes(7, 4096);
    const basis = Buffer.concat([a, b]);
    const ops = roundTrip(basis, Buffer.concat([b, a, a, b]));
    assert.ok(ops.length < 100, `${ops.length} bytes of ops`);
    roundTrip(Buffer.alloc(10_000), Buffer.alloc(20_000));
  });

  test("malformed ops are refused with DeltaError, and nothing else comes out", () => {
    const basis = randomBytes(8, 5000);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.integer({ min: 0, max: 6000 }), (ops, length) => {
        try {
          const out = applyDelta(basis, 1024, ops, length);
          assert.equal(out.length, length);
        } catch (error) {
          assert.ok(error instanceof DeltaError, String(error));
        }
      }),
      { numRuns: 2000 },
    );
    assert.throws(() => applyDelta(basis, 1024, copyOp(4, 2), 2000), DeltaError); // past the basis
    assert.throws(() => applyDelta(basis, 1024, copyOp(0, 0), 0), DeltaError); // empty run
    assert.throws(() => applyDelta(basis, 1024, copyOp(0, 2), 1000), DeltaError); // more than length
    assert.throws(() => applyDelta(basis, 1024, copyOp(0, 1), 2000), DeltaError); // less than length
    assert.throws(() => applyDelta(basis, 1024, copyOp(0, 1).subarray(0, 5), 1024), DeltaError); // cut short
    assert.throws(
      () => applyDelta(basis, 1024, Buffer.concat([literalHead(9), Buffer.from([1])]), 9),
      DeltaError,
    );
    assert.throws(() => applyDelta(basis, 1024, Buffer.from([7]), 1), DeltaError);
    assert.throws(() => applyDelta(basis, 1024, copyOp(0xffffffff, 2), 2048), DeltaError); // overflow
  });
});
