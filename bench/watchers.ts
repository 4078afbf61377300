// Compares the two candidate watchers on this machine: time until a recursive watch of a
// 20,000-file tree is ready, event latency for single writes, and the process's RSS.
// Run: npx tsx bench/watchers.ts [files]

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import parcel from "@parcel/watcher";
import chokidar from "chokidar";

const files = Number(process.argv[2] ?? 20000);
const edits = 50;

function makeTree(root: string): void {
  for (let i = 0; i < files; i++) {
    const dir = join(root, `d${Math.floor(i / 1000)}`, `e${Math.floor(i / 100) % 10}`);
    if (i % 100 === 0) mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `f${i}.txt`), `file ${i}\n`);
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

async function measure(
  name: string,
  subscribe: (root: string, onPath: (path: string) => void) => Promise<() => Promise<void>>,
): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), `kw-watch-${name.replace(/\W+/g, "-")}-`));
  makeTree(root);
  const rssBefore = process.memoryUsage().rss;
  let waiting: { path: string; resolve: () => void } | null = null;
  const t0 = performance.now();
  const close = await subscribe(root, (path) => {
    if (waiting && path === waiting.path) waiting.resolve();
  });
  const ready = performance.now() - t0;
  const latencies: number[] = [];
  for (let i = 0; i < edits; i++) {
    const path = join(root, "d0", "e0", `new-${i}.txt`);
    const seen = new Promise<void>((resolve) => {
      waiting = { path, resolve };
    });
    const start = performance.now();
    writeFileSync(path, "x");
    await seen;
    latencies.push(performance.now() - start);
    await new Promise((r) => setTimeout(r, 20));
  }
  const rss = (process.memoryUsage().rss - rssBefore) / 2 ** 20;
  await close();
  rmSync(root, { recursive: true, force: true });
  console.log(
    `${name.padEnd(16)} ready ${ready.toFixed(0).padStart(6)} ms   event latency median ${median(latencies).toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms   RSS growth ${rss.toFixed(1)} MiB`,
  );
}

console.log(`recursive watch of ${files} files in ${files / 100} folders; ${edits} single-file writes`);
await measure("@parcel/watcher", async (root, onPath) => {
  const sub = await parcel.subscribe(root, (_err, events) => {
    for (const e of events) onPath(e.path);
  });
  return () => sub.unsubscribe();
});
await measure("chokidar 4", async (root, onPath) => {
  const w = chokidar.watch(root, { ignoreInitial: true });
  await new Promise<void>((resolve) => w.once("ready", () => resolve()));
  w.on("all", (_event, path) => onPath(path));
  return () => w.close();
});
await measure("node fs.watch", async (root, onPath) => {
  const { watch } = await import("node:fs");
  const w = watch(root, { recursive: true }, (_event, name) => {
    if (name) onPath(join(root, name.toString()));
  });
  return async () => w.close();
});
await measure("keepwatch TreeWatcher", async (root, onPath) => {
  const { watchTree } = await import("../src/client/watcher.js");
  const handle = await watchTree(root, {
    onPaths: (paths) => {
      for (const p of paths) onPath(join(root, p));
    },
    onTrouble: (message) => console.error(message),
  });
  return () => handle.close();
});
