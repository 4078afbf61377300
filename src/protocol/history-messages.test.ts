import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { MAX_TIME_MS } from "./fields.js";
import { decodeHistory, type Entry, encodeHistory, type ManifestOp } from "./history-messages.js";

const sha = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a));
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const path = fc.string({ minLength: 1, maxLength: 40 }).filter((s) => !/[\uD800-\uDFFF]/.test(s));
const header = fc
  .record({
    path,
    size: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
    mtimeMs: fc.double({ noNaN: true, noDefaultInfinity: true, min: -MAX_TIME_MS, max: MAX_TIME_MS }),
    mode: u32,
    sha256: sha,
  })
  .map((h) => ({ ...h }));
// fast-check builds records without a prototype; the decoder returns plain objects.
const op: fc.Arbitrary<ManifestOp> = fc
  .oneof(
    fc.record({
      op: fc.constant("copy" as const),
      start: u32,
      count: fc.integer({ min: 1, max: 0xffffffff }),
    }),
    fc.record({ op: fc.constant("new" as const), length: u32, id: sha }),
  )
  .map((o): ManifestOp => ({ ...o }));

describe("history messages", () => {
  test("PUT_REF, MANIFEST_BEGIN, and (version 5) MANIFEST_STREAM and MANIFEST_CLOSE round-trip", () => {
    fc.assert(
      fc.property(
        header,
        fc.boolean(),
        fc.integer({ min: 0, max: 4 * 1024 * 1024 }),
        sha,
        (h, withBase, n, base) => {
          assert.deepEqual(decodeHistory.putRef(encodeHistory.putRef(h)), h);
          const baseField = withBase ? base : Buffer.alloc(0);
          const m = { ...h, base: baseField, chunkCount: n };
          assert.deepEqual(decodeHistory.manifestBegin(encodeHistory.manifestBegin(m)), m);
          const { sha256, ...rest } = h;
          const stream = { ...rest, base: baseField, maxChunks: n };
          assert.deepEqual(decodeHistory.manifestStream(encodeHistory.manifestStream(stream)), stream);
          const close = { sha256, chunkCount: n };
          assert.deepEqual(decodeHistory.manifestClose(encodeHistory.manifestClose(close)), close);
        },
      ),
    );
  });

  test("malformed MANIFEST_STREAM and MANIFEST_CLOSE payloads are refused", () => {
    const stream = { path: "a", size: 1, mtimeMs: 0, mode: 0, base: Buffer.alloc(0), maxChunks: 1 };
    const bad = [
      encodeHistory.manifestStream({ ...stream, maxChunks: 4 * 1024 * 1024 + 1 }),
      encodeHistory.manifestStream({ ...stream, base: Buffer.alloc(31) }),
    ];
    for (const payload of bad)
      assert.throws(() => decodeHistory.manifestStream(payload), { code: "KW_BAD_MESSAGE" });
    const shortSha = encodeHistory.manifestClose({ sha256: Buffer.alloc(31), chunkCount: 1 });
    assert.throws(() => decodeHistory.manifestClose(shortSha), { code: "KW_BAD_MESSAGE" });
    const trailing = Buffer.concat([
      encodeHistory.manifestClose({ sha256: Buffer.alloc(32), chunkCount: 1 }),
      Buffer.from([0]),
    ]);
    assert.throws(() => decodeHistory.manifestClose(trailing), { code: "KW_BAD_MESSAGE" });
  });

  test("manifest ops round-trip, packed into frames without splitting an op", () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), fc.integer({ min: 37, max: 2000 }), (ops, maxPayload) => {
        const payloads = encodeHistory.manifestData(ops, maxPayload);
        for (const p of payloads) assert.ok(p.length <= maxPayload);
        assert.deepEqual(payloads.flatMap(decodeHistory.manifestData), ops);
      }),
    );
  });

  test("bad manifests are refused", () => {
    assert.throws(() => decodeHistory.manifestData(Buffer.from([3, 0, 0])), { code: "KW_BAD_MESSAGE" });
    assert.throws(() => decodeHistory.manifestData(Buffer.from([1, 0, 0, 0, 0])), { code: "KW_BAD_MESSAGE" });
    const zeroCopy = encodeHistory.manifestData([{ op: "copy", start: 0, count: 1 }], 100)[0] as Buffer;
    zeroCopy.writeUInt32BE(0, 5);
    assert.throws(() => decodeHistory.manifestData(zeroCopy), { code: "KW_BAD_MESSAGE" });
    const begin = encodeHistory.manifestBegin({
      path: "a",
      size: 1,
      mtimeMs: 0,
      mode: 0,
      sha256: Buffer.alloc(32),
      base: Buffer.alloc(0),
      chunkCount: 4 * 1024 * 1024 + 1,
    });
    assert.throws(() => decodeHistory.manifestBegin(begin), { code: "KW_BAD_MESSAGE" });
  });

  test("NEED, CHUNK (in parts cut anywhere), LIST, ENTRY and RESTORE round-trip", () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.array(fc.tuple(u32, u32), { maxLength: 50 }),
        fc.uint8Array({ maxLength: 300 }),
        u32,
        path,
        fc.array(fc.nat(), { maxLength: 6 }),
        (last, ranges, data, index, p, cuts) => {
          assert.deepEqual(decodeHistory.need(encodeHistory.need({ last, ranges })), { last, ranges });
          // The payload in the pieces it may arrive in, cut anywhere (inside the index too).
          const payload = encodeHistory.chunk(index, Buffer.from(data));
          const points = [...new Set(cuts.map((c) => c % (payload.length + 1)))].sort((a, b) => a - b);
          const pieces = [0, ...points, payload.length]
            .slice(1)
            .map((end, i, ends) => payload.subarray(i === 0 ? 0 : (ends[i - 1] as number), end));
          const chunk = decodeHistory.chunk(pieces);
          assert.equal(chunk.index, index);
          assert.deepEqual(Buffer.concat(chunk.data), Buffer.from(data));
          assert.ok(chunk.data.every((part) => part.length > 0));
          for (const mode of [0, 1] as const) {
            assert.deepEqual(decodeHistory.list(encodeHistory.list({ path: p, time: -1, mode })), {
              path: p,
              time: -1,
              mode,
            });
          }
          assert.deepEqual(decodeHistory.restore(encodeHistory.restore({ path: p, time: 123.5 })), {
            path: p,
            time: 123.5,
          });
        },
      ),
    );
    const entry: Entry = {
      path: "dir/ü.txt",
      kind: "file",
      size: 5,
      mtimeMs: 1.5,
      mode: 0o644,
      sha256: Buffer.alloc(32, 7),
      versionId: 42,
      time: 1_700_000_000_000,
    };
    assert.deepEqual(decodeHistory.entry(encodeHistory.entry(entry)), entry);
    const deleted: Entry = { ...entry, kind: "deleted", sha256: Buffer.alloc(0), size: 0 };
    assert.deepEqual(decodeHistory.entry(encodeHistory.entry(deleted)), deleted);
    const bad = encodeHistory.entry(entry);
    bad.writeUInt8(9, 4 + Buffer.byteLength(entry.path));
    assert.throws(() => decodeHistory.entry(bad), { code: "KW_BAD_MESSAGE" });
  });
});

describe("BASIS and CHUNK_DELTA (version 4)", () => {
  test("BASIS round-trips, and one whose checksums do not fit its sizes is refused", () => {
    const sums = Buffer.alloc(3 * 12, 7);
    const basis = { index: 5, blockSize: 1024, length: 2500, sums };
    assert.deepEqual(decodeHistory.basis(encodeHistory.basis(basis)), basis);
    const bad = [
      { ...basis, sums: Buffer.alloc(2 * 12) }, // 3 blocks of 2,500 bytes, 2 sums
      { ...basis, blockSize: 63 },
      { ...basis, blockSize: 65 * 1024, sums: Buffer.alloc(12) },
      { ...basis, length: 0, sums: Buffer.alloc(0) },
    ];
    for (const m of bad) {
      assert.throws(() => decodeHistory.basis(encodeHistory.basis(m)), /BASIS message is malformed/);
    }
    assert.throws(() => decodeHistory.basis(Buffer.alloc(5)));
  });

  test("CHUNK_DELTA carries its index and ops; shorter than an index is refused", () => {
    const ops = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert.deepEqual(decodeHistory.chunkDelta(encodeHistory.chunkDelta(9, ops)), { index: 9, ops });
    assert.throws(() => decodeHistory.chunkDelta(Buffer.alloc(3)), /shorter than its index/);
  });

  test("a CHUNK shorter than its index is refused, in however many parts", () => {
    for (const parts of [
      [],
      [Buffer.alloc(0)],
      [Buffer.alloc(3)],
      [Buffer.alloc(1), Buffer.alloc(0), Buffer.alloc(2)],
    ]) {
      assert.throws(() => decodeHistory.chunk(parts), {
        code: "KW_BAD_MESSAGE",
        message: /shorter than its index/,
      });
    }
    assert.deepEqual(decodeHistory.chunk([Buffer.from([0, 0]), Buffer.from([1, 2])]), {
      index: 258,
      data: [],
    });
  });
});
