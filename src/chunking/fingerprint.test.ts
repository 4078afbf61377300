// Tests of chunk fingerprints: the XXH64 reference values (their stored form: chunk-list.test.ts).

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { fingerprints } from "./fingerprint.js";

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
});
