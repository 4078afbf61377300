import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { cp, mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { KeepwatchError } from "../errors.js";
import {
  assertMissing,
  assertReadable,
  type Chunk,
  chunkOf,
  flipByte,
  listIds,
  makeChunk,
  makeChunks,
  runChunkStoreConformance,
} from "./chunk-store.conformance.js";
import { INDEX_FILE, LocalChunkStore, type LocalChunkStoreOptions } from "./local-chunk-store.js";
import { MemoryChunkStore } from "./memory-chunk-store.js";
import { ChunkCodec, RECORD_HEADER_BYTES } from "./pack-format.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const CHILD = join(HERE, "chunk-store.child.ts");
/** What chunk-store.child.ts uses: small packs, so a few hundred KiB make many of them. */
const SMALL: LocalChunkStoreOptions = { packTargetBytes: 64 * 1024, bufferBytes: 16 * 1024 };

const temps: string[] = [];
const children = new Set<ChildProcess>();

after(async () => {
  for (const child of children) child.kill("SIGKILL");
  await Promise.all(temps.map((t) => rm(t, { recursive: true, force: true })));
});

async function tempFolder(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "kw-chunks-"));
  temps.push(dir);
  return dir;
}

function localFixture(options: LocalChunkStoreOptions) {
  return async () => {
    const dir = await tempFolder();
    const opened: LocalChunkStore[] = [await LocalChunkStore.open(dir, options)];
    return {
      store: opened[0] as LocalChunkStore,
      reopen: async () => {
        const store = await LocalChunkStore.open(dir, options);
        assert.deepEqual(
          store.openReport,
          { removedOrphans: [], truncated: [], missing: [] },
          "a clean reopen",
        );
        opened.push(store);
        return store;
      },
      cleanup: async () => {
        for (const store of opened) await store.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  };
}

runChunkStoreConformance("local, default packs", localFixture({}));
runChunkStoreConformance("local, 64 KiB packs and a 16 KiB buffer", localFixture(SMALL));
runChunkStoreConformance("memory", async () => {
  const store = new MemoryChunkStore();
  return { store, cleanup: () => store.close() };
});

/** Every pack file under the store, relative to it. */
async function packFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const fan of await readdir(join(dir, "packs"))) {
    for (const name of await readdir(join(dir, "packs", fan))) out.push(join("packs", fan, name));
  }
  return out.sort();
}

function assertCorrupt(id: Buffer) {
  return (error: unknown) => {
    assert.ok(error instanceof KeepwatchError);
    assert.equal(error.code, "KW_CHUNK_CORRUPT");
    assert.match(error.message, new RegExp(id.toString("hex")), "the message names the chunk");
    return true;
  };
}

describe("LocalChunkStore", () => {
  test("incompressible chunks are stored raw, text chunks compressed", async () => {
    const dir = await tempFolder();
    const store = await LocalChunkStore.open(dir);
    try {
      const random = makeChunk(64 * 1024, "random");
      const text = makeChunk(64 * 1024, "text");
      await store.put(random.id, random.data);
      await store.put(text.id, text.data);
      await store.flush();
      const r = await store.locate(random.id);
      const t = await store.locate(text.id);
      assert.equal(r?.codec, ChunkCodec.raw);
      assert.equal(r?.storedLength, random.data.length);
      assert.equal(t?.codec, ChunkCodec.zstd);
      assert.ok(
        (t?.storedLength ?? Infinity) < text.data.length / 2,
        `text stored in ${t?.storedLength} bytes`,
      );
      assert.equal(r?.durable, true);
      const stats = await store.stats();
      assert.ok(stats.storedBytes < stats.bytes * 0.8, "the store is smaller than its chunks");
    } finally {
      await store.close();
    }
  });

  test("a flipped byte in a pack is KW_CHUNK_CORRUPT naming the chunk; the pack's other chunks still read", async () => {
    const dir = await tempFolder();
    const store = await LocalChunkStore.open(dir);
    try {
      const chunks = [
        makeChunk(30_000, "text"),
        makeChunk(30_000, "random"),
        makeChunk(30_000, "text"),
        makeChunk(30_000, "random"),
        makeChunk(30_000, "text"),
      ];
      for (const c of chunks) await store.put(c.id, c.data);
      await store.flush();
      const [a, b, c, d, e] = chunks as [Chunk, Chunk, Chunk, Chunk, Chunk];
      const where = async (chunk: Chunk) => {
        const at = await store.locate(chunk.id);
        assert.ok(at);
        return at;
      };
      const pack = join(dir, (await where(a)).pack);
      assert.equal((await where(e)).pack, (await where(a)).pack, "one pack");

      // In compressed bytes, raw bytes, a header's length field and a header's id.
      const la = await where(a);
      await flipByte(pack, la.offset + RECORD_HEADER_BYTES + Math.floor(la.storedLength / 2));
      const lb = await where(b);
      await flipByte(pack, lb.offset + RECORD_HEADER_BYTES + 7);
      const lc = await where(c);
      await flipByte(pack, lc.offset + 41);
      const ld = await where(d);
      await flipByte(pack, ld.offset + 10);

      for (const broken of [a, b, c, d]) await assert.rejects(store.get(broken.id), assertCorrupt(broken.id));
      assert.ok((await store.get(e.id)).equals(e.data));
      await store.close();
      const again = await LocalChunkStore.open(dir);
      await assert.rejects(again.get(b.id), assertCorrupt(b.id));
      assert.ok((await again.get(e.id)).equals(e.data));
      await again.close();
    } finally {
      await store.close();
    }
  });

  test("a pack file cut short reads as KW_CHUNK_CORRUPT; a missing one as KW_CHUNK_MISSING", async () => {
    const dir = await tempFolder();
    let store = await LocalChunkStore.open(dir);
    const [first, last] = [makeChunk(20_000, "text"), makeChunk(20_000, "random")];
    await store.put(first.id, first.data);
    await store.put(last.id, last.data);
    await store.close();
    store = await LocalChunkStore.open(dir);
    const where = await store.locate(last.id);
    assert.ok(where);
    const handle = await open(join(dir, where.pack), "r+");
    await handle.truncate(where.offset + RECORD_HEADER_BYTES + 100);
    await handle.close();
    await assert.rejects(store.get(last.id), assertCorrupt(last.id));
    assert.ok((await store.get(first.id)).equals(first.data));
    await store.close();

    await rm(join(dir, where.pack));
    store = await LocalChunkStore.open(dir);
    assert.deepEqual(store.openReport.missing, [where.pack]);
    await assert.rejects(store.get(first.id), (error: unknown) => {
      assert.ok(error instanceof KeepwatchError);
      assert.equal(error.code, "KW_CHUNK_MISSING");
      assert.match(error.message, new RegExp(where.pack));
      return true;
    });
    await store.close();
  });

  test("packs are sealed at the target size and sealed packs never change", async () => {
    const dir = await tempFolder();
    const store = await LocalChunkStore.open(dir, SMALL);
    try {
      // Sizes are random and half the chunks compress: 120 of them fill about a dozen
      // 64 KiB packs, so "at least 5 sealed" cannot fail by chance.
      const chunks = makeChunks(120, 20_000);
      for (const c of chunks) await store.put(c.id, c.data);
      await store.flush();
      const open = (await store.locate((chunks.at(-1) as Chunk).id))?.pack;
      const sealed = (await packFiles(dir)).filter((f) => f !== open);
      assert.ok(sealed.length >= 5, `${sealed.length} sealed packs`);
      const sizes = new Map<string, number>();
      for (const f of sealed) {
        sizes.set(f, (await stat(join(dir, f))).size);
        assert.ok(
          (sizes.get(f) as number) <= 64 * 1024 + RECORD_HEADER_BYTES + 20_000,
          `${f} near the target`,
        );
      }
      const more = makeChunks(30, 20_000);
      for (const c of more) await store.put(c.id, c.data);
      await store.flush();
      for (const [f, size] of sizes) assert.equal((await stat(join(dir, f))).size, size, `${f} unchanged`);
      await assertReadable(store, [...chunks, ...more]);
    } finally {
      await store.close();
    }
  });

  test("opening removes pack files no index row names and leaves other files alone", async () => {
    const dir = await tempFolder();
    let store = await LocalChunkStore.open(dir);
    const c = makeChunk(5000, "text");
    await store.put(c.id, c.data);
    await store.close();
    const orphan = join("packs", "ab", `ab${"0".repeat(30)}.pack`);
    const stranger = join("packs", "ab", "notes.txt");
    await mkdir(join(dir, "packs", "ab"), { recursive: true });
    await writeFile(join(dir, orphan), "half a pack");
    await writeFile(join(dir, stranger), "not ours");
    store = await LocalChunkStore.open(dir);
    assert.deepEqual(store.openReport.removedOrphans, [orphan]);
    await assert.rejects(stat(join(dir, orphan)), { code: "ENOENT" });
    assert.ok((await stat(join(dir, stranger))).isFile());
    assert.ok((await store.get(c.id)).equals(c.data));
    await store.close();
  });

  test("pack files without an index are refused, never removed", async () => {
    const dir = await tempFolder();
    const store = await LocalChunkStore.open(dir);
    const c = makeChunk(5000);
    await store.put(c.id, c.data);
    await store.close();
    const files = await packFiles(dir);
    await rm(join(dir, INDEX_FILE));
    await assert.rejects(LocalChunkStore.open(dir), (error: unknown) => {
      assert.ok(error instanceof KeepwatchError);
      assert.equal(error.code, "KW_SERVER_IO");
      return true;
    });
    assert.deepEqual(await packFiles(dir), files);
    await assert.rejects(LocalChunkStore.open(dir), KeepwatchError, "refused again, not taken for empty");
  });

  test("an index from a newer keepwatch is refused", async () => {
    const dir = await tempFolder();
    await (await LocalChunkStore.open(dir)).close();
    const db = new Database(join(dir, INDEX_FILE));
    db.pragma("user_version = 99");
    db.close();
    await assert.rejects(LocalChunkStore.open(dir), (error: unknown) => {
      assert.ok(error instanceof KeepwatchError);
      assert.match(error.message, /schema version 99/);
      return true;
    });
  });

  test("a second open of the same store fails while the first holds it", async () => {
    const dir = await tempFolder();
    const store = await LocalChunkStore.open(dir);
    try {
      await assert.rejects(LocalChunkStore.open(dir), (error: unknown) => {
        assert.ok(error instanceof KeepwatchError);
        assert.match(error.message, /in use by another process/);
        return true;
      });
    } finally {
      await store.close();
    }
    await (await LocalChunkStore.open(dir)).close();
  });

  test("killed with chunks written but not flushed: reopen keeps the flushed ones and cuts the rest off", async () => {
    const dir = await tempFolder();
    await (await LocalChunkStore.open(dir)).close();
    const expected = join(await tempFolder(), "durable.json");
    const child = spawnChild(["write", dir, expected]);
    for await (const line of lines(child)) if (line === "ready") break;
    await kill(child);
    const written = JSON.parse(await readFile(expected, "utf8")) as { durable: string[]; lost: string[] };
    const durable = written.durable.map((b64) => chunkOf(Buffer.from(b64, "base64")));
    const lost = written.lost.map((hex) => Buffer.from(hex, "hex"));
    assert.equal(durable.length, 20);
    const [pack] = await packFiles(dir);
    const sizeAtKill = (await stat(join(dir, pack as string))).size;

    const store = await LocalChunkStore.open(dir);
    try {
      assert.deepEqual(store.openReport.truncated, [pack], "the unflushed tail is cut off");
      assert.ok((await stat(join(dir, pack as string))).size < sizeAtKill);
      await assertReadable(store, durable);
      for (const id of lost) await assertMissing(store, id);
      assert.equal((await store.stats()).chunks, durable.length);
      assert.equal((await store.stats()).storedBytes, (await stat(join(dir, pack as string))).size);
      // The cut pack is sealed: new chunks go to a new pack.
      const fresh = makeChunk(10_000);
      await store.put(fresh.id, fresh.data);
      await store.flush();
      assert.notEqual((await store.locate(fresh.id))?.pack, pack);
    } finally {
      await store.close();
    }
  });

  test("chunks lost by a failed write on a full disk fail every flush that may rely on them", async (t) => {
    // A small filesystem is a tmpfs, which only root may mount.
    if (process.getuid?.() !== 0) return t.skip("mounting a small tmpfs needs root");
    const dir = await tempFolder();
    const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir], { encoding: "utf8" });
    if (mounted.status !== 0) return t.skip(`mounting a tmpfs is not allowed here: ${mounted.stderr.trim()}`);
    t.after(() => {
      if (spawnSync("umount", [dir]).status !== 0) spawnSync("umount", ["-l", dir]);
    });
    const options: LocalChunkStoreOptions = { packTargetBytes: 64 * 1024 * 1024, bufferBytes: 16 * 1024 };
    let store = await LocalChunkStore.open(join(dir, "store"), options);
    try {
      // One caller puts a chunk; another is told the store has it, so would not send it.
      const mark = store.lossMark();
      const relied = makeChunk(8 * 1024);
      await store.put(relied.id, relied.data);
      assert.equal(await store.has(relied.id), true);
      let failure: unknown;
      for (let i = 0; i < 1000 && failure === undefined; i++) {
        const more = makeChunk(8 * 1024);
        await store.put(more.id, more.data).catch((error: unknown) => {
          failure = error;
        });
      }
      assert.equal((failure as NodeJS.ErrnoException | undefined)?.code, "ENOSPC", "the disk filled");
      assert.ok(store.lossMark() > mark, "the loss is counted");
      assert.equal(await store.has(relied.id), false, "the lost chunk is no longer counted stored");
      await assert.rejects(store.flush(mark), { code: "ENOSPC" }, "a flush that relied on it fails");
      await assert.rejects(store.flush(mark), { code: "ENOSPC" }, "and every such flush, not only the first");
      await store.flush(store.lossMark());
      await store.flush();
      await store.close();
      // Reopening cuts the abandoned pack back, which frees the space: the chunk fits again.
      store = await LocalChunkStore.open(join(dir, "store"), options);
      const since = store.lossMark();
      await store.put(relied.id, relied.data);
      await store.flush(since);
      await assertReadable(store, [relied]);
    } finally {
      await store.close();
    }
  });

  test("delete killed at any step of repacking leaves every other chunk readable", {
    timeout: 90_000,
  }, async () => {
    const base = await tempFolder();
    const store = await LocalChunkStore.open(join(base, "store"), SMALL);
    const chunks = makeChunks(180, 20_000);
    for (const c of chunks) await store.put(c.id, c.data);
    await store.close();
    const packsBefore = (await packFiles(join(base, "store"))).length;
    assert.ok(packsBefore >= 12, `${packsBefore} packs`);
    const doomed = chunks.filter((_, i) => i % 3 === 0);
    const doomedKeys = new Set(doomed.map((c) => c.id.toString("hex")));
    const kept = chunks.filter((c) => !doomedKeys.has(c.id.toString("hex")));
    const idsFile = join(base, "doomed.txt");
    await writeFile(idsFile, doomed.map((c) => `${c.id.toString("hex")}\n`).join(""));

    // One uninterrupted run gives the time a delete takes and how often each step comes.
    const calibration = await runDelete(base, "calibration", idsFile, undefined, undefined);
    assert.ok(calibration.finished, "an uninterrupted delete finishes");
    const counts = new Map<string, number>();
    for (const step of calibration.steps)
      counts.set(step.split(" ")[0] as string, Number(step.split(" ")[1]));
    for (const step of ["copied", "synced", "committed", "removed"])
      assert.ok(counts.get(step), `step ${step} seen`);
    await verifyAfterCrash(join(base, "calibration"), kept, doomed, true);

    // Eleven more runs: one stopped at each kind of step (at a random occurrence of it),
    // seven killed after a random delay; two at a time, as the machine has two cores.
    const plans: { stopAt?: string; delayMs?: number }[] = [];
    for (const step of ["copied", "synced", "committed", "removed"]) {
      plans.push({ stopAt: `${step}:${1 + Math.floor(Math.random() * (counts.get(step) ?? 1))}` });
    }
    for (let i = 0; i < 7; i++) plans.push({ delayMs: Math.random() * calibration.ms });
    let orphansSeen = 0;
    const runPlan = async (n: number) => {
      const plan = plans[n] as { stopAt?: string; delayMs?: number };
      const run = await runDelete(base, `run-${n}`, idsFile, plan.stopAt, plan.delayMs);
      if (plan.stopAt) {
        assert.equal(run.finished, false);
        assert.equal(run.steps.at(-1), plan.stopAt.replace(":", " "), "killed at the planned step");
      }
      orphansSeen += await verifyAfterCrash(join(base, `run-${n}`), kept, doomed, run.finished);
      await rm(join(base, `run-${n}`), { recursive: true, force: true });
    };
    for (let n = 0; n < plans.length; n += 2) {
      // allSettled: a failing run must not end the test while its pair still writes files.
      const pair = await Promise.allSettled([runPlan(n), ...(n + 1 < plans.length ? [runPlan(n + 1)] : [])]);
      for (const result of pair) if (result.status === "rejected") throw result.reason;
    }
    assert.ok(orphansSeen > 0, "some kills left a pack file for the next open to remove");
  });
});

/** Copy the base store, run a delete in a child and kill it as planned. */
async function runDelete(
  base: string,
  name: string,
  idsFile: string,
  stopAt: string | undefined,
  delayMs: number | undefined,
): Promise<{ finished: boolean; steps: string[]; ms: number }> {
  const folder = join(base, name);
  await cp(join(base, "store"), folder, { recursive: true });
  const child = spawnChild(["delete", folder, idsFile, ...(stopAt ? [stopAt] : [])]);
  const steps: string[] = [];
  let finished = false;
  let readyAt = 0;
  let timer: NodeJS.Timeout | undefined;
  for await (const line of lines(child)) {
    if (line === "ready") {
      readyAt = performance.now();
      if (delayMs !== undefined) timer = setTimeout(() => child.kill("SIGKILL"), delayMs);
    } else if (line === "done") {
      finished = true;
    } else {
      steps.push(line);
      if (stopAt && line === stopAt.replace(":", " ")) child.kill("SIGKILL");
    }
  }
  clearTimeout(timer);
  await kill(child);
  return { finished, steps, ms: performance.now() - readyAt };
}

/**
 * Reopen a store a delete was interrupted in: it must open, every chunk not deleted must
 * verify, a second open must find nothing to repair, and the delete must complete.
 * Returns how many orphan pack files the first open removed.
 */
async function verifyAfterCrash(
  folder: string,
  kept: Chunk[],
  doomed: Chunk[],
  finished: boolean,
): Promise<number> {
  const store = await LocalChunkStore.open(folder, SMALL);
  const removed = store.openReport.removedOrphans.length;
  try {
    assert.deepEqual(store.openReport.missing, []);
    await assertReadable(store, kept, `${folder}: `);
    if (finished) for (const c of doomed) await assertMissing(store, c.id);
  } finally {
    await store.close();
  }
  const again = await LocalChunkStore.open(folder, SMALL);
  try {
    assert.deepEqual(
      again.openReport,
      { removedOrphans: [], truncated: [], missing: [] },
      "the second open is clean",
    );
    await again.delete(doomed.map((c) => c.id));
    for (const c of doomed) await assertMissing(again, c.id);
    await assertReadable(again, kept);
    assert.deepEqual(await listIds(again), kept.map((c) => c.id.toString("hex")).sort());
    const files = (await packFiles(folder)).length;
    const stats = await again.stats();
    assert.equal(stats.chunks, kept.length);
    assert.ok(files > 0 && stats.storedBytes > 0);
  } finally {
    await again.close();
  }
  return removed;
}

function spawnChild(args: string[]): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", CHILD, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

async function* lines(child: ChildProcess): AsyncGenerator<string> {
  if (!child.stdout) return;
  for await (const line of createInterface({ input: child.stdout })) yield line;
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
}
