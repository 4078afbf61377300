// Tests of chunk fingerprints: the XXH64 reference values, and their stored form.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { decodeMarks, encodeMarks, fingerprints, MARK_BYTES } from "./fingerprint.js";

describe("fingerprints", () => {
  test("are XXH64 with seed 0 (the reference values)", async () => {
    const fingerprint = await fingerprints();
    assert.ok(fingerprint, "WebAssembly runs here");
    assert.equal(fingerprint(new Uint8Array(0)), 0xef46db3751d8e999n);
    assert.equal(fingerprint(Buffer.from("a")), 0xd24ec4f1a98c6e5bn);
    assert.equal(fingerprint(Buffer.from("abc")), 0x44bc2cf5ad770999n);
  });

  test("take the bytes of a view, not of the buffer under it", async () => {
    const fingerprint = await fingerprints();
    assert.ok(fingerprint, "WebAssembly runs here");
    const whole = Buffer.from("xxabcxx");
    assert.equal(fingerprint(whole.subarray(2, 5)), fingerprint(Buffer.from("abc")));
  });

  test("are stored 8 bytes each and read back as they were", () => {
    fc.assert(
      fc.property(fc.array(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), { maxLength: 50 }), (marks) => {
        const raw = encodeMarks(marks);
        assert.equal(raw.length, marks.length * MARK_BYTES);
        assert.deepEqual(decodeMarks(raw, marks.length), marks.length === 0 ? null : marks);
      }),
    );
  });

  test("that do not fit the chunk list are not used", () => {
    const raw = encodeMarks([1n, 2n, 3n]);
    assert.equal(decodeMarks(raw, 2), null);
    assert.equal(decodeMarks(raw, 4), null);
    assert.equal(decodeMarks(raw.subarray(0, 23), 3), null);
    assert.equal(decodeMarks(null, 3), null);
  });
});
