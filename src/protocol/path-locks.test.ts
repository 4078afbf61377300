import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { PathLocks } from "./path-locks.js";

const tick = () => new Promise((resolve) => setImmediate(resolve));

test("unrelated paths are held together; overlapping ones wait in order", async () => {
  const locks = new PathLocks();
  const order: string[] = [];
  const releaseA = await locks.acquire("a");
  const releaseB = await locks.acquire("b");
  const waitingChild = locks.acquire("a/x").then((release) => {
    order.push("a/x");
    return release;
  });
  const waitingSame = locks.acquire("a").then((release) => {
    order.push("a again");
    return release;
  });
  await tick();
  assert.deepEqual(order, [], "nothing overlapping a is granted while a is held");
  releaseB();
  await tick();
  assert.deepEqual(order, []);
  releaseA();
  await tick();
  assert.deepEqual(order, ["a/x"], "the earlier waiter goes first; the later one overlaps it");
  (await waitingChild)();
  await tick();
  assert.deepEqual(order, ["a/x", "a again"]);
  (await waitingSame)();
  assert.equal(locks.busy, 0);
});

test("the root path overlaps everything", async () => {
  const locks = new PathLocks();
  const release = await locks.acquire("deep/file");
  let granted = false;
  const root = locks.acquire("").then((r) => {
    granted = true;
    return r;
  });
  await tick();
  assert.equal(granted, false);
  release();
  (await root)();
  assert.equal(granted, true);
});

test("property: no two overlapping paths are ever held at once", async () => {
  const path = fc
    .array(fc.constantFrom("a", "b", "c"), { minLength: 0, maxLength: 3 })
    .map((parts) => parts.join("/"));
  await fc.assert(
    fc.asyncProperty(fc.array(path, { minLength: 1, maxLength: 30 }), async (paths) => {
      const locks = new PathLocks();
      const held = new Set<string>();
      const overlaps = (x: string, y: string) =>
        x === "" || y === "" || x === y || x.startsWith(`${y}/`) || y.startsWith(`${x}/`);
      await Promise.all(
        paths.map(async (p, i) => {
          const release = await locks.acquire(p);
          for (const other of held)
            assert.ok(!overlaps(other.split("#")[0] as string, p), `${p} with ${other}`);
          const key = `${p}#${i}`;
          held.add(key);
          await tick();
          held.delete(key);
          release();
        }),
      );
      assert.equal(locks.busy, 0);
    }),
    { numRuns: 200 },
  );
});
