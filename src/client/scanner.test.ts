import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { lstat, mkdir, mkdtemp, readdir, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { byUtf8, diskEntry, type Operation, type ScanSink, scan } from "./scanner.js";
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

/** One scan, with every operation and problem it handed on listed in order. */
async function scanAll(
  root: string,
  start: string,
  own: ClientState,
  force = false,
  sizes: { sliceSize?: number; runSize?: number; spillMemory?: number } = {},
) {
  const operations: Operation[] = [];
  const batches: number[] = [];
  const problems: { path: string; reason: string }[] = [];
  const sink: ScanSink = {
    operations: async (ops) => {
      for (const op of ops) operations.push(op);
      batches.push(ops.length);
      return true;
    },
    problem: (path, reason) => problems.push({ path, reason }),
  };
  const summary = await scan(root, start, own, sink, { force, ...sizes });
  return { ...summary, operations, problems, batches };
}

/** Runs `check` with a state of its own for the set `name` of `root`, closed after. */
async function withState(
  name: string,
  root: string,
  check: (own: ClientState) => Promise<void>,
): Promise<void> {
  const own = ClientState.open(join(base, "state"), "store-1", name, root);
  try {
    await check(own);
  } finally {
    own.close();
  }
}

/** Record every operation as acknowledged, as the worker does after each ACK. */
async function acknowledge(ops: Operation[], own = state, root = src): Promise<void> {
  for (const op of ops) {
    if (op.op === "delete") own.removeTree(op.path);
    else if (op.op === "mkdir") own.recordFolder(op.path, op.mode);
    else {
      const entry = diskEntry(op.path, await lstat(join(root, op.path)));
      assert.ok(entry);
      own.recordFile(op.path, { ...entry, sha256: Buffer.alloc(32), chunks: null, marks: null });
    }
  }
}

test("a first scan finds every file and folder and reports the symlink", async () => {
  const result = await scanAll(src, "", state);
  assert.equal(result.files, 3);
  assert.equal(result.bytes, 6);
  const summary = result.operations.map((op) => `${op.op} ${op.path}`);
  assert.deepEqual(summary, [
    "mkdir dir",
    "put a.txt",
    "mkdir dir/sub",
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
  assert.deepEqual((await scanAll(src, "", state)).operations, []);
  const forced = await scanAll(src, "", state, true);
  assert.deepEqual(
    forced.operations.map((op) => op.path),
    ["a.txt", "dir/b.txt", "dir/sub/c.txt"],
  );
});

test("a changed file and a removed subtree (reported once, at its top)", async () => {
  await writeFile(join(src, "a.txt"), "changed");
  await rm(join(src, "dir"), { recursive: true });
  const result = await scanAll(src, "", state);
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
  const result = await scanAll(src, "other", state);
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
  await assert.rejects(scanAll(gone, "", other), { code: "KW_SOURCE_MISSING" });
  assert.ok(other.get("f"), "the record was kept");
  other.close();
});

test("a same-size rewrite whose mtime was set back is seen by its ctime", async () => {
  const root = join(base, "ctime");
  await mkdir(join(root, "d"), { recursive: true });
  await writeFile(join(root, "note.txt"), "version 1");
  await withState("ctime", root, async (own) => {
    const first = await scanAll(root, "", own);
    await acknowledge(first.operations, own, root);
    assert.deepEqual((await scanAll(root, "", own)).operations, [], "nothing changed yet");
    const before = await stat(join(root, "note.txt"));
    await new Promise((resolve) => setTimeout(resolve, 20));
    await writeFile(join(root, "note.txt"), "version 2");
    await utimes(join(root, "note.txt"), before.atime, before.mtime);
    const after = await scanAll(root, "", own);
    assert.deepEqual(
      after.operations.map((op) => `${op.op} ${op.path}`),
      ["put note.txt"],
      "the rewrite is found although size and mtime are as before",
    );
    assert.deepEqual(after.problems, []);
  });
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

test("operations are handed on a folder at a time, and the scan waits for the sink", async () => {
  // What keeps a first backup's memory from growing with the tree: the scan holds one
  // folder's operations, and goes on only when the worker's queue has room.
  const root = join(base, "waits");
  for (const d of ["a", "b", "c"]) {
    await mkdir(join(root, d), { recursive: true });
    for (let i = 0; i < 3; i++) await writeFile(join(root, d, `f${i}`), d);
  }
  await withState("waits", root, async (own) => {
    const batches: string[][] = [];
    let letGo: (goOn: boolean) => void = () => {};
    let arrived: () => void = () => {};
    const arrival = () => new Promise<void>((resolve) => (arrived = resolve));
    let next = arrival();
    const sink: ScanSink = {
      operations: (ops) => {
        batches.push(ops.map((op) => `${op.op} ${op.path}`));
        arrived();
        return new Promise((resolve) => (letGo = resolve));
      },
      problem: () => {},
    };
    const running = scan(root, "", own, sink);
    // Time for the scan to go on if it wrongly did (a wait that can only hide a failure).
    const pause = () => new Promise((resolve) => setTimeout(resolve, 50));
    await next;
    await pause();
    assert.deepEqual(
      batches,
      [["mkdir a", "mkdir b", "mkdir c"]],
      "only the top folder, while the sink waits",
    );
    next = arrival();
    letGo(true);
    await next;
    assert.deepEqual(batches[1], ["put a/f0", "put a/f1", "put a/f2"]);
    await pause();
    assert.equal(batches.length, 2, "folder b waits for room");
    letGo(false);
    const summary = await running;
    assert.equal(batches.length, 2, "a sink that says stop ends the scan");
    assert.equal(summary.files, 3, "folders b and c were not visited");
  });
});

test("a file where a folder was: what was recorded below it is deleted first", async () => {
  const root = join(base, "replaced");
  await mkdir(join(root, "x/deep"), { recursive: true });
  await writeFile(join(root, "x/deep/f"), "f");
  await writeFile(join(root, "x/g"), "g");
  await withState("replaced", root, async (own) => {
    const first = await scanAll(root, "", own);
    await acknowledge(first.operations, own, root);
    await rm(join(root, "x"), { recursive: true });
    await writeFile(join(root, "x"), "now a file");
    const whole = await scanAll(root, "", own);
    assert.deepEqual(
      whole.operations.map((op) => `${op.op} ${op.path}`),
      ["delete x/deep", "delete x/g", "put x"],
    );
    const one = await scanAll(root, "x", own);
    assert.deepEqual(
      one.operations.map((op) => `${op.op} ${op.path}`),
      ["delete x/deep", "delete x/g", "put x"],
      "the same from a scan of that path alone",
    );
    await rm(join(root, "x"));
    const gone = await scanAll(root, "x", own);
    assert.deepEqual(
      gone.operations.map((op) => `${op.op} ${op.path}`),
      ["delete x"],
      "a path gone: its top only",
    );
  });
});

test("a file where a large folder was: what was recorded below it is deleted a page at a time", async () => {
  const root = join(base, "replaced-paged");
  await mkdir(join(root, "x/b"), { recursive: true });
  await mkdir(join(root, "x/f"), { recursive: true });
  for (const path of ["x/a", "x/b/c", "x/b/d", "x/e", "x/f/g", "x!y"])
    await writeFile(join(root, path), path);
  await withState("replaced-paged", root, async (own) => {
    const first = await scanAll(root, "", own);
    // x/f/g is recorded, its folder is not (a file sent before its folder's own request).
    await acknowledge(
      first.operations.filter((op) => !(op.op === "mkdir" && op.path === "x/f")),
      own,
      root,
    );
    await rm(join(root, "x"), { recursive: true });
    await writeFile(join(root, "x"), "now a file");
    // Pages of 2 records: [x/a, x/b], [x/b/c, x/b/d] (below the recorded x/b: none),
    // [x/e, x/f/g], then the put.
    const paged = await scanAll(root, "", own, false, { sliceSize: 2 });
    assert.deepEqual(
      paged.operations.map((op) => `${op.op} ${op.path}`),
      ["delete x/a", "delete x/b", "delete x/e", "delete x/f/g", "put x"],
    );
    assert.deepEqual(paged.batches, [2, 2, 1], "handed a page at a time, never the folder whole");
  });
});

test("paths sent without an answer are deleted once gone, each removed subtree at its top", async () => {
  const root = join(base, "lost");
  await mkdir(join(root, "kept"), { recursive: true });
  await writeFile(join(root, "kept/here"), "h");
  await withState("lost", root, async (own) => {
    for (const path of ["kept/here", "old", "old/a", "old/a/b", "other"]) own.markSent(path);
    const result = await scanAll(root, "", own);
    assert.deepEqual(
      result.operations.map((op) => `${op.op} ${op.path}`),
      ["delete old", "delete other", "mkdir kept", "put kept/here"],
    );
  });
});

test("a folder larger than a slice is compared a slice at a time, with the same outcome", async () => {
  // A folder of 200,000 files is not held as 200,000 records and operations: its names are
  // compared with the records between the slice's first and last name. Names beyond U+FFFF
  // sort differently in JavaScript and in SQLite, and must land in the right slice.
  const root = join(base, "wide");
  const names = ["a", "b", "c", "d", "e", "f", "g", "\u{1F600}", "\u{1F601}", "\uFF01", "\uFF02"];
  await mkdir(join(root, "m"), { recursive: true });
  await writeFile(join(root, "m/inner"), "i");
  for (const name of names) await writeFile(join(root, name), name);
  await withState("wide", root, async (own) => {
    const first = await scanAll(root, "", own);
    await acknowledge(first.operations, own, root);
    for (const gone of ["b", "e", "\uFF01", "\u{1F600}"]) await rm(join(root, gone));
    await writeFile(join(root, "bb"), "new");
    await writeFile(join(root, "h"), "new");
    await writeFile(join(root, "c"), "changed!");
    const whole = await scanAll(root, "", own);
    const expected = [
      "delete b",
      "delete e",
      "delete \uFF01",
      "delete \u{1F600}",
      "put bb",
      "put c",
      "put h",
    ];
    assert.deepEqual(
      whole.operations.map((op) => `${op.op} ${op.path}`),
      expected,
    );
    // Also with the listing sorted in runs of 2 on disk, and subfolders waiting on disk.
    for (const sizes of [{}, { runSize: 2, spillMemory: 1 }]) {
      for (const sliceSize of [1, 2, 3]) {
        const sliced = await scanAll(root, "", own, false, { sliceSize, ...sizes });
        assert.deepEqual(
          sliced.operations.map((op) => `${op.op} ${op.path}`).sort(),
          [...expected].sort(),
          `slices of ${sliceSize}, ${JSON.stringify(sizes)}`,
        );
        assert.ok(Math.max(...sliced.batches) <= sliceSize + 2, `batches of ${sliced.batches.join(", ")}`);
        assert.equal(sliced.files, whole.files);
      }
    }
    const left = (await readdir(own.scratchFolder)).filter((name) => name.startsWith(".keepwatch-scratch"));
    assert.deepEqual(left, [], "scratch files are unlinked");
  });
});

test("many records between two names (files deleted since) are compared a slice at a time", async () => {
  // 50 files deleted between "a" and "z": their records are not read, nor deleted, at once.
  const root = join(base, "thinned");
  await mkdir(root, { recursive: true });
  const gone = Array.from({ length: 50 }, (_, i) => `m${String(i).padStart(3, "0")}`);
  for (const name of ["a", ...gone, "z"]) await writeFile(join(root, name), name);
  await withState("thinned", root, async (own) => {
    await acknowledge((await scanAll(root, "", own)).operations, own, root);
    for (const name of gone) await rm(join(root, name));
    await writeFile(join(root, "n"), "new");
    await writeFile(join(root, "zz"), "new");
    for (const sliceSize of [1, 4, 1024]) {
      const scanned = await scanAll(root, "", own, false, { sliceSize });
      assert.deepEqual(
        scanned.operations.map((op) => `${op.op} ${op.path}`).sort(),
        [...gone.map((name) => `delete ${name}`), "put n", "put zz"].sort(),
        `slices of ${sliceSize}`,
      );
      // A slice: at most sliceSize records (deletes) and sliceSize names (puts).
      assert.ok(Math.max(...scanned.batches) <= 2 * sliceSize, `batches of ${scanned.batches.join(", ")}`);
    }
  });
});

test("names are ordered by their UTF-8 bytes, as SQLite orders paths", () => {
  const names = ["\uFF01", "\u{1F600}", "z", "a", "\uE000", "\uD7FF", "ab", ""];
  const sorted = [...names].sort(byUtf8);
  assert.deepEqual(
    sorted,
    [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))),
  );
  assert.deepEqual(sorted.slice(-2), ["\uFF01", "\u{1F600}"]);
});

test("a folder the server made on the way to a file is deleted once gone, though it was never sent itself", async () => {
  // The chaos test found one: a watcher's event sent a file before the scan sent its
  // folder, the client was killed, and the folder was renamed away; the server kept it.
  const root = join(base, "implicit");
  await mkdir(join(root, "x/y"), { recursive: true });
  await writeFile(join(root, "x/y/f"), "f");
  await withState("implicit", root, async (own) => {
    // What the worker does for such a file: mark it as sent, then record its answer.
    own.markSent("x/y/f");
    const entry = diskEntry("x/y/f", await lstat(join(root, "x/y/f")));
    assert.ok(entry);
    own.recordFile("x/y/f", { ...entry, sha256: Buffer.alloc(32), chunks: null, marks: null });
    await rm(join(root, "x"), { recursive: true });
    const result = await scanAll(root, "", own);
    assert.deepEqual(
      result.operations.map((op) => `${op.op} ${op.path}`),
      ["delete x"],
    );
  });
});
