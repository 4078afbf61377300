import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";
import { Chunker } from "./fastcdc.js";
import { InlineStreamHasher, type StreamHasher, WorkerStreamHasher } from "./stream-hasher.js";

function sha(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** `bytes` in the hasher's own memory, as the client reads them: it may hand them to its thread. */
function pieceOf(hasher: StreamHasher, bytes: Buffer): Buffer {
  const piece = hasher.pieceBuffer(bytes.length);
  bytes.copy(piece);
  return piece;
}

/** Feed `data` in pieces of `pieceSize` through a chunker and `hasher`, as the client does. */
async function hashStream(hasher: StreamHasher, data: Buffer, pieceSize: number) {
  hasher.start();
  const chunker = new Chunker();
  const expected: string[] = [];
  for (let at = 0; at < data.length; at += pieceSize) {
    const piece = pieceOf(hasher, data.subarray(at, at + pieceSize));
    const cutEnds: number[] = [];
    for (const chunk of chunker.push(piece)) {
      expected.push(sha(data.subarray(chunk.offset, chunk.offset + chunk.length)));
      cutEnds.push(chunk.offset + chunk.length);
    }
    await hasher.push(piece, cutEnds);
  }
  const last = chunker.finish();
  if (last) expected.push(sha(last.data));
  const got = await hasher.finish(data.length);
  return {
    expected,
    got: (got.chunkIds.toString("hex").match(/.{64}/g) ?? []) as string[],
    sha256: got.sha256.toString("hex"),
  };
}

for (const [name, make] of [
  ["on a worker thread", () => new WorkerStreamHasher()],
  ["on this thread", () => new InlineStreamHasher()],
] as const) {
  test(`stream and chunk hashes ${name} equal hashing each chunk and the whole`, async () => {
    const hasher = make();
    try {
      for (const [size, pieceSize] of [
        [5 * 1024 * 1024 + 17, 1024 * 1024],
        [300 * 1024, 7000],
        [1, 1],
        [0, 1024],
      ] as const) {
        const data = randomBytes(size);
        const { expected, got, sha256 } = await hashStream(hasher, data, pieceSize);
        assert.deepEqual(got, expected, `chunk ids of ${size} bytes in pieces of ${pieceSize}`);
        assert.equal(sha256, sha(data), `the whole of ${size} bytes`);
      }
      // A stream given up half way does not leak into the next one.
      hasher.start();
      await hasher.push(pieceOf(hasher, randomBytes(4096)), []);
      const data = randomBytes(200 * 1024);
      const again = await hashStream(hasher, data, 64 * 1024);
      assert.deepEqual(again.got, again.expected);
      assert.equal(again.sha256, sha(data));
      await assert.rejects(
        (async () => {
          hasher.start();
          await hasher.push(pieceOf(hasher, randomBytes(10)), []);
          await hasher.finish(11);
        })(),
        /ends at 11/,
        "an end that is not where the bytes ended is refused",
      );
    } finally {
      await hasher.close();
    }
  });
}
