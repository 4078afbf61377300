import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const CHILD = join(dirname(fileURLToPath(import.meta.url)), "common.child.ts");

test("a command's output reaches a slow reader in full before the program exits", async () => {
  const lines = 100_000;
  const child = spawn(process.execPath, ["--import", "tsx", CHILD, String(lines)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const closed = new Promise<number | null>((resolve) => child.once("close", resolve));
  // Far more than a pipe holds (5 MB against 64 KiB), and nobody reads for a while.
  child.stdout.pause();
  await new Promise((resolve) => setTimeout(resolve, 1500));
  let text = "";
  child.stdout.setEncoding("utf8").on("data", (part: string) => {
    text += part;
  });
  child.stdout.resume();
  const code = await closed;
  assert.equal(code, 3, "the command's own exit code");
  const got = text.split("\n").filter((line) => line !== "");
  assert.equal(got.length, lines);
  assert.equal(got[lines - 1], `line ${lines - 1} ${"x".repeat(40)}`);
});
