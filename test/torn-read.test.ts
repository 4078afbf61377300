// A file rewritten while the client reads it: the client must never commit a torn read
// (invariant 1: the mirror always holds a complete version), and once the writing stops
// the mirror must hold the final content.

import assert from "node:assert/strict";
import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { Sandbox, sleep } from "./helpers.js";

const SIZE = 8 * 1024 * 1024;
const PIECE = 512 * 1024;

/** Overwrite the file in place, piece by piece, with every byte set to `marker`. */
async function rewrite(path: string, marker: number): Promise<void> {
  const handle = await open(path, "r+");
  try {
    const piece = Buffer.alloc(PIECE, marker);
    for (let offset = 0; offset < SIZE; offset += PIECE) {
      await handle.write(piece, 0, PIECE, offset);
      await sleep(2); // leave the reader room to catch the file half-written
    }
  } finally {
    await handle.close();
  }
}

/**
 * Why `data` is not a state the file really had at one instant, or null. The writer
 * overwrites front to back, piece by piece, with the next marker, so every real state
 * is "pieces with marker k+1" followed by "pieces with marker k" (the writer may pause
 * between pieces, so such a half-rewritten file is a genuine, quiet state). A torn read
 * shows anything else: a piece mixing two markers, or an old piece before a newer one.
 */
function notARealState(data: Buffer): string | null {
  if (data.length !== SIZE) return `it is ${data.length} bytes long`;
  const markers: number[] = [];
  for (let offset = 0; offset < SIZE; offset += PIECE) {
    const piece = data.subarray(offset, offset + PIECE);
    const marker = piece[0] as number;
    if (!piece.every((b) => b === marker)) return `the piece at ${offset} mixes two versions`;
    markers.push(marker);
  }
  const newest = markers[0] as number;
  const boundary = markers.findIndex((m) => m !== newest);
  if (boundary < 0) return null;
  const older = markers.slice(boundary);
  if (older.some((m) => m !== newest - 1))
    return `pieces of version ${JSON.stringify(markers)} never coexisted`;
  return null;
}

test("a file rewritten while it is read is never committed torn, and ends up complete", {
  timeout: 90_000,
}, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("src");
  const dest = box.path("dest");
  const mirrorFile = join(dest, "src", "big.bin");
  await import("node:fs/promises").then((fs) => fs.mkdir(src, { recursive: true }));
  await writeFile(join(src, "big.bin"), Buffer.alloc(SIZE, 1));
  const server = await box.startServer(dest);
  const client = await box.startClient(src, server.port, { args: ["--quiet-ms", "0"] });

  // Rewrite for a while; sample the mirror the whole time.
  let writing = true;
  const seen = new Set<number>();
  const sampler = (async () => {
    while (writing) {
      const data = await readFile(mirrorFile);
      const problem = notARealState(data);
      assert.equal(problem, null, `the mirror holds a torn version: ${problem}`);
      seen.add(data[0] as number);
      await sleep(10);
    }
  })();
  for (let marker = 2; marker <= 12; marker++) await rewrite(join(src, "big.bin"), marker);
  writing = false;
  await sampler;

  await box.waitForMirror(src, join(dest, "src"), { alive: [client.proc, server.proc], timeoutMs: 20_000 });
  const final = await readFile(mirrorFile);
  assert.equal(notARealState(final), null);
  assert.ok(
    final.every((b) => b === 12),
    "the mirror ends with the last version",
  );
  const stored = server.events.filter((e) => e.event === "file-done" && e.path === "big.bin").length;
  assert.ok(stored >= 2, `the first version and at least the final one were stored (saw ${stored})`);
  assert.ok(seen.size >= 1);
});
