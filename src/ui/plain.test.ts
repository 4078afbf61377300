import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ProgressEvent } from "./events.js";
import { formatBytes, formatDuration, PlainPrinter, printable, type Side } from "./plain.js";

const T0 = Date.parse("2026-11-24T07:34:24.123Z");

/** Prints `events` one millisecond apart and returns the lines written. */
function print(side: Side, events: ProgressEvent[]): string[] {
  let out = "";
  let t = T0;
  const printer = new PlainPrinter({
    sink: {
      write(s: string) {
        out += s;
      },
    },
    side,
    now: () => t,
  });
  for (const [i, event] of events.entries()) {
    t = T0 + i;
    printer.emit(event);
  }
  printer.close();
  assert.ok(out === "" || out.endsWith("\n"), "every line is terminated");
  return out === "" ? [] : out.slice(0, -1).split("\n");
}

describe("PlainPrinter", () => {
  it("prints one line per meaningful client event, skipping per-chunk progress", () => {
    const lines = print("client", [
      { kind: "scan-start", root: "/home/ann/notes" },
      { kind: "scan-done", files: 3, bytes: 3072, changedFiles: 1, changedBytes: 12 },
      { kind: "connected", host: "127.0.0.1", port: 7468, set: "notes" },
      { kind: "queued", files: 2, bytes: 12 },
      { kind: "file-start", path: "notes/a.txt", size: 12 },
      { kind: "file-progress", path: "notes/a.txt", bytes: 6, size: 12 },
      { kind: "file-progress", path: "notes/a.txt", bytes: 12, size: 12 },
      { kind: "file-done", path: "notes/a.txt", op: "put", size: 12 },
      { kind: "file-done", path: "old/b.txt", op: "delete", size: 0 },
      { kind: "file-skipped", path: "locked.db", reason: "permission denied", retry: true },
      { kind: "idle", files: 3, bytes: 5 * 1024 * 1024 },
      { kind: "disconnected", reason: "The connection was reset.", retryInMs: 5000 },
      { kind: "warning", message: "clock skew", code: "KW_CLOCK" },
      { kind: "error", message: "server refused the set", code: "KW_BAD_SET_NAME" },
    ]);
    assert.deepEqual(lines, [
      "2026-11-24T07:34:24.123Z scanning /home/ann/notes",
      "2026-11-24T07:34:24.124Z scanned 3 files (3.0 KiB), 1 changed (12 B)",
      "2026-11-24T07:34:24.125Z connected to 127.0.0.1:7468, set notes",
      "2026-11-24T07:34:24.130Z sent notes/a.txt (12 B)",
      "2026-11-24T07:34:24.131Z deleted old/b.txt",
      "2026-11-24T07:34:24.132Z skipped locked.db: permission denied (will retry)",
      "2026-11-24T07:34:24.133Z all changes backed up (3 files, 5.0 MiB); watching",
      "2026-11-24T07:34:24.134Z disconnected: The connection was reset. Retrying in 5s.",
      "2026-11-24T07:34:24.135Z warning: clock skew (KW_CLOCK)",
      "2026-11-24T07:34:24.136Z error: server refused the set (KW_BAD_SET_NAME)",
    ]);
  });

  it("words the server side as storing into a set", () => {
    const lines = print("server", [
      { kind: "listening", host: "::1", port: 7468, dest: "/x/dest", fingerprint: "SHA256:abc" },
      {
        kind: "peer-connected",
        peer: "10.0.0.2:51234",
        client: "laptop",
        principal: "laptop",
        set: "photos",
      },
      { kind: "file-start", path: "a.jpg", size: 2_621_440 },
      { kind: "file-done", path: "a.jpg", op: "put", size: 2_621_440, set: "photos" },
      { kind: "file-done", path: "albums", op: "mkdir", size: 0, set: "photos" },
      { kind: "peer-disconnected", peer: "10.0.0.2:51234", set: "photos" },
      { kind: "peer-disconnected", peer: "10.0.0.3:40000", set: "photos", reason: "timed out" },
    ]);
    assert.deepEqual(
      lines.map((line) => line.slice(25)),
      [
        "listening on [::1]:7468, mirroring into /x/dest, TLS fingerprint SHA256:abc",
        "client laptop (laptop) connected from 10.0.0.2:51234, set photos",
        "stored a.jpg (2.5 MiB) in set photos",
        "created directory albums in set photos",
        "client at 10.0.0.2:51234 (set photos) disconnected",
        "client at 10.0.0.3:40000 (set photos) disconnected: timed out",
      ],
    );
  });

  it("keeps a file name with a newline on one line, quoted", () => {
    const lines = print("client", [
      { kind: "file-done", path: "evil\nname.txt", op: "put", size: 1 },
      { kind: "warning", message: "cannot read\r\u001b[2Jx" },
    ]);
    assert.equal(lines.length, 2);
    assert.equal(lines[0]?.slice(25), 'sent "evil\\nname.txt" (1 B)');
    assert.equal(lines[1]?.slice(25), 'warning: "cannot read\\r\\u001b[2Jx"');
  });

  it("prints idle again only after more work", () => {
    const idle: ProgressEvent = { kind: "idle", files: 1, bytes: 1 };
    const lines = print("client", [
      idle,
      idle,
      { kind: "file-done", path: "a", op: "put", size: 1 },
      idle,
      idle,
    ]);
    assert.equal(lines.filter((line) => line.includes("all changes backed up")).length, 2);
  });

  it("prints nothing after close", () => {
    let out = "";
    const printer = new PlainPrinter({
      sink: {
        write(s: string) {
          out += s;
        },
      },
      side: "client",
    });
    printer.close();
    printer.emit({ kind: "info", message: "late" });
    assert.equal(out, "");
  });
});

describe("formatting", () => {
  it("formats bytes in binary units", () => {
    assert.equal(formatBytes(0), "0 B");
    assert.equal(formatBytes(1023), "1023 B");
    assert.equal(formatBytes(1024), "1.0 KiB");
    assert.equal(formatBytes(1536), "1.5 KiB");
    assert.equal(formatBytes(5 * 1024 ** 2), "5.0 MiB");
    assert.equal(formatBytes(3.25 * 1024 ** 3), "3.3 GiB");
    assert.equal(formatBytes(2 * 1024 ** 4), "2.0 TiB");
  });

  it("formats durations", () => {
    assert.equal(formatDuration(0), "0s");
    assert.equal(formatDuration(41.2), "42s");
    assert.equal(formatDuration(185), "3m05s");
    assert.equal(formatDuration(7380), "2h03m");
    assert.equal(formatDuration(3 * 86400 + 4 * 3600), "3d04h");
  });

  it("leaves ordinary text alone and escapes every control character", () => {
    assert.equal(printable("notes/ünïcode 文件.txt"), "notes/ünïcode 文件.txt");
    assert.equal(printable("a\tb"), '"a\\tb"');
    assert.equal(printable("del\u007f c1\u009b"), '"del\\u007f c1\\u009b"');
  });
});
