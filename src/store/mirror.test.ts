import assert from "node:assert/strict";
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Mirror } from "./mirror.js";

let base: string;
let root: string;
let temp: string;
let outside: string;

before(async () => {
  base = await mkdtemp(join(tmpdir(), "kw-mirror-"));
  root = join(base, "dest", "set");
  temp = join(base, "dest", ".keepwatch", "tmp");
  outside = join(base, "outside");
  await mkdir(root, { recursive: true });
  await mkdir(temp, { recursive: true });
  await mkdir(outside);
});

after(async () => {
  await rm(base, { recursive: true, force: true });
});

async function put(mirror: Mirror, path: string, content: string, mode = 0o640, mtimeMs = 1_700_000_000_123) {
  const pending = await mirror.createPending();
  await pending.handle.write(Buffer.from(content));
  await mirror.install(pending, path, { mode, mtimeMs });
}

test("install writes content, mode and mtime, and leaves no temporary file", async () => {
  const mirror = new Mirror(root, temp);
  await put(mirror, "a/b/c.txt", "hello", 0o600, 1_700_000_000_123);
  const target = join(root, "a/b/c.txt");
  assert.equal(await readFile(target, "utf8"), "hello");
  const st = await stat(target);
  assert.equal(st.mode & 0o7777, 0o600);
  assert.equal(Math.round(st.mtimeMs), 1_700_000_000_123);
  assert.deepEqual(await readdir(temp), []);
});

test("a symlink planted where a folder is expected is replaced, never followed", async () => {
  const mirror = new Mirror(root, temp);
  await symlink(outside, join(root, "trap"));
  await put(mirror, "trap/escape.txt", "x");
  assert.deepEqual(await readdir(outside), [], "nothing was written through the link");
  assert.ok((await lstat(join(root, "trap"))).isDirectory());
  assert.equal(await readFile(join(root, "trap/escape.txt"), "utf8"), "x");
});

test("remove below a planted symlink touches nothing outside", async () => {
  const mirror = new Mirror(root, temp);
  await writeFile(join(outside, "keep.txt"), "precious");
  await symlink(outside, join(root, "link2"));
  await mirror.remove("link2/keep.txt");
  assert.equal(await readFile(join(outside, "keep.txt"), "utf8"), "precious");
  await mirror.remove("link2");
  assert.equal(
    await readFile(join(outside, "keep.txt"), "utf8"),
    "precious",
    "removing the link kept its target",
  );
  await assert.rejects(lstat(join(root, "link2")));
});

test("a file becomes a folder and a folder becomes a file", async () => {
  const mirror = new Mirror(root, temp);
  await put(mirror, "swap", "I am a file");
  await put(mirror, "swap/inner.txt", "now a folder");
  assert.ok((await lstat(join(root, "swap"))).isDirectory());
  await put(mirror, "swap", "a file again");
  assert.equal(await readFile(join(root, "swap"), "utf8"), "a file again");
});

test("makeFolder sets the mode; remove of a missing path is fine", async () => {
  const mirror = new Mirror(root, temp);
  await mirror.makeFolder("empty/one", 0o700);
  assert.equal((await stat(join(root, "empty/one"))).mode & 0o7777, 0o700);
  await mirror.remove("never/was/here");
  await mirror.remove("empty");
  await assert.rejects(lstat(join(root, "empty")));
});

test("paths that would leave the set are refused", async () => {
  const mirror = new Mirror(root, temp);
  for (const bad of ["../escape", "/abs", "a/../../x", "", "a//b"]) {
    await assert.rejects(mirror.makeFolder(bad, 0o755), { code: "KW_BAD_PATH" }, bad);
    await assert.rejects(mirror.remove(bad), { code: "KW_BAD_PATH" }, bad);
  }
  assert.deepEqual(await readdir(outside), ["keep.txt"]);
});

test("discard removes the temporary file", async () => {
  const mirror = new Mirror(root, temp);
  const pending = await mirror.createPending();
  await pending.handle.write(Buffer.from("partial"));
  await mirror.discard(pending);
  assert.deepEqual(await readdir(temp), []);
});
