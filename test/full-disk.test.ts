// Full disk: a server whose DEST lies on a small tmpfs (made by the test, so it needs root
// and a kernel that lets it mount). When more arrives than fits, the client is told in a
// clear sentence, the server keeps running, nothing already stored is damaged (`verify`
// stays clean, the mirror's files are intact), and once space is freed the watching
// client catches up by itself.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, readdir, statfs, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
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

const MiB = 1024 * 1024;
/** The tmpfs DEST lives on. */
const DISK_SIZE = "64m";
/** Taken from the disk before the server starts, given back to free space. */
const FILLER_BYTES = 36 * MiB;
/**
 * Random (incompressible) files written once the first backup is done: each takes its
 * size twice on the disk (history and mirror), 36 MiB in all against about 24 MiB free.
 */
const BIG_FILES = 6;
const BIG_FILE_BYTES = 3 * MiB;

const DISK_FULL = /disk is full/;

function unmount(dir: string): void {
  if (spawnSync("umount", [dir]).status !== 0) spawnSync("umount", ["-l", dir]);
}

describe("a server on a full disk", { timeout: 120_000 }, () => {
  let box: Sandbox;
  let server: ServerHandle;
  let client: ClientHandle;
  let disk: string;
  let src: string;
  let dest: string;
  let mirror: string;
  /** Why this machine cannot run the test; null when it can. */
  let cannotRun: string | null = null;
  /** The mirror once the first files were backed up. */
  let firstMirror: Map<string, TreeEntry>;
  // The steps build on each other: after one fails, the rest would only repeat its failure.
  let broken: string | null = null;

  after(() => box?.cleanup());

  before(async () => {
    box = await Sandbox.create(null);
    if (process.getuid?.() !== 0) {
      cannotRun = "a small filesystem for DEST needs root to mount a tmpfs";
      return;
    }
    disk = box.path("small-disk");
    await mkdir(disk);
    const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${DISK_SIZE}`, "tmpfs", disk], {
      encoding: "utf8",
    });
    if (mounted.status !== 0) {
      cannotRun = `mounting a tmpfs is not allowed here (a container?): ${(mounted.stderr || String(mounted.error)).trim()}`;
      return;
    }
    box.onCleanup(() => unmount(disk));
    await writeFile(join(disk, "filler.bin"), Buffer.alloc(FILLER_BYTES, 0x5a));
    src = box.path("work");
    dest = join(disk, "dest");
    mirror = join(dest, "work");
    await mkdir(join(src, "notes"), { recursive: true });
    for (let i = 0; i < 4; i++) await writeFile(join(src, `photo-${i}.raw`), randomBytes(256 * 1024));
    for (let i = 0; i < 10; i++) await writeFile(join(src, "notes", `note-${i}.txt`), `note ${i}\n`);
    server = await box.startServer(dest);
    client = await box.startClient(src, server.port);
  });

  /** Run a step unless an earlier one failed; a failed `blocking` step skips the later ones. */
  async function step(t: TestContext, body: () => Promise<void>, blocking = true): Promise<void> {
    if (cannotRun !== null) {
      t.skip(cannotRun);
      return;
    }
    if (broken !== null) {
      t.skip(`an earlier step failed: ${broken}`);
      return;
    }
    try {
      await body();
    } catch (error) {
      if (blocking) broken = t.name;
      throw error;
    }
  }

  const alive = () => [client.proc, server.proc];

  async function freeBytes(): Promise<number> {
    const fs = await statfs(disk);
    return fs.bavail * fs.bsize;
  }

  /** `keepwatch verify DEST --json`, which may run beside the server. */
  async function verify(full = false): Promise<void> {
    const result = await box.run("verify", ["verify", dest, "--json", ...(full ? ["--full"] : [])]);
    assert.equal(result.code, 0, `verify finds DEST sound\n${result.proc.describe(30)}`);
    assert.deepEqual(stackLines(result.stderr), []);
  }

  /** The client's events that say the server's disk is full. */
  function diskFullReports(events: KwEvent[]): KwEvent[] {
    return events.filter(
      (e) =>
        (e.event === "file-skipped" && DISK_FULL.test(String(e.reason))) ||
        ((e.event === "warning" || e.event === "error") &&
          (DISK_FULL.test(String(e.message)) || e.code === "KW_DISK_FULL")),
    );
  }

  it("backs up the first files; verify is clean", async (t) => {
    await step(t, async () => {
      await box.waitForMirror(src, mirror, { alive: alive() });
      firstMirror = await readTree(mirror);
      await verify();
    });
  });

  it("more than fits arrives: the disk fills, server and client keep running and connected", async (t) => {
    await step(t, async () => {
      await mkdir(join(src, "big"));
      for (let i = 0; i < BIG_FILES; i++) {
        await writeFile(join(src, "big", `video-${i}.raw`), randomBytes(BIG_FILE_BYTES));
      }
      await box.waitUntil(
        "the small disk to be full",
        async () => {
          const free = await freeBytes();
          return free < 2 * MiB ? true : `${(free / MiB).toFixed(1)} MiB free`;
        },
        { alive: alive(), timeoutMs: 30_000 },
      );
      // Give the refusals time to reach the client.
      await sleep(1000);
      assert.deepEqual(
        client.proc.eventsOf("disconnected"),
        [],
        `a full disk does not end the connection\n${box.report()}`,
      );
      assert.deepEqual(client.proc.eventsOf("error"), [], `no error ends the client\n${box.report()}`);
      assert.equal(server.proc.running, true);
    });
  });

  it("the watching client says in a clear sentence that the server's disk is full", async (t) => {
    // Only this report is missing when it fails: the later steps still run.
    const blocking = false;
    await step(
      t,
      async () => {
        // Refused files are retried every 5 s: by then the client has heard of the refusal.
        await box.waitUntil(
          "the client to report the full disk",
          () => (diskFullReports(client.events).length > 0 ? true : "nothing reported yet"),
          { alive: alive(), timeoutMs: 8000 },
        );
        const report = diskFullReports(client.events)[0];
        assert.match(String(report?.reason ?? report?.message), /free space on the server/);
      },
      blocking,
    );
  });

  it("push on the full disk: exit 1, each file not stored named with a clear sentence", async (t) => {
    await step(t, async () => {
      const result = await box.push(src, server.port);
      const context = `\n${result.proc.describe(30)}`;
      assert.equal(result.code, 1, `exit code${context}`);
      assert.deepEqual(stackLines(result.stderr), [], `no stack trace${context}`);
      assert.deepEqual(result.otherLines, [], `only JSON events on stdout${context}`);
      assert.deepEqual(
        result.events.filter((e) => e.event === "error").map((e) => e.code),
        ["KW_PUSH_INCOMPLETE"],
        `one error, KW_PUSH_INCOMPLETE${context}`,
      );
      const skipped = result.events.filter((e) => e.event === "file-skipped");
      assert.ok(skipped.length > 0, `files were skipped${context}`);
      for (const event of skipped) {
        assert.match(String(event.path), /^big\//, `only new files are refused${context}`);
        assert.match(
          String(event.reason),
          /^The server's disk is full, so "big\/video-\d\.raw" was not stored; free space on the server and it will be sent again\.$/,
        );
      }
    });
  });

  it("nothing stored is damaged: verify is clean, the mirror's files are intact", async (t) => {
    await step(t, async () => {
      await verify();
      const now = await readTree(mirror);
      const kept = new Map([...now].filter(([path]) => firstMirror.has(path)));
      assert.deepEqual(treeDifferences(firstMirror, kept), [], "the first files are as they were");
      // What the mirror holds of the new files is complete, never a part.
      const source = await readTree(src);
      for (const [path, entry] of now) {
        if (entry.kind !== "file") continue;
        assert.equal(entry.sha256, source.get(path)?.sha256, `${path} in the mirror is the whole file`);
      }
      assert.equal(server.proc.running, true);
      assert.equal(client.proc.running, true);
    });
  });

  it("once space is freed the watching client catches up, and keeps backing up", async (t) => {
    await step(t, async () => {
      await unlink(join(disk, "filler.bin"));
      // Refused files are tried again every 5 s.
      await box.waitForMirror(src, mirror, { alive: alive(), timeoutMs: 30_000 });
      await writeFile(join(src, "notes", "after.txt"), "written once there was room again\n");
      await box.waitForMirror(src, mirror, { alive: alive() });
      await verify(true);
      assert.deepEqual(await readdir(join(dest, ".keepwatch", "tmp")), [], "no temporary file is left");
      assert.deepEqual(client.proc.eventsOf("disconnected"), []);
      const status = await client.kill();
      assert.deepEqual(status, { code: 0, signal: null }, `the client stops cleanly\n${box.report()}`);
      assert.deepEqual(stackLines(client.proc.stderr), []);
      assert.deepEqual(stackLines(server.proc.stderr), []);
    });
  });
});
