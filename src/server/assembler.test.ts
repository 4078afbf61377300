// The assembler of a new mirror file, on a real temporary folder: chunks that arrive in
// parts are written from those parts, and many tiny ones are not all held until a MiB
// of them has gathered.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { ChunkList } from "../chunking/chunk-list.js";
import { MemoryChunkStore } from "../store/memory-chunk-store.js";
import { Mirror } from "../store/mirror.js";
import { SqliteMetadataStore } from "../store/sqlite-metadata-store.js";
import { Assembler } from "./assembler.js";
import { ByteBudget } from "./budget.js";
import { History } from "./history.js";

const sha256 = (data: Uint8Array): Buffer => createHash("sha256").update(data).digest();

/** A temporary DEST-like folder (a set's mirror, its tmp/, a history), removed after the test. */
async function scratchPlace(t: TestContext): Promise<{ dir: string; temp: string; history: History }> {
  const dir = await mkdtemp(join(tmpdir(), "kw-assembler-"));
  const temp = join(dir, "tmp");
  await mkdir(join(dir, "set"));
  await mkdir(temp);
  const history = new History(new MemoryChunkStore(), SqliteMetadataStore.open(join(dir, "index.db")));
  t.after(async () => {
    await history.meta.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { dir, temp, history };
}

test("a file of 1-byte chunks is written out as the parts gather, not held until a MiB has", async (t) => {
  const { dir, temp, history } = await scratchPlace(t);

  const data = randomBytes(1000);
  const chunks = new ChunkList();
  for (let i = 0; i < data.length; i++) chunks.push(sha256(data.subarray(i, i + 1)), 1);
  const assembler = new Assembler(
    new Mirror(join(dir, "set"), temp),
    history,
    chunks,
    new ByteBudget(1 << 26),
  );

  // 600 chunks, each as a part of its own: a few hundred at most may wait in memory.
  for (let i = 0; i < 600; i++) await assembler.add(i, [data.subarray(i, i + 1)]);
  let written = 0;
  for (let tries = 0; tries < 250 && written < 512; tries++) {
    await sleep(20);
    const names = await readdir(temp);
    written = names.length === 1 ? (await stat(join(temp, names[0] as string))).size : 0;
  }
  assert.ok(written >= 512 && written <= 600, `written before the end: ${written} bytes of 600 arrived`);

  // The rest, some in several parts: the whole file, byte for byte.
  for (let i = 600; i < data.length; i++) await assembler.add(i, [data.subarray(i, i + 1), Buffer.alloc(0)]);
  const pending = await assembler.finish(sha256(data));
  await pending.handle.close();
  assert.deepEqual(await readFile(pending.tempPath), data);
});

test("a chunk that waits for the data budget while its assembly is discarded gives the budget back", async (t) => {
  // Before, the chunk took its share once room came and kept it for ever: the budget shrank
  // with each such chunk, and work waiting on it never ended (a server that did not stop).
  const { dir, temp, history } = await scratchPlace(t);
  const data = randomBytes(100);
  const chunks = new ChunkList();
  chunks.push(sha256(data), data.length);
  const budget = new ByteBudget(100);
  const assembler = new Assembler(new Mirror(join(dir, "set"), temp), history, chunks, budget);
  assert.ok(budget.take(100), "another transfer holds the whole budget");
  const adding = assembler.add(0, [data]);
  await assembler.discard();
  budget.give(100);
  await adding;
  assert.equal(budget.inUse, 0, "nothing is held by the discarded assembly");
});
