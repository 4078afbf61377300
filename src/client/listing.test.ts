import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import fc from "fast-check";
import { FolderListing, SpillList } from "./listing.js";

let base: string;
let scratch: string;

before(async () => {
  base = await mkdtemp(join(tmpdir(), "kw-listing-"));
  scratch = join(base, "scratch");
  await mkdir(scratch);
});

after(async () => {
  await rm(base, { recursive: true, force: true });
});

const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** The process's open descriptors (Linux): a scratch file left open would show here. */
const openDescriptors = () => readdirSync("/proc/self/fd").length;

/** Reads all of `listing` in slices of the given sizes, cycling through them. */
async function readAll(listing: FolderListing, sizes: number[]): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; !listing.exhausted; i++) {
    const slice = await listing.next(sizes[i % sizes.length] as number);
    assert.ok(slice.length <= (sizes[i % sizes.length] as number));
    out.push(...slice);
  }
  assert.deepEqual(await listing.next(5), [], "nothing after the end");
  return out;
}

/** The whole listing of `dir`, read in slices of `sizes`, and how many runs went to disk. */
async function listFolder(dir: string, scratchFolder: string, runSize: number, sizes: number[]) {
  const listing = await FolderListing.open(dir, scratchFolder, runSize);
  try {
    return { runsOnDisk: listing.runsOnDisk, names: await readAll(listing, sizes) };
  } finally {
    await listing.close();
  }
}

let folders = 0;
async function folderOf(names: string[]): Promise<string> {
  const dir = join(base, `f${folders++}`);
  await mkdir(dir);
  for (const name of names) await writeFile(join(dir, name), "");
  return dir;
}

test("a folder's names come in UTF-8 byte order, held in memory or merged from runs on disk", async () => {
  // Any code point but "/" and NUL; 40 code points stay under the 255-byte name limit.
  const name = fc
    .string({ unit: "binary", minLength: 1, maxLength: 40 })
    .filter((s) => !s.includes("/") && !s.includes("\0") && s !== "." && s !== "..");
  await fc.assert(
    fc.asyncProperty(
      fc.uniqueArray(name, { maxLength: 30 }),
      fc.integer({ min: 1, max: 8 }),
      fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 4 }),
      async (names, runSize, sizes) => {
        const dir = await folderOf(names);
        const descriptors = openDescriptors();
        const listing = await FolderListing.open(dir, scratch, runSize);
        try {
          assert.equal(listing.runsOnDisk, names.length >= runSize ? Math.ceil(names.length / runSize) : 0);
          assert.deepEqual(await readdir(scratch), [], "the scratch file is unlinked at once");
          assert.deepEqual(await readAll(listing, sizes), [...names].sort(byBytes));
        } finally {
          await listing.close();
          await rm(dir, { recursive: true });
        }
        assert.equal(openDescriptors(), descriptors, "the scratch file is closed");
      },
    ),
    { numRuns: 40 },
  );
});

test("long names across the merge's read blocks, and many runs", async () => {
  // 3,000 names of about 120 bytes: each run spans several 32 KiB blocks, names cut between them.
  const names = Array.from(
    { length: 3000 },
    (_, i) => `${"é".repeat(50)}-${(i * 7919) % 3000}-${"x".repeat(i % 17)}`,
  );
  assert.deepEqual(await listFolder(await folderOf(names), scratch, 700, [1024]), {
    runsOnDisk: 5,
    names: [...names].sort(byBytes),
  });
});

test("a missing folder is an error of opendir, and leaves nothing behind", async () => {
  await assert.rejects(FolderListing.open(join(base, "missing"), scratch), { code: "ENOENT" });
  assert.deepEqual(await readdir(scratch), []);
});

test("a spill list gives back what was pushed, in order, from memory and disk", async () => {
  const descriptors = openDescriptors();
  const list = new SpillList(scratch, 7);
  const pushed = Array.from({ length: 1000 }, (_, i) => `sub/${i}-\u{1F600}`);
  for (const name of pushed) await list.push(name);
  assert.deepEqual(await readdir(scratch), [], "the scratch file is unlinked at once");
  const drained: string[] = [];
  for await (const name of list.drain()) drained.push(name);
  assert.deepEqual(drained, pushed);
  assert.equal(openDescriptors(), descriptors, "closed once drained");

  // Left early: closed all the same.
  const early = new SpillList(scratch, 2);
  for (const name of pushed.slice(0, 10)) await early.push(name);
  for await (const name of early.drain()) if (name === pushed[3]) break;
  assert.equal(openDescriptors(), descriptors, "closed when the loop ends early");
});

test("where no scratch file can be written, the names are held in memory instead", async () => {
  // A scratch folder that does not exist stands for one on a full disk: open fails alike.
  const nowhere = join(base, "no-such-scratch-folder");
  const names = Array.from({ length: 50 }, (_, i) => `n${i}-\uFF01`).concat(["\u{1F600}", "\uE000"]);
  assert.deepEqual(await listFolder(await folderOf(names), nowhere, 4, [3]), {
    runsOnDisk: 0,
    names: [...names].sort(byBytes),
  });
  const list = new SpillList(nowhere, 4);
  for (const name of names) await list.push(name);
  const drained: string[] = [];
  for await (const name of list.drain()) drained.push(name);
  assert.deepEqual(drained, names);
});
