// The gear table of keepwatch's FastCDC chunker: one pseudo-random 32-bit value per byte
// value, added into the rolling hash for every byte scanned.
//
// THE TABLE IS PART OF THE STORAGE FORMAT. Every chunk boundary, and so every chunk id in
// every store and every manifest, depends on it: changing one bit of one entry (or the
// seed, or the way entries are derived) moves boundaries, so the next backup of every
// file would share almost no chunks with the history. `gear.test.ts` pins the table by
// its SHA-256; never "fix" that test, add a new table version next to this one instead.
//
// Derivation (reproducible in any language, no code from other chunkers involved):
//   entry[i] = the first 4 bytes of SHA-256(GEAR_SEED as UTF-8 ‖ the single byte i),
//              read big-endian as a two's-complement 32-bit integer, for i = 0…255.

import { createHash } from "node:crypto";

/** The fixed string every gear entry is derived from (version 1 of the table). */
export const GEAR_SEED = "keepwatch/fastcdc/gear/v1";

function deriveTable(): Int32Array {
  const seed = Buffer.from(GEAR_SEED, "utf8");
  const table = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    table[i] = createHash("sha256").update(seed).update(Uint8Array.of(i)).digest().readInt32BE(0);
  }
  return table;
}

const TABLE = deriveTable();

/** A fresh copy of the 256-entry gear table (int32 values; callers may keep or change it). */
export function gearTable(): Int32Array {
  return TABLE.slice();
}
