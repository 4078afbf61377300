import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { ChunkCodecContext, SAMPLE_FROM } from "./chunk-codec.js";
import { ChunkCodec } from "./pack-format.js";

function text(length: number): Buffer {
  const words = "the quick brown fox jumps over a lazy dog while keepwatch backs up every file ";
  return Buffer.from(words.repeat(Math.ceil(length / words.length)).slice(0, length));
}

function roundTrip(codec: ChunkCodecContext, data: Buffer): number {
  const target = Buffer.alloc(ChunkCodecContext.bound(data.length));
  const encoded = codec.encode(data, target, 0);
  const stored = target.subarray(0, encoded.storedLength);
  assert.deepEqual(codec.decode(encoded.codec, stored, data.length), data);
  return encoded.codec;
}

test("a chunk's sample decides whether the whole is compressed; every chunk reads back", () => {
  const codec = new ChunkCodecContext();
  assert.equal(roundTrip(codec, text(64 * 1024)), ChunkCodec.zstd, "text is compressed");
  assert.equal(roundTrip(codec, randomBytes(64 * 1024)), ChunkCodec.raw, "random bytes are kept raw");
  // Text with random bytes where the sample is taken: kept raw without trying the whole
  // (the price of not compressing every incompressible chunk in full).
  const size = 64 * 1024;
  const disguised = text(size);
  randomBytes(1024).copy(disguised, 0);
  randomBytes(1024).copy(disguised, Math.floor((size - 1024) / 2));
  randomBytes(1024).copy(disguised, size - 1024);
  assert.equal(roundTrip(codec, disguised), ChunkCodec.raw);
  // Below SAMPLE_FROM the whole chunk is always tried.
  const small = text(SAMPLE_FROM - 1);
  randomBytes(1024).copy(small, 0);
  assert.equal(roundTrip(codec, small), ChunkCodec.zstd);
});
