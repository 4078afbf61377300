// Odd sources: a watching client meets an unreadable file, files deleted between the
// event and the read, a file growing while it is read, symbolic-link loops, a folder
// replaced by a file and back, case-only renames, mtimes in the future, many edits within
// one second (also on a filesystem with 1-second timestamps) and too few inotify watches.
// For each: the mirror ends equal to what the source holds for everything that can be
// backed up, each problem is reported exactly once, and the client keeps running and
// backs up a later change.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  appendFile,
  chmod,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  symlink,
  truncate,
  unlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  type ClientHandle,
  type KwEvent,
  readTree,
  Sandbox,
  type ServerHandle,
  sleep,
  stackLines,
  type TreeEntry,
  treeDifferences,
} from "./helpers.js";

const NODE = process.execPath;
const IS_ROOT = process.getuid?.() === 0;

/**
 * What the mirror of `root` should hold: its folders and regular files, without symbolic
 * links and other kinds (never backed up) and without the paths in `skip` (relative to
 * `root`). Unlike readTree it never reads a skipped file, which may be unreadable.
 */
async function backableTree(root: string, skip: ReadonlySet<string>): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(rel === "" ? root : join(root, rel))).sort()) {
      const child = rel === "" ? name : `${rel}/${name}`;
      if (skip.has(child)) continue;
      const st = await lstat(join(root, child));
      const base = { mode: st.mode & 0o7777, size: st.size, mtimeMs: st.mtimeMs, sha256: "" };
      if (st.isDirectory()) {
        out.set(child, { ...base, kind: "dir", size: 0 });
        await walk(child);
      } else if (st.isFile()) {
        const sha256 = createHash("sha256")
          .update(await readFile(join(root, child)))
          .digest("hex");
        out.set(child, { ...base, kind: "file", sha256 });
      }
    }
  };
  await walk("");
  return out;
}

/**
 * Start a watching client whose node is run by `wrapper`, a script that execs node with
 * its arguments under other conditions (fewer capabilities, its own inotify limit).
 * helpers.ts spawns `process.execPath` synchronously, before startClient's first await, so
 * pointing it at the wrapper for that one call is enough; it is put back at once.
 */
function startWrappedClient(
  box: Sandbox,
  wrapper: string,
  src: string,
  port: number,
  options: { timeoutMs?: number } = {},
): Promise<ClientHandle> {
  process.execPath = wrapper;
  try {
    return box.startClient(src, port, options);
  } finally {
    process.execPath = NODE;
  }
}

/** A shell script at `path` that runs node with its arguments through `command`. */
async function writeWrapper(path: string, command: string): Promise<string> {
  await writeFile(path, `#!/bin/sh\n${command}\n`, { mode: 0o755 });
  return path;
}

/** Whether a node run through `wrapper` gets EACCES reading `file`. */
function wrapperCannotRead(wrapper: string, file: string): { ok: boolean; detail: string } {
  const probe = spawnSync(
    wrapper,
    [
      "-e",
      `try { require("node:fs").readFileSync(${JSON.stringify(file)}); console.log("read"); } catch (e) { console.log(e.code); }`,
    ],
    { encoding: "utf8", timeout: 10_000 },
  );
  const said = `${probe.stdout ?? ""}${probe.stderr ?? ""}`.trim() || String(probe.error ?? probe.status);
  return { ok: probe.stdout?.trim() === "EACCES", detail: said };
}

describe("keepwatch client on odd sources", { timeout: 150_000 }, () => {
  let box: Sandbox;
  let server: ServerHandle;
  let client: ClientHandle;
  let src: string;
  let dest: string;
  let mirror: string;
  /** Why the unreadable-file case cannot run here; null when it can. */
  let unreadableSkip: string | null = null;
  /** Set-relative paths of `src` that cannot be backed up and were reported. */
  const problemPaths = new Set<string>();
  let later = 0;

  after(() => box?.cleanup());

  before(async () => {
    box = await Sandbox.create(null);
    src = box.path("odd");
    dest = box.path("dest");
    mirror = join(dest, "odd");
    await mkdir(src);
    await writeFile(join(src, "start.txt"), "there from the start\n");
    server = await box.startServer(dest);

    // chmod does not stop root from reading: as root the client runs without the
    // capabilities that bypass file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH).
    const probe = box.path("probe-unreadable");
    await writeFile(probe, "probe\n", { mode: 0o200 });
    let readableByUs = true;
    try {
      await readFile(probe);
    } catch {
      readableByUs = false;
    }
    if (!readableByUs) {
      client = await box.startClient(src, server.port);
      return;
    }
    const wrapper = await writeWrapper(
      box.path("node-without-dac"),
      `exec setpriv --bounding-set -dac_override,-dac_read_search -- ${JSON.stringify(NODE)} "$@"`,
    );
    const check = wrapperCannotRead(wrapper, probe);
    if (check.ok) {
      client = await startWrappedClient(box, wrapper, src, server.port);
      const status = await readFile(`/proc/${client.proc.pid}/status`, "utf8");
      const bounding = BigInt(`0x${/^CapBnd:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? "0"}`);
      assert.equal(bounding & 0b110n, 0n, "the client runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH");
    } else {
      unreadableSkip = `running as root, chmod does not stop reads, and dropping CAP_DAC_OVERRIDE with setpriv failed (${check.detail})`;
      client = await box.startClient(src, server.port);
    }
  });

  /** The client's file-skipped events for `path`, and its warnings that name it. */
  function reportsOf(path: string): KwEvent[] {
    return client.events.filter(
      (e) =>
        (e.event === "file-skipped" && e.path === path) ||
        (e.event === "warning" && typeof e.message === "string" && e.message.includes(path)),
    );
  }

  /** The client's file-skipped and warning events about `dir` or below, and its errors, since index `since`. */
  function reportsBelow(dir: string, since: number): KwEvent[] {
    return client.events
      .slice(since)
      .filter(
        (e) =>
          (e.event === "file-skipped" && (e.path === dir || String(e.path).startsWith(`${dir}/`))) ||
          (e.event === "warning" && String(e.message).includes(dir)) ||
          e.event === "error",
      );
  }

  /**
   * Wait until `mirror/dir` holds exactly what `src/dir` holds that can be backed up:
   * without symbolic links and without `skip` (set-relative paths).
   */
  async function converged(dir: string, skip: string[] = [], timeoutMs = 10_000): Promise<void> {
    const local = new Set(skip.map((p) => p.slice(dir.length + 1)));
    await box.waitUntil(
      `the mirror of ${dir}/ to equal the source (without ${skip.length ? skip.join(", ") : "nothing"})`,
      async () => {
        const expected = await backableTree(join(src, dir), local);
        const actual = await readTree(join(mirror, dir));
        const diffs = treeDifferences(expected, actual);
        return diffs.length === 0 ? true : `differences:\n${diffs.map((d) => `  ${d}`).join("\n")}`;
      },
      { alive: [client.proc, server.proc], timeoutMs },
    );
  }

  /** A change made after the odd one still reaches the mirror: the client is still at work. */
  async function laterChange(dir: string, skip: string[] = []): Promise<void> {
    later++;
    await writeFile(join(src, dir, `later-${later}.txt`), `written after the odd case, #${later}\n`);
    await converged(dir, skip);
    assert.equal(client.proc.running, true, `the client is still running\n${box.report()}`);
  }

  it("an unreadable file: skipped and reported once, its folder backed up, sent once readable", async (t) => {
    if (unreadableSkip !== null) {
      t.skip(unreadableSkip);
      return;
    }
    const dir = "unreadable";
    const secret = `${dir}/secret.txt`;
    // Stays unreadable to the end: the last test checks it is not reported again.
    const locked = `${dir}/locked.txt`;
    await mkdir(join(src, dir));
    await writeFile(join(src, dir, "ok.txt"), "anyone may read this\n");
    // Created without read permission, so the client never sees them readable.
    await writeFile(join(src, secret), "nobody may read this\n", { mode: 0o200 });
    await writeFile(join(src, locked), "nor this\n", { mode: 0o200 });
    await box.waitUntil(
      "both unreadable files to be reported",
      () => (reportsOf(secret).length > 0 && reportsOf(locked).length > 0 ? true : "not yet"),
      { alive: [client.proc, server.proc] },
    );
    await converged(dir, [secret, locked]);
    // Changed again while still unreadable: read again, but not reported again.
    await appendFile(join(src, secret), "still secret\n");
    await appendFile(join(src, locked), "still locked\n");
    await writeFile(join(src, dir, "marker.txt"), "written after the appends\n");
    await converged(dir, [secret, locked]);
    await sleep(300);
    for (const path of [secret, locked]) {
      const reports = reportsOf(path);
      assert.equal(reports.length, 1, `${path} is reported exactly once\n${box.report()}`);
      assert.match(String(reports[0]?.reason), /cannot be read \(EACCES\)/);
      assert.equal(reports[0]?.retry, false);
    }
    problemPaths.add(locked);
    // Made readable, it is backed up with no further report.
    await chmod(join(src, secret), 0o644);
    await converged(dir, [locked]);
    await laterChange(dir, [locked]);
    assert.equal(reportsOf(secret).length, 1, `still reported once\n${box.report()}`);
  });

  it("files deleted between the event and the read: nothing reported, nothing left in the mirror", async () => {
    const dir = "vanishing";
    await mkdir(join(src, dir));
    await writeFile(join(src, dir, "keep.txt"), "stays\n");
    await converged(dir);
    const since = client.events.length;
    // Deleted 0 to 120 ms after being written: before, during and after the quiet period,
    // the comparison with the disk and the open. Every fourth is large enough to be read
    // in several steps.
    await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const file = join(src, dir, `brief-${i}.bin`);
        await writeFile(file, randomBytes(i % 4 === 0 ? 1024 * 1024 : 1000 + i));
        await sleep(i * 3);
        await unlink(file);
      }),
    );
    await converged(dir);
    await sleep(300);
    assert.deepEqual(reportsBelow(dir, since), [], `a vanished file is not a problem\n${box.report()}`);
    await laterChange(dir);
  });

  it("folders deleted between the event and the read: nothing reported, nothing left in the mirror", async () => {
    const dir = "vanishing-folders";
    await mkdir(join(src, dir));
    await writeFile(join(src, dir, "keep.txt"), "stays\n");
    await converged(dir);
    const since = client.events.length;
    await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const folder = join(src, dir, `brief-${i}`);
        await mkdir(join(folder, "inner"), { recursive: true });
        await writeFile(join(folder, "a.txt"), `a ${i}\n`);
        await writeFile(join(folder, "inner", "b.txt"), `b ${i}\n`);
        await sleep(i * 5);
        await rm(folder, { recursive: true });
      }),
    );
    await converged(dir);
    await sleep(300);
    assert.deepEqual(reportsBelow(dir, since), [], `a vanished folder is not a problem\n${box.report()}`);
    await laterChange(dir);
  });

  it("a file growing while it is read: its final content arrives, nothing reported", async () => {
    const dir = "growing";
    const path = `${dir}/log.bin`;
    await mkdir(join(src, dir));
    const since = client.events.length;
    const handle = await open(join(src, path), "a");
    // Appends with pauses long enough (40 ms) for the client to start reading between them.
    const stopAt = Date.now() + 2500;
    try {
      for (let i = 0; Date.now() < stopAt; i++) {
        await handle.write(randomBytes(64 * 1024));
        await sleep(i % 4 === 0 ? 40 : 3);
      }
    } finally {
      await handle.close();
    }
    await converged(dir, [], 20_000);
    assert.deepEqual(reportsBelow(dir, since), [], `nothing to report\n${box.report()}`);
    await laterChange(dir);
  });

  it("symbolic-link loops: each link reported once, never followed", async () => {
    const dir = "links";
    const links = [`${dir}/loop-a`, `${dir}/loop-b`, `${dir}/self`, `${dir}/sub/up`];
    await mkdir(join(src, dir, "sub"), { recursive: true });
    await writeFile(join(src, dir, "plain.txt"), "a plain file beside the loops\n");
    await writeFile(join(src, dir, "sub", "deep.txt"), "below the loop\n");
    await symlink("loop-b", join(src, dir, "loop-a"));
    await symlink("loop-a", join(src, dir, "loop-b"));
    await symlink(".", join(src, dir, "self"));
    await symlink("..", join(src, dir, "sub", "up"));
    await box.waitUntil(
      "every link to be reported",
      () => {
        const missing = links.filter((p) => reportsOf(p).length === 0);
        return missing.length === 0 ? true : `not reported yet: ${missing.join(", ")}`;
      },
      { alive: [client.proc, server.proc] },
    );
    await converged(dir);
    for (const link of links) problemPaths.add(link);
    // Made again: looked at again, not reported again.
    await unlink(join(src, dir, "loop-a"));
    await symlink("loop-b", join(src, dir, "loop-a"));
    await writeFile(join(src, dir, "marker.txt"), "written after the link was made again\n");
    await converged(dir);
    await sleep(300);
    for (const link of links) {
      const reports = reportsOf(link);
      assert.equal(reports.length, 1, `${link} is reported exactly once\n${box.report()}`);
      assert.match(String(reports[0]?.reason), /symbolic link/);
    }
    assert.equal(await readlink(join(src, dir, "self")), ".");
    await laterChange(dir);
  });

  it("a folder replaced by a file and back, slowly and at once", async () => {
    const dir = "shape";
    const thing = join(src, dir, "thing");
    const since = client.events.length;
    await mkdir(join(thing, "deep"), { recursive: true });
    await writeFile(join(thing, "a.txt"), "in the folder\n");
    await writeFile(join(thing, "deep", "b.txt"), "deep in the folder\n");
    await converged(dir);
    await rm(thing, { recursive: true });
    await writeFile(thing, "now a file\n");
    await converged(dir);
    await unlink(thing);
    await mkdir(thing);
    await writeFile(join(thing, "c.txt"), "a folder again\n");
    await converged(dir);
    // All within the quiet period.
    await rm(thing, { recursive: true });
    await writeFile(thing, "a file for a moment\n");
    await unlink(thing);
    await mkdir(join(thing, "again"), { recursive: true });
    await writeFile(join(thing, "again", "d.txt"), "and a folder once more\n");
    await converged(dir);
    await rm(thing, { recursive: true });
    await writeFile(thing, "and last a file\n");
    await converged(dir);
    assert.deepEqual(reportsBelow(dir, since), [], `nothing to report\n${box.report()}`);
    await laterChange(dir);
  });

  it("a case-only rename (A.txt to a.txt, Docs/ to docs/)", async () => {
    const dir = "case";
    const since = client.events.length;
    await mkdir(join(src, dir, "Docs"), { recursive: true });
    await writeFile(join(src, dir, "A.txt"), "upper case name\n");
    await writeFile(join(src, dir, "Docs", "Readme.md"), "# readme\n");
    await converged(dir);
    await rename(join(src, dir, "A.txt"), join(src, dir, "a.txt"));
    await rename(join(src, dir, "Docs"), join(src, dir, "docs"));
    await converged(dir);
    assert.deepEqual((await readdir(join(mirror, dir))).sort(), ["a.txt", "docs"]);
    await writeFile(join(src, dir, "docs", "Readme.md"), "# readme, edited after the rename\n");
    await converged(dir);
    assert.deepEqual(reportsBelow(dir, since), [], `nothing to report\n${box.report()}`);
    await laterChange(dir);
  });

  it("files with mtimes in the future (and the far past) keep them, and later edits arrive", async () => {
    const dir = "future";
    const since = client.events.length;
    const far = new Date("2100-01-01T00:00:00.250Z");
    const soon = new Date(Date.now() + 3600_000);
    await mkdir(join(src, dir));
    for (const [name, when] of [
      ["far.txt", far],
      ["soon.txt", soon],
      ["ancient.txt", new Date("1971-02-03T04:05:06Z")],
    ] as const) {
      await writeFile(join(src, dir, name), `${name}\n`);
      await utimes(join(src, dir, name), when, when);
    }
    await converged(dir);
    const mirrored = await stat(join(mirror, dir, "far.txt"));
    assert.equal(mirrored.mtime.toISOString(), far.toISOString());
    // An edit moves the mtime back to now; another keeps it in the future.
    await writeFile(join(src, dir, "far.txt"), "far.txt, edited now\n");
    await converged(dir);
    await writeFile(join(src, dir, "soon.txt"), "soon.txt, edited and still in the future\n");
    await utimes(join(src, dir, "soon.txt"), soon, soon);
    await converged(dir);
    assert.deepEqual(reportsBelow(dir, since), [], `nothing to report\n${box.report()}`);
    await laterChange(dir);
  });

  it("several edits within the same second: the last one arrives", async () => {
    const dir = "edits";
    const note = join(src, dir, "note.txt");
    const since = client.events.length;
    await mkdir(join(src, dir));
    await writeFile(note, "edit 00\n");
    await converged(dir);
    // Same size every time, a few ms apart: only the content (and mtime) tells them apart.
    for (let i = 1; i <= 20; i++) {
      await writeFile(note, `edit ${String(i).padStart(2, "0")}\n`);
      await sleep(i % 5);
    }
    await converged(dir);
    // Again, each edit waiting for the previous one to be acknowledged.
    for (let i = 21; i <= 25; i++) {
      await writeFile(note, `edit ${i}\n`);
      await converged(dir);
    }
    assert.equal(await readFile(join(mirror, dir, "note.txt"), "utf8"), "edit 25\n");
    assert.deepEqual(reportsBelow(dir, since), [], `nothing to report\n${box.report()}`);
    await laterChange(dir);
  });

  it("several edits within the same second on a filesystem with 1-second timestamps", async (t) => {
    if (!IS_ROOT) {
      t.skip("needs root to loop-mount an ext4 with 128-byte inodes (1-second timestamps)");
      return;
    }
    const image = box.path("coarse.img");
    const mount = box.path("coarse-mount");
    await mkdir(mount);
    await writeFile(image, "");
    await truncate(image, 16 * 1024 * 1024);
    const made = spawnSync("mkfs.ext4", ["-q", "-F", "-I", "128", image], { encoding: "utf8" });
    if (made.status !== 0) {
      t.skip(`mkfs.ext4 -I 128 is not available here: ${(made.stderr || String(made.error)).trim()}`);
      return;
    }
    const mounted = spawnSync("mount", ["-o", "loop", image, mount], { encoding: "utf8" });
    if (mounted.status !== 0) {
      t.skip(`a loop mount is not possible here: ${(mounted.stderr || String(mounted.error)).trim()}`);
      return;
    }
    box.onCleanup(() => {
      if (spawnSync("umount", [mount]).status !== 0) spawnSync("umount", ["-l", mount]);
    });
    const coarse = join(mount, "coarse");
    const coarseMirror = join(dest, "coarse");
    await mkdir(coarse);
    const note = join(coarse, "note.txt");
    await writeFile(note, "version 0\n");
    const second = await box.startClient(coarse, server.port);
    const sameAsSource = async (): Promise<true | string> => {
      const diffs = treeDifferences(await readTree(coarse), await readTree(coarseMirror));
      return diffs.length === 0 ? true : diffs.join("; ");
    };
    const alive = [second.proc, server.proc];
    t.after(() => second.kill().then(() => {}));
    await box.waitUntil("the coarse set's first backup", sameAsSource, { alive });
    // Two edits of the same size ("version N", "changed N") within one second: the
    // filesystem gives both the same mtime and ctime. The second comes 150 ms after the
    // first, long after the client's quiet period (30 ms): a client that read the first
    // at once would find nothing to tell the second from it.
    let secondEdit: { first: number; second: number } | null = null;
    for (let attempt = 1; attempt <= 3 && secondEdit === null; attempt++) {
      await sleep(1010 - (Date.now() % 1000));
      await writeFile(note, `version ${attempt}\n`);
      const first = (await stat(note)).mtimeMs;
      await sleep(150);
      await writeFile(note, `changed ${attempt}\n`);
      const again = (await stat(note)).mtimeMs;
      if (again === first) secondEdit = { first, second: again };
    }
    assert.ok(secondEdit, "two edits landed in the same second of the filesystem's clock");
    await box.waitUntil("the second edit of the same second in the mirror", sameAsSource, {
      alive,
      timeoutMs: 5000,
    });
    await writeFile(join(coarse, "later.txt"), "a later change\n");
    await box.waitUntil("a later change in the mirror", sameAsSource, { alive });
  });

  it("out of inotify watches: says so once, falls back to rescans, and backs up every folder", async (t) => {
    // The limit is lowered for the client alone: in a user namespace of its own, whose
    // max_inotify_watches (5.11+) caps it without touching the system-wide
    // fs.inotify.max_user_watches other processes (and other tests) depend on.
    const limit = 4;
    const wrapper = await writeWrapper(
      box.path("node-with-few-watches"),
      `exec unshare --user --map-root-user sh -c 'echo ${limit} > /proc/sys/user/max_inotify_watches && exec "$0" "$@"' ${JSON.stringify(NODE)} "$@"`,
    );
    const probe = spawnSync(wrapper, ["-e", "process.exit(0)"], { encoding: "utf8", timeout: 10_000 });
    if (probe.status !== 0) {
      t.skip(
        `a user namespace with its own inotify limit cannot be made here (${(probe.stderr || String(probe.error)).trim()}); the watcher has no other way to simulate running out`,
      );
      return;
    }
    const crowded = box.path("crowded");
    const crowdedMirror = join(dest, "crowded");
    const folders = Array.from({ length: 12 }, (_, i) => `f${String(i).padStart(2, "0")}`);
    for (const folder of folders) {
      await mkdir(join(crowded, folder, "inner"), { recursive: true });
      await writeFile(join(crowded, folder, "file.txt"), `${folder}\n`);
    }
    const third = await startWrappedClient(box, wrapper, crowded, server.port);
    t.after(() => third.kill().then(() => {}));
    assert.notEqual(
      await readlink(`/proc/${third.proc.pid}/ns/user`),
      await readlink("/proc/self/ns/user"),
      "the client runs in its own user namespace",
    );
    const alive = [third.proc, server.proc];
    const sameAsSource = async (): Promise<true | string> => {
      const diffs = treeDifferences(await readTree(crowded), await readTree(crowdedMirror));
      return diffs.length === 0 ? true : diffs.join("; ");
    };
    const limitWarnings = () =>
      third.proc.eventsOf("warning").filter((e) => /inotify/.test(String(e.message)));
    await box.waitUntil("the first backup", sameAsSource, { alive });
    assert.equal(limitWarnings().length, 1, `one warning about the inotify limit\n${box.report()}`);
    assert.match(String(limitWarnings()[0]?.message), /rescanned every \d+ s/);
    // A change in every folder: the unwatched ones are found by the next rescan (10 s).
    for (const folder of folders) await writeFile(join(crowded, folder, "inner", "later.txt"), "later\n");
    await box.waitUntil("a change in every folder to arrive", sameAsSource, { alive, timeoutMs: 25_000 });
    // New folders need watches too, which are still not to be had: no second warning.
    for (let i = 0; i < 3; i++) {
      await mkdir(join(crowded, `new-${i}`));
      await writeFile(join(crowded, `new-${i}`, "x.txt"), `new ${i}\n`);
    }
    await box.waitUntil("the new folders to arrive", sameAsSource, { alive, timeoutMs: 25_000 });
    assert.equal(limitWarnings().length, 1, `still one warning about the inotify limit\n${box.report()}`);
    assert.deepEqual(third.proc.eventsOf("error"), []);
    assert.equal(third.proc.running, true);
  });

  it("after a reconnect and a full rescan every problem is still reported exactly once", async () => {
    const since = client.events.length;
    const port = server.port;
    await server.kill();
    await box.waitForEvent(client.proc, "disconnected", { since, alive: [client.proc] });
    server = await box.startServer(dest, { port });
    await box.waitForEvent(client.proc, "connected", { since, alive: [client.proc, server.proc] });
    await box.waitForEvent(client.proc, "idle", { since, alive: [client.proc, server.proc] });
    const expected = await backableTree(src, problemPaths);
    const diffs = treeDifferences(expected, await readTree(mirror));
    assert.deepEqual(diffs, [], `the whole mirror equals the source\n${box.report()}`);
    for (const path of problemPaths) {
      assert.equal(reportsOf(path).length, 1, `${path} is reported exactly once\n${box.report()}`);
    }
    assert.deepEqual(client.proc.eventsOf("error"), [], `no error\n${box.report()}`);
    const status = await client.kill();
    assert.deepEqual(status, { code: 0, signal: null }, `the client stops cleanly\n${box.report()}`);
    assert.deepEqual(stackLines(client.proc.stderr), []);
    assert.deepEqual(client.proc.otherLines, [], "every client stdout line is a JSON event");
  });
});
