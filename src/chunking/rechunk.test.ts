// Tests of the guided re-chunking of an edited file: whatever the edit and whatever the guide,
// it gives the chunks and the SHA-256 a full FastCDC pass gives; and it hashes rather than
// cuts where the file kept the old chunks.

import assert from "node:assert/strict";
import { createCipheriv, createHash } from "node:crypto";
import { describe, test } from "node:test";
import fc from "fast-check";
import { ChunkList, type ChunkRef } from "./chunk-list.js";
import { chunkBuffer, sha256 } from "./fastcdc.js";
import { fingerprints } from "./fingerprint.js";
import { type ReadAt, rechunk, usableGuide } from "./rechunk.js";
import { InlineStreamHasher } from "./stream-hasher.js";

/** Deterministic incompressible bytes: AES-128-CTR over zeros, keyed by the seed. */
function randomBytes(seed: number, length: number): Buffer {
  const key = createHash("sha256").update(`keepwatch rechunk test ${seed}`).digest().subarray(0, 16);
  return createCipheriv("aes-128-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

const loaded = await fingerprints();
if (!loaded) throw new Error("these tests need WebAssembly (fingerprints)");
const fingerprint = loaded;

/** The chunks of a full FastCDC pass, with their fingerprints when `marked`. */
function fullPass(data: Buffer, marked = false): ChunkRef[] {
  return chunkBuffer(data).map((c) => ({
    id: sha256(c.data),
    length: c.length,
    ...(marked ? { mark: fingerprint(c.data) } : {}),
  }));
}

/** `refs` as a compact list, with fingerprints when every chunk has one. */
function listOf(refs: ChunkRef[]): ChunkList {
  const marked = refs.length > 0 && refs.every((c) => c.mark !== undefined);
  const list = new ChunkList(refs.length, marked);
  for (const c of refs) list.push(c.id, c.length, marked ? c.mark : undefined);
  return list;
}

/** Reads from `data`, counting the bytes read. */
function reader(data: Buffer): { read: ReadAt; bytesRead: () => number } {
  let total = 0;
  return {
    read: async (buffer, position) => {
      const n = data.copy(buffer, 0, position, Math.min(data.length, position + buffer.length));
      total += n;
      return n;
    },
    bytesRead: () => total,
  };
}

async function guided(data: Buffer, guide: ChunkRef[]) {
  const hasher = new InlineStreamHasher();
  hasher.start();
  const { read, bytesRead } = reader(data);
  const result = await rechunk(read, data.length, listOf(guide), hasher);
  return { result, bytesRead: bytesRead() };
}

/** Same ids and lengths; and every chunk of `actual` has its true fingerprint. */
function assertSameChunks(list: ChunkList, expected: ChunkRef[], data?: Buffer): void {
  const actual = [...list];
  assert.deepEqual(
    actual.map((c) => `${c.id.toString("hex")}:${c.length}`),
    expected.map((c) => `${c.id.toString("hex")}:${c.length}`),
  );
  if (data)
    assert.deepEqual(
      actual.map((c) => c.mark),
      fullPass(data, true).map((c) => c.mark),
    );
}

type Edit =
  | { kind: "flip"; at: number }
  | { kind: "insert"; at: number; length: number; seed: number }
  | { kind: "delete"; at: number; length: number }
  | { kind: "zeros"; at: number; length: number }
  | { kind: "truncate"; at: number }
  | { kind: "append"; length: number; seed: number };

/** Positions are fractions of the file's length (0 … 1_000_000), so they fit any size. */
function applyEdit(data: Buffer, edit: Edit): Buffer {
  const place = (at: number) => Math.floor((data.length * at) / 1_000_000);
  switch (edit.kind) {
    case "flip": {
      const copy = Buffer.from(data);
      const at = Math.min(place(edit.at), data.length - 1);
      if (at >= 0) copy[at] = (copy[at] as number) ^ 0xff;
      return copy;
    }
    case "insert": {
      const at = place(edit.at);
      return Buffer.concat([data.subarray(0, at), randomBytes(edit.seed, edit.length), data.subarray(at)]);
    }
    case "delete": {
      const at = place(edit.at);
      return Buffer.concat([data.subarray(0, at), data.subarray(at + edit.length)]);
    }
    case "zeros": {
      const at = place(edit.at);
      return Buffer.concat([data.subarray(0, at), Buffer.alloc(edit.length), data.subarray(at)]);
    }
    case "truncate":
      return data.subarray(0, place(edit.at));
    case "append":
      return Buffer.concat([data, randomBytes(edit.seed, edit.length)]);
  }
}

const fraction = fc.integer({ min: 0, max: 1_000_000 });
const editArb: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ kind: fc.constant("flip" as const), at: fraction }),
  fc.record({
    kind: fc.constant("insert" as const),
    at: fraction,
    length: fc.integer({ min: 1, max: 300_000 }),
    seed: fc.nat(),
  }),
  fc.record({
    kind: fc.constant("delete" as const),
    at: fraction,
    length: fc.integer({ min: 1, max: 300_000 }),
  }),
  fc.record({
    kind: fc.constant("zeros" as const),
    at: fraction,
    length: fc.integer({ min: 1, max: 700_000 }),
  }),
  fc.record({ kind: fc.constant("truncate" as const), at: fraction }),
  fc.record({
    kind: fc.constant("append" as const),
    length: fc.integer({ min: 1, max: 300_000 }),
    seed: fc.nat(),
  }),
);

describe("rechunk", () => {
  test("gives the chunks and hash of a full pass, for any edits of any file, with or without fingerprints", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.integer({ min: 1, max: 3_000_000 }),
        fc.array(editArb, { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        async (seed, length, edits, marked) => {
          const before = randomBytes(seed, length);
          const after = edits.reduce(applyEdit, before);
          fc.pre(after.length > 0);
          const { result } = await guided(after, fullPass(before, marked));
          assert.ok(result, "the file did not come up short");
          assertSameChunks(result.chunks, fullPass(after), after);
          assert.deepEqual(result.sha256, sha256(after));
        },
      ),
      { numRuns: 60 },
    );
  });

  test("a file with long runs of one byte (many chunks alike) is chunked as a full pass does", async () => {
    const before = Buffer.concat([randomBytes(1, 200_000), Buffer.alloc(2_000_000), randomBytes(2, 300_000)]);
    for (const edit of [
      { kind: "flip", at: 500_000 },
      { kind: "delete", at: 100_000, length: 70_000 },
      { kind: "insert", at: 900_000, length: 5, seed: 3 },
    ] as Edit[]) {
      const after = applyEdit(before, edit);
      const { result } = await guided(after, fullPass(before));
      assert.ok(result);
      assertSameChunks(result.chunks, fullPass(after));
    }
  });

  test("a guide that does not fit the file (another file's chunks, made-up hashes) costs time, not correctness", async () => {
    const data = randomBytes(7, 1_500_000);
    const others = [
      fullPass(randomBytes(8, 1_200_000)),
      fullPass(data).map((c) => ({ id: Buffer.alloc(32, 1), length: c.length })),
      [{ id: Buffer.alloc(32), length: 1 }],
    ];
    for (const guide of others) {
      const { result } = await guided(data, guide);
      assert.ok(result);
      assertSameChunks(result.chunks, fullPass(data));
      assert.deepEqual(result.sha256, sha256(data));
    }
  });

  test("where the old chunks are still there, they are hashed, not searched for cuts", async () => {
    const before = randomBytes(31, 3_000_000);
    const cases: [Edit, number][] = [
      // The changed chunk, and the next one when the flip moved a cut.
      [{ kind: "flip", at: 500_000 }, 2 * 256 * 1024],
      // The chunk that took the insertion, up to the first old chunk after it.
      [{ kind: "insert", at: 0, length: 100, seed: 32 }, 2 * 256 * 1024],
      [{ kind: "delete", at: 700_000, length: 1000 }, 2 * 256 * 1024],
    ];
    for (const [edit, most] of cases) {
      const { result } = await guided(applyEdit(before, edit), fullPass(before));
      assert.ok(result);
      assert.ok(result.searchedBytes <= most, `${edit.kind}: ${result.searchedBytes} bytes searched`);
    }
    const unguided = await guided(before, fullPass(randomBytes(33, 3_000_000)));
    assert.equal(unguided.result?.searchedBytes, before.length);
  });

  test("each byte is read once, in order, whatever the edit", async () => {
    const before = randomBytes(11, 2_500_000);
    const after = applyEdit(before, { kind: "insert", at: 0, length: 100, seed: 12 });
    const { result, bytesRead } = await guided(after, fullPass(before));
    assert.ok(result);
    assert.equal(bytesRead, after.length);
  });

  test("a file shorter than its size said gives null", async () => {
    const before = randomBytes(21, 1_000_000);
    const after = applyEdit(before, { kind: "flip", at: 500_000 });
    const hasher = new InlineStreamHasher();
    hasher.start();
    const short = after.subarray(0, 600_000);
    const result = await rechunk(reader(short).read, after.length, listOf(fullPass(before)), hasher);
    assert.equal(result, null);
  });

  test("with fingerprints, a chunk that kept its old fingerprint is taken for the old chunk, unhashed", async () => {
    const before = randomBytes(41, 2_000_000);
    const guide = fullPass(before, true);
    assert.ok(guide.length > 4);
    // Unchanged bytes, an id the guide made up: only a chunk whose SHA-256 was skipped keeps it.
    const madeUp = Buffer.alloc(32, 9);
    const withMadeUpId = guide.map((c, i) => (i === 2 ? { ...c, id: madeUp } : c));
    const same = await guided(before, withMadeUpId);
    assert.ok(same.result);
    assert.deepEqual(same.result.chunks.id(2), madeUp);
    // Without fingerprints, the same guide is checked by SHA-256 and the true id found.
    const unmarked = withMadeUpId.map(({ id, length }) => ({ id, length }));
    const checked = await guided(before, unmarked);
    assert.ok(checked.result);
    assertSameChunks(checked.result.chunks, fullPass(before), before);
    // A fingerprint that lies (the changed chunk's new bytes, as a collision would give):
    // the old id is taken, but the file's SHA-256 is the true one, which the server checks.
    const start = guide.slice(0, 3).reduce((sum, c) => sum + c.length, 0);
    const after = applyEdit(before, {
      kind: "flip",
      at: Math.floor(((start + 10) * 1_000_000) / before.length),
    });
    assert.notDeepEqual(
      after.subarray(start, start + (guide[3] as ChunkRef).length),
      before.subarray(start, start + (guide[3] as ChunkRef).length),
    );
    const lie = guide.map((c, i) =>
      i === 3 ? { ...c, mark: fingerprint(after.subarray(start, start + c.length)) } : c,
    );
    const lied = await guided(after, lie);
    assert.ok(lied.result);
    assert.deepEqual(lied.result.chunks.id(3), guide[3]?.id);
    assert.deepEqual(lied.result.sha256, sha256(after));
  });

  test("only a list FastCDC could have cut guides", () => {
    // (A list holds 32-byte ids only: ChunkList refuses others.)
    assert.equal(usableGuide(listOf([])), false);
    assert.equal(usableGuide(listOf([{ id: Buffer.alloc(32), length: 300 * 1024 }])), false);
    assert.equal(usableGuide(listOf([{ id: Buffer.alloc(32), length: 0 }])), false);
    assert.equal(usableGuide(listOf([{ id: Buffer.alloc(32), length: 1000 }])), true);
  });
});
