import assert from "node:assert/strict";
import { test } from "node:test";
import { Debouncer } from "./debouncer.js";

function harness(quietMs: number, maxWaitMs: number) {
  const fired: string[][] = [];
  const debouncer = new Debouncer({ quietMs, maxWaitMs, onQuiet: (paths) => fired.push(paths) });
  return { debouncer, fired };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test("a path is handed on once, after it has been quiet", async () => {
  const { debouncer, fired } = harness(40, 10_000);
  debouncer.touch("a");
  await sleep(15);
  debouncer.touch("a");
  debouncer.touch("b");
  assert.deepEqual(fired, []);
  await sleep(120);
  assert.deepEqual(fired.flat().sort(), ["a", "b"]);
  assert.equal(debouncer.size, 0);
  debouncer.stop();
});

test("a path touched without pause is still handed on after maxWait", async () => {
  const { debouncer, fired } = harness(50, 120);
  const started = Date.now();
  while (Date.now() - started < 400 && fired.length === 0) {
    debouncer.touch("log.txt");
    await sleep(10);
  }
  assert.deepEqual(fired[0], ["log.txt"], "the busy path was handed on before it went quiet");
  debouncer.stop();
});

test("stop drops pending paths and fires nothing", async () => {
  const { debouncer, fired } = harness(20, 1000);
  debouncer.touch("x");
  debouncer.stop();
  await sleep(60);
  assert.deepEqual(fired, []);
});

test("flush hands on everything at once", () => {
  const { debouncer, fired } = harness(10_000, 10_000);
  debouncer.touch("x");
  debouncer.touch("y");
  debouncer.flush();
  assert.deepEqual(fired, [["x", "y"]]);
  debouncer.stop();
});
