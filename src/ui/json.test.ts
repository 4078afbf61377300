import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { ProgressEvent } from "./events.js";
import { JsonPrinter } from "./json.js";

const CHILD = join(dirname(fileURLToPath(import.meta.url)), "json.child.ts");

const EVENTS: ProgressEvent[] = [
  { kind: "connected", host: "127.0.0.1", port: 7468, set: "notes" },
  { kind: "queued", files: 2, bytes: 13 },
  { kind: "file-start", path: "a.txt", size: 12 },
  { kind: "file-progress", path: "a.txt", bytes: 6, size: 12 },
  { kind: "file-done", path: "a.txt", op: "put", size: 12 },
  { kind: "file-start", path: "line\nbreak.txt", size: 1 },
  { kind: "file-progress", path: "line\nbreak.txt", bytes: 1, size: 1 },
  { kind: "file-done", path: "line\nbreak.txt", op: "put", size: 1 },
  { kind: "warning", message: 'quote " and \u2028 separator' },
  { kind: "idle", files: 2, bytes: 13 },
];

const WITHOUT_PROGRESS = EVENTS.filter((event) => event.kind !== "file-progress");

function expected(event: ProgressEvent, time: string): Record<string, unknown> {
  const { kind, ...fields } = event;
  return { time, event: kind, ...fields };
}

describe("JsonPrinter", () => {
  it("writes one parseable object per line per event, without file-progress", () => {
    let out = "";
    const t = Date.parse("2026-11-24T07:34:24.123Z");
    const printer = new JsonPrinter({
      dest: {
        write(s: string) {
          out += s;
        },
      },
      now: () => t,
    });
    for (const event of EVENTS) printer.emit(event);
    printer.close();

    assert.ok(out.endsWith("\n"));
    const lines = out.slice(0, -1).split("\n");
    assert.equal(lines.length, WITHOUT_PROGRESS.length, "one line per event, a newline in a name included");
    const objects = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.deepEqual(
      objects,
      WITHOUT_PROGRESS.map((event) => expected(event, "2026-11-24T07:34:24.123Z")),
    );
    assert.ok(lines[0]?.startsWith('{"time":"2026-11-24T07:34:24.123Z","event":"connected",'));
  });

  it("writes the lines of one turn of the event loop to a file descriptor at its end, and at close", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keepwatch-json-"));
    try {
      const file = join(dir, "out.jsonl");
      const fd = openSync(file, "w");
      const printer = new JsonPrinter({ dest: fd });
      const read = () =>
        readFileSync(file, "utf8")
          .split("\n")
          .filter((line) => line !== "");
      printer.emit({ kind: "info", message: "one" });
      printer.emit({ kind: "error", message: "two", code: "KW_X" });
      assert.deepEqual(read(), [], "nothing yet: the turn is still running");
      await new Promise((resolve) => setImmediate(resolve));
      const lines = read();
      assert.equal(lines.length, 2, "both lines once the turn ended");
      const [first, second] = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
      assert.equal(first?.event, "info");
      assert.equal(second?.code, "KW_X");
      assert.ok(!Number.isNaN(Date.parse(String(second?.time))));
      printer.emit({ kind: "info", message: "three" });
      printer.close();
      assert.equal(read().length, 3, "close writes what the turn held");
      printer.emit({ kind: "info", message: "late" });
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(read().length, 3, "nothing after close");
      closeSync(fd);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  /** Run json.child.ts; its stdout is read only after `pauseMs`, or closed after its first bytes. */
  async function runChild(args: string[], reader: { pauseMs: number } | "hang up") {
    const child = spawn(process.execPath, ["--import", "tsx", CHILD, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (part: string) => {
      stderr += part;
    });
    const closed = new Promise<number | null>((resolve) => child.once("close", resolve));
    let text = "";
    if (reader === "hang up") {
      child.stdout.once("data", () => child.stdout.destroy());
    } else {
      child.stdout.pause();
      await new Promise((resolve) => setTimeout(resolve, reader.pauseMs));
      child.stdout.setEncoding("utf8").on("data", (part: string) => {
        text += part;
      });
      child.stdout.resume();
    }
    const code = await closed;
    return { code, stderr, lines: text.split("\n").filter((line) => line !== "") };
  }

  it("writes the lines still held when the program calls process.exit", async () => {
    const { code, lines } = await runChild(["3", "2"], { pauseMs: 0 });
    assert.equal(code, 7);
    assert.equal(lines.length, 6, "the last turn's lines too");
    assert.match(lines[5] ?? "", /"message":"turn 2 event 1 x+"/);
  });

  it("waits for a slow reader of a full pipe and loses no line", async () => {
    // 2,000 lines of about 110 bytes in each of 4 turns: far more than a pipe holds.
    const { code, stderr, lines } = await runChild(["4", "2000"], { pauseMs: 500 });
    assert.equal(code, 7);
    assert.equal(stderr, "done\n");
    assert.equal(lines.length, 8000);
    assert.match(lines[7999] ?? "", /"message":"turn 3 event 1999 x+"/);
  });

  it("stops quietly when the reader hangs up, and the program goes on", async () => {
    const { code, stderr } = await runChild(["50", "2000"], "hang up");
    assert.equal(code, 7, "it ran to its end");
    assert.equal(stderr, "done\n", "no error, no sentence: a reader that left is not a failure");
  });

  it("says so in one sentence when its output cannot be written, and the program goes on", async (t) => {
    // A full disk needs a small filesystem: a tmpfs, which only root may mount.
    if (process.getuid?.() !== 0) return t.skip("mounting a small tmpfs needs root");
    const dir = mkdtempSync(join(tmpdir(), "keepwatch-json-full-"));
    const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir], { encoding: "utf8" });
    if (mounted.status !== 0) {
      rmSync(dir, { recursive: true, force: true });
      return t.skip(`mounting a tmpfs is not allowed here: ${mounted.stderr.trim()}`);
    }
    try {
      const out = openSync(join(dir, "out.jsonl"), "w");
      // 20 turns of 200 lines, about 440 KB: the 64 KiB disk fills in the first turns.
      const child = spawn(process.execPath, ["--import", "tsx", CHILD, "20", "200"], {
        stdio: ["ignore", out, "pipe"],
      });
      closeSync(out);
      let stderr = "";
      child.stderr?.setEncoding("utf8").on("data", (part: string) => {
        stderr += part;
      });
      const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
      assert.equal(code, 7, "it ran to its end");
      const lines = stderr.split("\n").filter((line) => line !== "");
      assert.equal(lines.length, 2, stderr);
      assert.match(
        lines[0] ?? "",
        /^keepwatch: writing the --json output failed \(ENOSPC.*\), so no more of it is written while the backup goes on; free space where it goes, or send it elsewhere\.$/,
      );
      assert.equal(lines[1], "done");
    } finally {
      if (spawnSync("umount", [dir]).status !== 0) spawnSync("umount", ["-l", dir]);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("drops events after close", () => {
    let out = "";
    const printer = new JsonPrinter({
      dest: {
        write(s: string) {
          out += s;
        },
      },
    });
    printer.close();
    printer.emit({ kind: "info", message: "late" });
    assert.equal(out, "");
  });
});
