import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { lstat, mkdir, mkdtemp, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { diskEntry, type Operation, scan } from "./scanner.js";
import { ClientState } from "./state.js";

const CHILD = join(dirname(fileURLToPath(import.meta.url)), "scanner.child.ts");

let base: string;
let src: string;
let state: ClientState;

before(async () => {
  base = await mkdtemp(join(tmpdir(), "kw-scan-"));
  src = join(base, "src");
  await mkdir(join(src, "dir/sub"), { recursive: true });
  await writeFile(join(src, "a.txt"), "a");
  await writeFile(join(src, "dir/b.txt"), "bb");
  await writeFile(join(src, "dir/sub/c.txt"), "ccc");
  await symlink("/etc/passwd", join(src, "link"));
  state = ClientState.open(join(base, "state"), "store-1", "src", src);
});

after(async () => {
  state.close();
  await rm(base, { recursive: true, force: true });
});

/** Record every operation as acknowledged, as the worker does after each ACK. */
async function acknowledge(ops: Operation[]): Promise<void> {
  for (const op of ops) {
    if (op.op === "delete") state.removeTree(op.path);
    else if (op.op === "mkdir") state.recordFolder(op.path, op.mode);
    else {
      const entry = diskEntry(op.path, await lstat(join(src, op.path)));
      assert.ok(entry);
      state.recordFile(op.path, { ...entry, sha256: Buffer.alloc(32), chunks: null, marks: null });
    }
  }
}

test("a first scan finds every file and folder and reports the symlink", async () => {
  const result = await scan(src, "", state);
  assert.equal(result.files, 3);
  assert.equal(result.bytes, 6);
  const summary = result.operations.map((op) => `${op.op} ${op.path}`);
  assert.deepEqual(summary, [
    "mkdir dir",
    "mkdir dir/sub",
    "put a.txt",
    "put dir/b.txt",
    "put dir/sub/c.txt",
  ]);
  assert.deepEqual(
    result.problems.map((p) => p.path),
    ["link"],
  );
  await acknowledge(result.operations);
});

test("nothing is sent again once acknowledged, unless forced", async () => {
  assert.deepEqual((await scan(src, "", state)).operations, []);
  const forced = await scan(src, "", state, true);
  assert.deepEqual(
    forced.operations.map((op) => op.path),
    ["a.txt", "dir/b.txt", "dir/sub/c.txt"],
  );
});

test("a changed file and a removed subtree (reported once, at its top)", async () => {
  await writeFile(join(src, "a.txt"), "changed");
  await rm(join(src, "dir"), { recursive: true });
  const result = await scan(src, "", state);
  assert.deepEqual(
    result.operations.map((op) => `${op.op} ${op.path}`),
    ["delete dir", "put a.txt"],
  );
  await acknowledge(result.operations);
  assert.equal(state.get("dir/sub/c.txt"), undefined);
});

test("a scan of one path looks only there", async () => {
  await mkdir(join(src, "other"));
  await writeFile(join(src, "other/x"), "x");
  await writeFile(join(src, "a.txt"), "changed again");
  const result = await scan(src, "other", state);
  assert.deepEqual(
    result.operations.map((op) => `${op.op} ${op.path}`),
    ["mkdir other", "put other/x"],
  );
});

test("a vanished SRC is an error, never a delete of everything", async () => {
  const gone = join(base, "gone");
  const other = ClientState.open(join(base, "state"), "store-1", "gone", gone);
  other.recordFile("f", {
    size: 1,
    mtimeMs: 1,
    mode: 0o644,
    ino: 1,
    ctimeMs: 1,
    sha256: Buffer.alloc(32),
    chunks: null,
    marks: null,
  });
  await assert.rejects(scan(gone, "", other), { code: "KW_SOURCE_MISSING" });
  assert.ok(other.get("f"), "the record was kept");
  other.close();
});

test("a same-size rewrite whose mtime was set back is seen by its ctime", async () => {
  const root = join(base, "ctime");
  await mkdir(join(root, "d"), { recursive: true });
  await writeFile(join(root, "note.txt"), "version 1");
  const own = ClientState.open(join(base, "state"), "store-1", "ctime", root);
  try {
    const first = await scan(root, "", own);
    for (const op of first.operations) {
      if (op.op === "mkdir") own.recordFolder(op.path, op.mode);
      if (op.op !== "put") continue;
      const entry = diskEntry(op.path, await lstat(join(root, op.path)));
      assert.ok(entry);
      own.recordFile(op.path, { ...entry, sha256: Buffer.alloc(32), chunks: null, marks: null });
    }
    assert.deepEqual((await scan(root, "", own)).operations, [], "nothing changed yet");
    const before = await stat(join(root, "note.txt"));
    await new Promise((resolve) => setTimeout(resolve, 20));
    await writeFile(join(root, "note.txt"), "version 2");
    await utimes(join(root, "note.txt"), before.atime, before.mtime);
    const after = await scan(root, "", own);
    assert.deepEqual(
      after.operations.map((op) => `${op.op} ${op.path}`),
      ["put note.txt"],
      "the rewrite is found although size and mtime are as before",
    );
    assert.deepEqual(after.problems, []);
  } finally {
    own.close();
  }
});

test("a tree of many files, and as many deletes, are listed without overflowing the stack", async () => {
  // Joining the operations by spread arguments threw "Maximum call stack size exceeded"
  // for a tree of about 125,000 files or more, so a first backup of such a tree failed. A
  // process with an eighth of the usual stack lets 20,000 files stand for them.
  const root = join(base, "many");
  for (let d = 0; d < 4; d++) {
    mkdirSync(join(root, `d${d}`), { recursive: true });
    for (let i = 0; i < 5000; i++) closeSync(openSync(join(root, `d${d}`, String(i)), "w"));
  }
  try {
    const child = spawnSync(
      process.execPath,
      ["--stack-size=120", "--import", "tsx", CHILD, root, join(base, "many-state"), "20000"],
      { encoding: "utf8" },
    );
    assert.equal(child.status, 0, child.stderr);
    const out = JSON.parse(child.stdout) as {
      files: number;
      kinds: Record<string, number>;
      first: Operation;
    };
    assert.equal(out.files, 20_000);
    assert.deepEqual(out.kinds, { delete: 20_000, mkdir: 4, put: 20_000 });
    assert.deepEqual(out.first, { op: "delete", path: "gone0" }, "deletes first, in order");
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
