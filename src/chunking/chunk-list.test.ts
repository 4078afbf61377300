import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ChunkList, ENTRY_BYTES, MARK_BYTES } from "./chunk-list.js";

// Tests of the compact chunk list both sides keep: what goes in comes out, in its stored
// form too, and where each id first occurs, found by the hash index and by sorting alike.

/** Ids drawn from a small pool, so that repeats are common. */
const chunks = fc.array(fc.record({ pick: fc.nat({ max: 20 }), length: fc.nat({ max: 0xffffffff }) }), {
  maxLength: 300,
});

function idOf(pick: number): Buffer {
  const id = Buffer.alloc(32);
  id.writeUInt32BE((pick * 2654435761) >>> 0, 0);
  id[31] = pick;
  return id;
}

describe("ChunkList", () => {
  it("gives back what was pushed, in order, whatever capacity it was told to expect", () => {
    fc.assert(
      fc.property(chunks, fc.nat({ max: 400 }), (items, expected) => {
        const list = new ChunkList(expected);
        for (const item of items) list.push(idOf(item.pick), item.length);
        assert.equal(list.length, items.length);
        const back = [...list].map((ref) => ({
          id: Buffer.from(ref.id).toString("hex"),
          length: ref.length,
        }));
        assert.deepEqual(
          back,
          items.map((item) => ({ id: idOf(item.pick).toString("hex"), length: item.length })),
        );
      }),
    );
  });

  it("marks exactly the first occurrence of each id", () => {
    fc.assert(
      fc.property(chunks, (items) => {
        const list = new ChunkList(items.length);
        for (const item of items) list.push(idOf(item.pick), item.length);
        const seen = new Set<number>();
        const expected = items.map((item) => {
          const first = !seen.has(item.pick);
          seen.add(item.pick);
          return first ? 1 : 0;
        });
        assert.deepEqual([...list.firstOccurrences()], expected);
      }),
    );
  });

  it("refuses ids of the wrong size and indices out of range, and is empty after clear", () => {
    const list = new ChunkList(2);
    assert.throws(() => list.push(Buffer.alloc(31), 1));
    list.push(idOf(1), 5);
    assert.throws(() => list.at(1), RangeError);
    assert.throws(() => list.at(-1), RangeError);
    list.clear();
    assert.equal(list.length, 0);
    assert.deepEqual([...list], []);
  });

  it("finds the first index of each id through its index, and −1 for ids it lacks", () => {
    fc.assert(
      fc.property(chunks, fc.nat({ max: 40 }), (items, probe) => {
        const list = new ChunkList();
        for (const item of items) list.push(idOf(item.pick), item.length);
        const expected = items.findIndex((item) => item.pick === probe);
        assert.equal(list.indexOf(idOf(probe)), expected);
        // Pushing after a lookup drops the index: it is made again with the new chunk.
        list.push(idOf(probe), 1);
        assert.equal(list.indexOf(idOf(probe)), expected >= 0 ? expected : items.length);
        const first = list.firstOccurrences();
        for (let i = 0; i < list.length; i++) assert.equal(first[i] === 1, list.indexOf(list.id(i)) === i);
      }),
    );
  });

  it("finds ids whose first four bytes are alike (they share a slot)", () => {
    const list = new ChunkList();
    const ids = [1, 2, 3, 4, 5].map((n) =>
      Buffer.concat([Buffer.from([9, 9, 9, 9]), Buffer.alloc(27), Buffer.from([n])]),
    );
    for (const id of ids) list.push(id, 10);
    ids.forEach((id, i) => {
      assert.equal(list.indexOf(id), i);
    });
    assert.equal(list.indexOf(Buffer.concat([Buffer.from([9, 9, 9, 9]), Buffer.alloc(28)])), -1);
    assert.equal(list.indexOf(Buffer.alloc(31)), -1);
  });

  it("keeps fingerprints beside the ids, and is stored and read back as it was", () => {
    const marked = fc.array(
      fc.record({
        pick: fc.nat({ max: 20 }),
        length: fc.nat({ max: 0xffffffff }),
        mark: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      }),
      { maxLength: 200 },
    );
    fc.assert(
      fc.property(marked, fc.nat({ max: 300 }), (items, expected) => {
        const list = new ChunkList(expected, true);
        for (const item of items) list.push(idOf(item.pick), item.length, item.mark);
        assert.equal(list.stored().length, items.length * ENTRY_BYTES);
        const marks = list.storedMarks();
        assert.equal(marks?.length ?? 0, items.length * MARK_BYTES);
        const back = ChunkList.fromStored(Buffer.from(list.stored()), marks && Buffer.from(marks));
        assert.equal(back.hasMarks, items.length > 0);
        assert.deepEqual(
          [...back].map((ref) => [ref.id.toString("hex"), ref.length, ref.mark]),
          items.map((item) => [idOf(item.pick).toString("hex"), item.length, item.mark]),
        );
      }),
    );
  });

  it("drops stored fingerprints that do not fit the list, and refuses a torn list", () => {
    const list = new ChunkList(4, true);
    for (const pick of [1, 2, 3]) list.push(idOf(pick), pick, BigInt(pick));
    const marks = list.storedMarks() as Buffer;
    assert.equal(ChunkList.fromStored(list.stored(), marks).markOf(2), 3n);
    assert.equal(ChunkList.fromStored(list.stored(), marks.subarray(0, 16)).hasMarks, false);
    assert.equal(ChunkList.fromStored(list.stored(), null).markOf(0), undefined);
    assert.throws(() => ChunkList.fromStored(list.stored().subarray(0, 50)), RangeError);
    assert.throws(() => list.push(idOf(4), 4), /fingerprint/);
    assert.throws(() => new ChunkList().push(idOf(4), 4, 4n), /no fingerprints/);
  });

  it("takes every id at once for a list cut before its ids were known, and refuses a count that differs", () => {
    const list = new ChunkList(4, true);
    for (const pick of [1, 2, 3]) list.push(Buffer.alloc(32), pick * 10, BigInt(pick));
    assert.equal(list.indexOf(Buffer.alloc(32)), 0);
    list.setIds(Buffer.concat([idOf(7), idOf(8), idOf(7)]));
    assert.deepEqual(
      [...list].map((ref) => [ref.id.toString("hex"), ref.length, ref.mark]),
      [
        [idOf(7).toString("hex"), 10, 1n],
        [idOf(8).toString("hex"), 20, 2n],
        [idOf(7).toString("hex"), 30, 3n],
      ],
    );
    assert.equal(list.indexOf(Buffer.alloc(32)), -1, "the index made before is dropped");
    assert.equal(list.indexOf(idOf(8)), 1);
    assert.throws(() => list.setIds(Buffer.alloc(64)), RangeError);
  });

  it("holds about 44 bytes a chunk with fingerprints, 8 more once looked up in", () => {
    const count = 100_000;
    const list = new ChunkList(count, true);
    const id = Buffer.alloc(32);
    for (let i = 0; i < count; i++) {
      id.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, 0);
      id.writeUInt32LE(i, 4);
      list.push(id, 70_000, BigInt(i));
    }
    assert.equal(list.heldBytes, count * (ENTRY_BYTES + MARK_BYTES));
    assert.equal(list.indexOf(list.id(count - 1)), count - 1);
    assert.ok(list.heldBytes <= count * (ENTRY_BYTES + MARK_BYTES + 11), `${list.heldBytes} bytes`);
    assert.deepEqual([...list.offsets().subarray(0, 3)], [0, 70_000, 140_000]);
  });
});
