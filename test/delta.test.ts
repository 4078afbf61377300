// Chunk-level deltas and deduplication, end to end: only the chunks the server lacks
// travel, renamed and copied files and content of another set cost no content bytes,
// and `push --force` records a new version without sending content.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import {
  copyFile,
  cp,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import Database from "better-sqlite3";
import { ChunkList, MARK_BYTES } from "../src/chunking/chunk-list.js";
import { fingerprints } from "../src/chunking/fingerprint.js";
import { compareTrees, type RunResult, Sandbox } from "./helpers.js";

const SIZE = 24 * 1024 * 1024;
/** FastCDC's largest chunk (docs/chunking.md): an edit touches at most two. */
const MAX_CHUNK = 256 * 1024;
/** A small edit, as deltas inside the (at most two) chunks it touches: a few 1 KiB blocks. */
const DELTA_MOST = 8 * 1024;

/** Content bytes the client reported sending for `path` (sentBytes of its file-done). */
function sentFor(run: RunResult, path: string): number {
  const done = run.events.filter((e) => e.event === "file-done" && e.op === "put" && e.path === path);
  assert.equal(done.length, 1, `one put of ${path}: ${JSON.stringify(run.events.slice(-5))}`);
  const sent = done[0]?.sentBytes;
  assert.equal(typeof sent, "number", `file-done of ${path} reports sentBytes`);
  return sent as number;
}

/** Flip every bit of the byte at `offset` of the file at `path`, in place. */
async function flipByte(path: string, offset: number): Promise<void> {
  const handle = await open(path, "r+");
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, offset);
  byte[0] = (byte[0] as number) ^ 0xff;
  await handle.write(byte, 0, 1, offset);
  await handle.close();
}

async function packBytes(dest: string): Promise<number> {
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) await walk(path);
      else total += (await stat(path)).size;
    }
  };
  await walk(join(dest, ".keepwatch", "packs"));
  return total;
}

test("only changed chunks travel; renames, copies and other sets' content cost nothing", {
  timeout: 120_000,
}, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("work");
  const dest = box.path("dest");
  await mkdir(src);
  const original = randomBytes(SIZE);
  await writeFile(join(src, "big.bin"), original);
  await writeFile(join(src, "small.txt"), "small file\n");
  const server = await box.startServer(dest);
  const push = async (dir = src, args: string[] = []) => {
    const run = await box.push(dir, server.port, args);
    assert.equal(run.code, 0, `push exits 0\n${run.stderr}\n${box.report()}`);
    assert.deepEqual(await compareTrees(dir, join(dest, join(dir).split("/").pop() as string)), []);
    return run;
  };

  const first = await push();
  assert.equal(sentFor(first, "big.bin"), SIZE, "a new file travels whole");

  // One byte flipped in the middle.
  const handle = await open(join(src, "big.bin"), "r+");
  await handle.write(Buffer.from([(original[SIZE / 2] as number) ^ 0xff]), 0, 1, SIZE / 2);
  await handle.close();
  const flipped = await push();
  const flipSent = sentFor(flipped, "big.bin");
  // Protocol version 4: the changed chunk travels as a delta of the one it replaces.
  assert.ok(flipSent > 0 && flipSent <= DELTA_MOST, `a 1-byte flip sent ${flipSent} bytes`);

  // 100 bytes inserted at the start.
  await writeFile(
    join(src, "big.bin"),
    Buffer.concat([randomBytes(100), await readFile(join(src, "big.bin"))]),
  );
  const inserted = await push();
  const insertSent = sentFor(inserted, "big.bin");
  assert.ok(insertSent > 0 && insertSent <= DELTA_MOST, `100 inserted bytes sent ${insertSent} bytes`);

  // A rename and a copy within SRC: no content bytes.
  await rename(join(src, "big.bin"), join(src, "renamed.bin"));
  await copyFile(join(src, "renamed.bin"), join(src, "copy.bin"));
  const moved = await push();
  assert.equal(sentFor(moved, "renamed.bin"), 0, "a renamed file sends no content");
  assert.equal(sentFor(moved, "copy.bin"), 0, "a copied file sends no content");

  // Another set with the same content (its own client state knows nothing): no chunk
  // bytes travel and the server's packs do not grow.
  const other = box.path("other");
  await mkdir(other);
  await copyFile(join(src, "renamed.bin"), join(other, "same.bin"));
  const packsBefore = await packBytes(dest);
  const otherRun = await box.run("push", [
    "push",
    other,
    "127.0.0.1",
    "--port",
    String(server.port),
    "--json",
    "--state-dir",
    box.path("state-other"),
  ]);
  assert.equal(otherRun.code, 0, otherRun.stderr);
  assert.equal(sentFor(otherRun, "same.bin"), 0, "content stored for another set is not sent again");
  assert.ok((await packBytes(dest)) - packsBefore < 64 * 1024, "the packs did not grow by the file");
  assert.deepEqual(await compareTrees(other, join(dest, "other")), []);

  // --force: every file again, as new versions, without content bytes.
  const forced = await push(src, ["--force"]);
  for (const path of ["renamed.bin", "copy.bin", "small.txt"]) {
    assert.equal(sentFor(forced, path), 0, `--force re-records ${path} without sending it`);
  }
  const stored = server.events.filter((e) => e.event === "file-done" && e.op === "put").length;
  assert.ok(stored >= 9, `the server recorded every version (${stored} puts)`);
});

test("an edit is assembled from the mirror's old file when it holds the base, else from the history", {
  timeout: 120_000,
}, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("work");
  const dest = box.path("dest");
  const mirrored = join(dest, "work", "big.bin");
  await mkdir(src);
  await writeFile(join(src, "big.bin"), randomBytes(8 * 1024 * 1024));
  const server = await box.startServer(dest);
  const flipAndPush = async (offset: number, what: string) => {
    await flipByte(join(src, "big.bin"), offset);
    const run = await box.push(src, server.port);
    assert.equal(run.code, 0, `${what}: push exits 0\n${run.stderr}\n${box.report()}`);
    assert.ok(sentFor(run, "big.bin") <= 2 * MAX_CHUNK, `${what}: only the changed chunks travel`);
    assert.deepEqual(
      await compareTrees(src, join(dest, "work")),
      [],
      `${what}: the mirror equals the source`,
    );
  };
  assert.equal((await box.push(src, server.port)).code, 0);

  await flipAndPush(7 * 1024 * 1024, "the mirror holds the base");
  // Someone changed the mirror's copy (same size): the whole no longer matches, so the
  // server assembles the next version from the history alone.
  const tampered = await open(mirrored, "r+");
  await tampered.write(Buffer.alloc(4096, 0x41), 0, 4096, 1024 * 1024);
  await tampered.close();
  await flipAndPush(100, "the mirror's copy was changed");
  // Cut short, then gone: neither is read as the base.
  await writeFile(mirrored, "not the base");
  await flipAndPush(5 * 1024 * 1024, "the mirror's copy is short");
  await unlink(mirrored);
  await flipAndPush(3 * 1024 * 1024, "the mirror's copy is gone");

  const verify = await box.run("verify", ["verify", dest]);
  assert.equal(verify.code, 0, `verify is clean\n${verify.stderr}`);
});

test("an edit whose base the server no longer holds (DEST restored from an older copy) is sent again without it", {
  timeout: 120_000,
}, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("work");
  const dest = box.path("dest");
  const older = box.path("dest-older");
  await mkdir(src);
  await writeFile(join(src, "big.bin"), randomBytes(4 * 1024 * 1024));
  let server = await box.startServer(dest);
  const push = async (what: string) => {
    const run = await box.push(src, server.port);
    assert.equal(run.code, 0, `${what}: push exits 0\n${run.stderr}\n${box.report()}`);
    assert.deepEqual(
      await compareTrees(src, join(dest, "work")),
      [],
      `${what}: the mirror equals the source`,
    );
    return run;
  };
  await push("the first version");
  await server.kill();
  await cp(dest, older, { recursive: true });
  server = await box.startServer(dest, { port: server.port });
  await flipByte(join(src, "big.bin"), 1024 * 1024);
  await push("an edit the client then takes as its base");
  // The server's DEST goes back to the copy from before that edit: the client's base is
  // a content the server never held.
  await server.kill();
  await rm(dest, { recursive: true });
  await rename(older, dest);
  server = await box.startServer(dest, { port: server.port });
  await flipByte(join(src, "big.bin"), 3 * 1024 * 1024);
  const again = await push("an edit on a base the server does not hold");
  // Without a base, the server still holds the first version's chunks: the two changed
  // chunks (and at most their neighbours) travel, not the file.
  const sent = sentFor(again, "big.bin");
  assert.ok(sent > 0 && sent <= 4 * MAX_CHUNK, `the edit without a base sent ${sent} bytes`);
  const verify = await box.run("verify", ["verify", dest]);
  assert.equal(verify.code, 0, `verify is clean\n${verify.stderr}`);
});

test("a chunk fingerprint that lies costs a second read, never a wrong version", {
  timeout: 120_000,
}, async (t) => {
  const { box, src, dest, file, server } = await withBigFile(t, 4 * 1024 * 1024);
  assert.equal((await box.push(src, server.port)).code, 0);

  const row = await stateRow(box.stateDir);
  const list = ChunkList.fromStored(row.chunks);
  const chunks = [...list];
  const fingerprint = await fingerprints();
  assert.ok(fingerprint, "WebAssembly runs here");
  const content = await readFile(file);
  const offsets = list.offsets();
  const fingerprintsOf = (bytes: Buffer) =>
    chunks.map((c, i) => fingerprint(bytes.subarray(offsets[i], (offsets[i] as number) + c.length)));
  /** The fingerprints a state row keeps, or null. */
  const marksOf = (stored: { chunks: Buffer; marks: Buffer | null }) => {
    const list = ChunkList.fromStored(stored.chunks, stored.marks);
    return list.hasMarks ? [...list].map((c) => c.mark) : null;
  };
  assert.deepEqual(marksOf(row), fingerprintsOf(content), "the push kept them");

  // Change a byte of chunk 3, and make the state's fingerprint of chunk 3 that of its new
  // bytes: the client takes the changed chunk for the old one (as a collision would).
  await flipByte(file, (offsets[3] as number) + 100);
  const lies = fingerprintsOf(await readFile(file));
  const lied = new ChunkList(chunks.length, true);
  chunks.forEach((c, i) => {
    lied.push(c.id, c.length, lies[i]);
  });
  const db = await stateDb(box.stateDir, false);
  db.prepare("UPDATE entries SET marks = ? WHERE path = ?").run(lied.storedMarks(), "big.bin");
  db.close();

  const run = await box.push(src, server.port);
  assert.equal(run.code, 0, `push exits 0\n${run.stderr}\n${box.report()}`);
  assert.deepEqual(await compareTrees(src, join(dest, "work")), [], "the mirror equals the source");
  assert.ok(sentFor(run, "big.bin") <= 2 * MAX_CHUNK, "the read again found the changed chunk");
  assert.deepEqual(
    marksOf(await stateRow(box.stateDir)),
    fingerprintsOf(await readFile(file)),
    "the state holds the true fingerprints again",
  );
  const verify = await box.run("verify", ["verify", dest]);
  assert.equal(verify.code, 0, `verify is clean\n${verify.stderr}`);
});

test("where WebAssembly cannot run (node --jitless), edits are found by SHA-256 alone", {
  timeout: 180_000,
}, async (t) => {
  const { box, src, dest, file, server } = await withBigFile(t, 2 * 1024 * 1024);
  const push = async (what: string, jitless: boolean) => {
    const env = box.env(jitless ? { NODE_OPTIONS: "--jitless" } : {});
    const args = ["push", src, "127.0.0.1", "--port", String(server.port), "--json"];
    const run = await box.run("push", args, { env, timeoutMs: 120_000 });
    assert.equal(run.code, 0, `${what}: push exits 0\n${run.stderr}\n${box.report()}`);
    assert.deepEqual(
      await compareTrees(src, join(dest, "work")),
      [],
      `${what}: the mirror equals the source`,
    );
    return run;
  };

  await push("the first backup, without WebAssembly", true);
  assert.equal((await stateRow(box.stateDir)).marks, null, "no fingerprints were kept");
  await flipByte(file, 1024 * 1024);
  const edit = await push("an edit, without WebAssembly", true);
  assert.ok(sentFor(edit, "big.bin") <= 2 * MAX_CHUNK, "only the changed chunks travel");
  assert.equal((await stateRow(box.stateDir)).marks, null, "still none");
  await flipByte(file, 300 * 1024);
  await push("an edit, with WebAssembly", false);
  const row = await stateRow(box.stateDir);
  assert.equal(
    row.marks?.length,
    MARK_BYTES * ChunkList.fromStored(row.chunks).length,
    "an edit with it keeps them",
  );
});

/** A sandbox with a running server, and SRC `work` holding big.bin of `size` random bytes. */
async function withBigFile(t: TestContext, size: number) {
  const box = await Sandbox.create(t);
  const src = box.path("work");
  const dest = box.path("dest");
  const file = join(src, "big.bin");
  await mkdir(src);
  await writeFile(file, randomBytes(size));
  const server = await box.startServer(dest);
  return { box, src, dest, file, server };
}

/** The client's state: the only database in `stateDir`. */
async function stateDb(stateDir: string, readonly: boolean): Promise<Database.Database> {
  const [name, ...others] = (await readdir(stateDir)).filter((n) => n.endsWith(".db"));
  assert.ok(name && others.length === 0, "one state database");
  return new Database(join(stateDir, name), { readonly });
}

/** What the client's state holds for big.bin. */
async function stateRow(stateDir: string): Promise<{ chunks: Buffer; marks: Buffer | null }> {
  const db = await stateDb(stateDir, true);
  try {
    return db.prepare("SELECT chunks, marks FROM entries WHERE path = ?").get("big.bin") as {
      chunks: Buffer;
      marks: Buffer | null;
    };
  } finally {
    db.close();
  }
}
