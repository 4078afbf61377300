import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { Fifo } from "./fifo.js";

test("a queue of 300,000 entries gives them back in order", () => {
  const fifo = new Fifo<number>();
  const items = Array.from({ length: 300_000 }, (_, i) => i);
  fifo.pushAll(items);
  assert.equal(fifo.length, 300_000);
  for (let i = 0; i < 300_000; i++) assert.equal(fifo.shift(), i);
  assert.equal(fifo.length, 0);
  assert.equal(fifo.shift(), undefined);
});

test("pushes and shifts in any order behave as an array's", () => {
  const step = fc.oneof(
    fc.record({ push: fc.array(fc.integer(), { maxLength: 3000 }) }),
    fc.record({ shift: fc.integer({ min: 1, max: 3000 }) }),
    fc.constant({ clear: true }),
  );
  fc.assert(
    fc.property(fc.array(step, { maxLength: 30 }), (steps) => {
      const fifo = new Fifo<number>();
      const model: number[] = [];
      for (const s of steps) {
        if ("push" in s) {
          fifo.pushAll(s.push);
          model.push(...s.push);
        } else if ("shift" in s) {
          for (let i = 0; i < s.shift; i++) assert.equal(fifo.shift(), model.shift());
        } else {
          fifo.clear();
          model.length = 0;
        }
        assert.equal(fifo.length, model.length);
      }
    }),
    { numRuns: 200 },
  );
});
