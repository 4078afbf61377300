// One-shot backups with `keepwatch push`: a tree full of awkward names reaches the mirror
// intact (bytes, mode, mtime), unchanged files are not sent again on the next run, and
// `--force` sends everything again.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmod, mkdir, readdir, stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { QUEUE_LIMIT } from "../src/client/worker.js";
import { DEFAULT_WINDOW } from "../src/server/server.js";
import { compareTrees, type KwEvent, type RunResult, readTree, Sandbox, stackLines } from "./helpers.js";

/** Files of the awkward tree (set-relative), with content; folders are made as needed. */
function awkwardFiles(): Map<string, Buffer> {
  return new Map<string, Buffer>([
    ["plain.txt", Buffer.from("hello\n")],
    ["with spaces in name.txt", Buffer.from("spaces\n")],
    ["ü/日本", Buffer.from("unicode folder and name\n")],
    ["line\nbreak.txt", Buffer.from("a newline in the name\n")],
    ["-rf", Buffer.from("leading dash\n")],
    ["empty.bin", Buffer.alloc(0)],
    ["a/b/c/d/deep.txt", Buffer.from("nested\n")],
    ["a/b/sibling.txt", Buffer.from("sibling\n")],
    ["big/random-3MiB.bin", randomBytes(3 * 1024 * 1024)],
    ["secret.key", Buffer.from("private\n")],
    ["run.sh", Buffer.from("#!/bin/sh\necho hi\n")],
    ["old.txt", Buffer.from("an old file\n")],
  ]);
}

async function makeAwkwardTree(src: string): Promise<string[]> {
  const files = awkwardFiles();
  for (const [rel, content] of files) {
    await mkdir(join(src, rel, ".."), { recursive: true });
    await writeFile(join(src, rel), content);
  }
  await mkdir(join(src, "empty folder"), { recursive: true });
  await mkdir(join(src, "private dir"), { mode: 0o700 });
  await chmod(join(src, "private dir"), 0o700);
  await writeFile(join(src, "private dir", "inside.txt"), "x");
  files.set("private dir/inside.txt", Buffer.from("x"));
  await chmod(join(src, "secret.key"), 0o600);
  await chmod(join(src, "run.sh"), 0o755);
  // A past mtime with a millisecond part, so "now" cannot pass for a copied mtime.
  const past = new Date(Date.UTC(2001, 8, 9, 1, 46, 40, 123));
  await utimes(join(src, "old.txt"), past, past);
  return [...files.keys()].sort();
}

function putPaths(events: KwEvent[]): string[] {
  return events
    .filter((e) => e.event === "file-done" && e.op === "put")
    .map((e) => String(e.path))
    .sort();
}

function assertCleanRun(result: RunResult, what: string): void {
  const context = `${what}\n${result.proc.describe(30)}`;
  assert.equal(result.code, 0, `${what} should exit 0\n${context}`);
  assert.deepEqual(stackLines(result.stderr), [], `${what} printed a stack trace\n${context}`);
  assert.deepEqual(result.otherLines, [], `${what}: every stdout line should be a JSON event\n${context}`);
  assert.deepEqual(
    result.events.filter((e) => e.event === "error" || e.event === "file-skipped"),
    [],
    `${what} reported errors\n${context}`,
  );
}

test("push backs up an awkward tree exactly, skips unchanged files, and --force sends all again", {
  timeout: 90_000,
}, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("photos");
  await mkdir(src);
  const files = await makeAwkwardTree(src);
  const dest = box.path("dest"); // not created: the server makes it
  const server = await box.startServer(dest);
  const mirror = join(dest, "photos"); // the set is named after SRC's folder
  const sessionEnds = () => server.proc.eventsOf("peer-disconnected").length;

  // 1. First push: everything arrives, with bytes, mode and mtime.
  const first = await box.push(src, server.port);
  assertCleanRun(first, "the first push");
  assert.deepEqual(
    await compareTrees(src, mirror),
    [],
    `mirror differs after the first push\n${box.report()}`,
  );
  assert.deepEqual(putPaths(first.events), files, "the push reports every file as put");
  await box.waitUntil(
    "the server to see the first push end",
    () => sessionEnds() >= 1 || `${sessionEnds()} ended`,
  );
  assert.deepEqual(putPaths(server.events), files, `the server stored every file once\n${box.report()}`);
  const scan1 = first.events.find((e) => e.event === "scan-done");
  assert.equal(scan1?.files, files.length, "scan-done counts every file");
  assert.equal(scan1?.changedFiles, files.length, "on the first push every file is changed");
  // Spot checks that do not rely on the tree helper.
  assert.equal((await stat(join(mirror, "secret.key"))).mode & 0o777, 0o600);
  assert.equal((await stat(join(mirror, "run.sh"))).mode & 0o777, 0o755);
  assert.equal((await stat(join(mirror, "old.txt"))).mtime.toISOString(), "2001-09-09T01:46:40.123Z");
  assert.deepEqual(await readdir(join(mirror, "empty folder")), []);

  // 2. Second push, new process: nothing is unchanged-but-sent.
  const before2 = server.events.length;
  const second = await box.push(src, server.port);
  assertCleanRun(second, "the second push");
  await box.waitUntil(
    "the server to see the second push end",
    () => sessionEnds() >= 2 || `${sessionEnds()} ended`,
  );
  assert.deepEqual(
    putPaths(server.events.slice(before2)),
    [],
    `the second push stored files again\n${box.report()}`,
  );
  assert.deepEqual(putPaths(second.events), [], "the second push reports no file sent");
  const scan2 = second.events.find((e) => e.event === "scan-done");
  assert.equal(scan2?.files, files.length);
  assert.equal(scan2?.changedFiles, 0, "nothing changed since the first push");
  assert.deepEqual(await compareTrees(src, mirror), []);

  // 3. --force: every file is stored again.
  const before3 = server.events.length;
  const forced = await box.push(src, server.port, ["--force"]);
  assertCleanRun(forced, "push --force");
  await box.waitUntil(
    "the server to see the forced push end",
    () => sessionEnds() >= 3 || `${sessionEnds()} ended`,
  );
  assert.deepEqual(
    putPaths(server.events.slice(before3)),
    files,
    `--force stores every file again\n${box.report()}`,
  );
  assert.deepEqual(await compareTrees(src, mirror), []);

  // No temporary file is left behind, and nothing but the set and .keepwatch in DEST.
  assert.deepEqual(await readdir(join(dest, ".keepwatch", "tmp")), [], "DEST/.keepwatch/tmp is empty");
  assert.deepEqual((await readdir(dest)).sort(), [".keepwatch", "photos"]);
  assert.equal(server.proc.running, true, "the server is still running");
  assert.deepEqual(server.proc.otherLines, [], "every server stdout line is a JSON event");
  assert.deepEqual(stackLines(server.proc.stderr), []);
  // The mirror is a plain tree: every path is a file or folder, no leftovers.
  for (const [path, entry] of await readTree(mirror)) {
    assert.ok(entry.kind === "file" || entry.kind === "dir", `${JSON.stringify(path)} is a ${entry.kind}`);
  }
});

test("a first push queues a tree folder by folder: what waits to be sent does not grow with the tree", {
  timeout: 120_000,
}, async (t) => {
  // The scan hands each folder's operations to the worker and waits while its queue is
  // full. Before, the whole tree's operations were listed first: memory grew with the file
  // count (about 0.4 KiB a file), past 150 MiB for 250,000 files.
  const box = await Sandbox.create(t);
  const src = box.path("many");
  const folders = 40;
  const perFolder = 100;
  for (let d = 0; d < folders; d++) {
    await mkdir(join(src, `d${String(d).padStart(2, "0")}`), { recursive: true });
    for (let i = 0; i < perFolder; i++)
      await writeFile(join(src, `d${String(d).padStart(2, "0")}`, `f${i}`), `${d}/${i}`);
  }
  const server = await box.startServer(box.path("dest"));
  const result = await box.push(src, server.port);
  assertCleanRun(result, "the push");
  // Files announced to the progress display and not yet acknowledged, at every event.
  let waiting = 0;
  let most = 0;
  for (const e of result.events) {
    if (e.event === "queued") waiting += Number(e.files);
    if (e.event === "file-done" && e.op === "put") waiting--;
    most = Math.max(most, waiting);
  }
  assert.equal(putPaths(result.events).length, folders * perFolder, "every file was sent");
  assert.equal(waiting, 0, "every file announced was acknowledged");
  assert.ok(
    most <= QUEUE_LIMIT + perFolder + DEFAULT_WINDOW,
    `at most the queue, one folder and the window wait at once; ${most} did, of ${folders * perFolder}`,
  );
  assert.deepEqual(await compareTrees(src, join(box.path("dest"), "many")), [], box.report());
});
