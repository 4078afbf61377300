import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { ProgressEvent } from "./events.js";
import { JsonPrinter } from "./json.js";

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

  it("writes synchronously to a file descriptor, so nothing waits for the event loop", () => {
    const dir = mkdtempSync(join(tmpdir(), "keepwatch-json-"));
    try {
      const file = join(dir, "out.jsonl");
      const fd = openSync(file, "w");
      const printer = new JsonPrinter({ dest: fd });
      printer.emit({ kind: "info", message: "one" });
      printer.emit({ kind: "error", message: "two", code: "KW_X" });
      // Read before close and before any tick: a buffered writer would show nothing yet.
      const lines = readFileSync(file, "utf8").trimEnd().split("\n");
      printer.close();
      closeSync(fd);
      assert.equal(lines.length, 2);
      const [first, second] = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
      assert.equal(first?.event, "info");
      assert.equal(second?.code, "KW_X");
      assert.ok(!Number.isNaN(Date.parse(String(second?.time))));
    } finally {
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
