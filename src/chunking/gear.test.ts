// The gear table is part of the storage format: these tests pin it, so that any change to
// the seed, the derivation or the table's use fails here before it moves every boundary.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { GEAR_SEED, gearTable } from "./gear.js";

/** The table as 1,024 bytes, each entry little-endian (independent of the machine's byte order). */
function tableBytes(table: Int32Array): Buffer {
  const out = Buffer.alloc(table.length * 4);
  table.forEach((value, i) => {
    out.writeInt32LE(value, i * 4);
  });
  return out;
}

test("the gear table is pinned: 256 entries with this SHA-256 (changing it changes every boundary)", () => {
  const table = gearTable();
  assert.equal(table.length, 256);
  assert.equal(GEAR_SEED, "keepwatch/fastcdc/gear/v1");
  assert.equal(
    createHash("sha256").update(tableBytes(table)).digest("hex"),
    "2a0f6680f20c020f8d698097cb620184b41a1e7f1d788a5ce177748e16518549",
  );
  assert.equal(table[0], 1944169128);
  assert.equal(table[255], 1395759586);
});

test("every entry is derived as documented: SHA-256(seed ‖ byte i), first 4 bytes big-endian", () => {
  const table = gearTable();
  for (let i = 0; i < 256; i++) {
    const digest = createHash("sha256")
      .update(Buffer.concat([Buffer.from(GEAR_SEED, "utf8"), Buffer.of(i)]))
      .digest();
    assert.equal(table[i], digest.readInt32BE(0), `entry ${i}`);
  }
});

test("the entries are distinct and their bits balanced, as a random table's would be", () => {
  const table = gearTable();
  assert.equal(new Set(table).size, 256);
  // Each of the 32 bit positions is set in about half the entries: 128 ± 4.5 standard
  // deviations (8 each) covers a random table; a broken derivation (zeros, a counter) fails.
  for (let bit = 0; bit < 32; bit++) {
    let ones = 0;
    for (const value of table) ones += (value >>> bit) & 1;
    assert.ok(ones > 92 && ones < 164, `bit ${bit} is set in ${ones} of 256 entries`);
  }
});

test("gearTable returns a copy: changing it does not change the chunker's table", () => {
  const a = gearTable();
  a[0] = 0;
  a[1] = 0;
  const b = gearTable();
  assert.notEqual(b[0], 0);
  assert.notEqual(b[1], 0);
});
