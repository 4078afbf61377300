import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ChunkList } from "./chunk-list.js";

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
});
