// The DEST lock: which holders may share it (a server and verify; rebuild-mirror and
// verify), which exclude each other (two servers, a server and prune, prune and verify),
// what the one turned away is told, and that a holder killed with SIGKILL leaves no
// stale lock behind (the kernel drops its file locks).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, test } from "node:test";
import { fileURLToPath } from "node:url";
import { KeepwatchError } from "../errors.js";
import { DestLock, HOLDER_FILE, type LockHolder } from "./dest-lock.js";

let control: string;

beforeEach(async () => {
  control = await mkdtemp(join(tmpdir(), "keepwatch-lock-"));
});
afterEach(async () => {
  await rm(control, { recursive: true, force: true });
});

function refused(holder: LockHolder, fragment: RegExp): void {
  assert.throws(
    () => DestLock.acquire(control, holder),
    (error: unknown) => {
      assert.ok(error instanceof KeepwatchError);
      assert.equal(error.code, "KW_DEST_IN_USE");
      assert.equal(error.exitCode, 3);
      assert.match(error.message, fragment);
      return true;
    },
  );
}

test("a server excludes a second server, prune and rebuild-mirror, naming its pid; verify reads beside it", () => {
  const server = DestLock.acquire(control, "server");
  try {
    const pid = new RegExp(`keepwatch server \\(pid ${process.pid}, since `);
    refused("server", pid);
    refused("prune", pid);
    refused("rebuild-mirror", pid);
    const verify = DestLock.acquire(control, "verify");
    verify.release();
  } finally {
    server.release();
  }
  DestLock.acquire(control, "server").release();
});

test("prune excludes verify and is excluded by it", async () => {
  const prune = DestLock.acquire(control, "prune");
  const note = JSON.parse(await readFile(join(control, HOLDER_FILE), "utf8")) as {
    command: string;
    pid: number;
  };
  assert.deepEqual([note.command, note.pid], ["prune", process.pid]);
  refused("verify", /in use by keepwatch prune .*wait for it to finish before running keepwatch verify/);
  refused("server", /keepwatch prune/);
  prune.release();
  await assert.rejects(readFile(join(control, HOLDER_FILE)), "the holder's note goes with the lock");

  const verify = DestLock.acquire(control, "verify");
  const other = DestLock.acquire(control, "verify");
  refused("prune", /being read by keepwatch verify; run keepwatch prune again once it has finished/);
  DestLock.acquire(control, "rebuild-mirror").release();
  verify.release();
  other.release();
  DestLock.acquire(control, "prune").release();
});

test("a holder killed with SIGKILL leaves no stale lock", async () => {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "--input-type=module",
      "-e",
      `const { DestLock } = await import(${JSON.stringify(fileURLToPath(new URL("./dest-lock.ts", import.meta.url)))});
       DestLock.acquire(process.argv[1], "prune");
       process.stdout.write("held\\n");
       setInterval(() => {}, 1000);`,
      control,
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on("data", (text: Buffer) => {
        if (text.toString().includes("held")) resolve();
      });
      child.on("exit", () => reject(new Error("the child exited before taking the lock")));
    });
    refused("server", new RegExp(`keepwatch prune \\(pid ${child.pid}, `));
  } finally {
    const exited = new Promise((resolve) => child.on("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  }
  // Its note is still there, naming a process that is gone; the lock is free all the same.
  const server = DestLock.acquire(control, "server");
  server.release();
});
