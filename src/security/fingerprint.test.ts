import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import { fingerprintOf, parseFingerprint } from "./fingerprint.js";

describe("fingerprints", () => {
  it("are SHA-256 of the certificate in unpadded base64 after SHA256:", () => {
    const der = Buffer.from("not really a certificate");
    const expected = createHash("sha256").update(der).digest("base64").replace(/=+$/, "");
    assert.equal(fingerprintOf(der), `SHA256:${expected}`);
  });

  it("parse back to themselves, with or without the prefix and around spaces", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const fp = fingerprintOf(Buffer.from(bytes));
        assert.equal(parseFingerprint(fp), fp);
        assert.equal(parseFingerprint(` ${fp.slice("SHA256:".length)}\n`), fp);
      }),
    );
  });

  it("refuse what is not one", () => {
    for (const text of [
      "",
      "SHA256:",
      "SHA256:abc",
      "MD5:aa:bb",
      `SHA256:${"A".repeat(44)}`,
      `${"!".repeat(43)}`,
    ]) {
      assert.equal(parseFingerprint(text), null, JSON.stringify(text));
    }
  });
});
