import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { displayWidth, TtyPrinter } from "./tty.js";

/**
 * A terminal that keeps a screen: it applies the few ANSI sequences cli-progress and the
 * printer use (cursor up/down, column, erase), so tests read what a person would see.
 */
function fakeTerminal(columns: number) {
  const rows: string[][] = [[]];
  let row = 0;
  let col = 0;
  const line = () => {
    while (rows.length <= row) rows.push([]);
    return rows[row] as string[];
  };
  const terminal = {
    isTTY: true,
    columns,
    /** everything written, escapes included */
    raw: "",
    write(chunk: string | Uint8Array, cb?: unknown) {
      const text = String(chunk);
      terminal.raw += text;
      // biome-ignore lint/suspicious/noControlCharactersInRegex: parsing ANSI escapes is the point
      for (const [, csi, char] of text.matchAll(/\x1b\[([0-9;?]*[A-Za-z])|([^\x1b])/gsu)) {
        if (char === "\n") {
          row += 1;
          col = 0;
          line();
        } else if (char !== undefined) {
          line()[col++] = char;
        } else if (csi !== undefined) {
          const n = Number.parseInt(csi, 10);
          const op = csi.at(-1);
          if (op === "A") row = Math.max(0, row - (n || 1));
          else if (op === "B") row += n || 1;
          else if (op === "G") col = (n || 1) - 1;
          else if (op === "K" && csi === "2K") rows[row] = [];
          else if (op === "K") line().length = Math.min(line().length, col);
          else if (op === "J") {
            line().length = Math.min(line().length, col);
            rows.length = row + 1;
          }
        }
      }
      if (typeof cb === "function") cb();
      return true;
    },
    screen(): string[] {
      return rows.map((cells) =>
        Array.from(cells, (c) => c ?? " ")
          .join("")
          .trimEnd(),
      );
    },
  };
  return terminal;
}

const NOW = Date.parse("2026-11-24T07:34:24Z");
/** Log lines carry the local wall-clock time. */
const CLOCK = new Date(NOW).toTimeString().slice(0, 8);

function open(columns: number, side: "client" | "server" = "client") {
  const terminal = fakeTerminal(columns);
  const stream = terminal as unknown as NodeJS.WritableStream;
  const printer = new TtyPrinter({ stream, side, fps: 50, now: () => NOW });
  return { terminal, printer };
}

describe("TtyPrinter", () => {
  it("draws the batch and the current file, logs events above them, and ends idle", async () => {
    const { terminal, printer } = open(100);
    printer.emit({ kind: "connected", host: "127.0.0.1", port: 7468, set: "notes" });
    printer.emit({ kind: "queued", files: 2, bytes: 2048 });
    printer.emit({ kind: "file-start", path: "notes/a.txt", size: 1024 });
    printer.emit({ kind: "file-progress", path: "notes/a.txt", bytes: 512, size: 1024 });
    await sleep(100);
    const busy = terminal.screen();
    assert.ok(
      busy.some((line) => line.includes("connected to 127.0.0.1:7468, set notes")),
      "logged line",
    );
    assert.ok(busy.some((line) => line.startsWith("sending 0/2 files · 512 B/2.0 KiB [")));
    assert.ok(
      busy.some((line) => line.startsWith("  ↳ notes/a.txt 512 B/1.0 KiB [") && line.includes(" 50% ")),
    );

    // Lines logged now land where the bars were drawn; no bar text may show through.
    printer.emit({ kind: "info", message: "a" });
    printer.emit({ kind: "warning", message: "b" });
    printer.emit({ kind: "file-done", path: "notes/a.txt", op: "put", size: 1024 });
    printer.emit({ kind: "file-done", path: "b.txt", op: "put", size: 1024 });
    printer.emit({ kind: "idle", files: 40, bytes: 3 * 1024 * 1024 });
    printer.close();
    assert.deepEqual(terminal.screen(), [
      `${CLOCK} connected to 127.0.0.1:7468, set notes`,
      `${CLOCK} a`,
      `${CLOCK} warning: b`,
      "✓ all backed up · 40 files, 3.0 MiB · watching for changes",
      "  last: sent b.txt (1.0 KiB)",
      "",
    ]);
  });

  it("draws unchanged bars again below a line logged over them", async () => {
    const { terminal, printer } = open(80);
    printer.emit({ kind: "idle", files: 1, bytes: 1 });
    await sleep(60);
    printer.emit({ kind: "info", message: "hello" });
    await sleep(60);
    assert.deepEqual(terminal.screen().slice(0, 2), [
      `${CLOCK} hello`,
      "✓ all backed up · 1 file, 1 B · watching for changes",
    ]);
    printer.close();
  });

  it("fits long names into a narrow terminal, keeping the end of the path", () => {
    const { terminal, printer } = open(50);
    const path = `${"deep/".repeat(20)}report-final.pdf`;
    printer.emit({ kind: "queued", files: 1, bytes: 10 * 1024 * 1024 });
    printer.emit({ kind: "file-start", path, size: 10 * 1024 * 1024 });
    printer.emit({ kind: "file-progress", path, bytes: 1024 * 1024, size: 10 * 1024 * 1024 });
    printer.close();
    const [batch, file] = terminal.screen();
    assert.ok(file?.includes("…") && file.includes("report-final.pdf"), file);
    for (const line of [batch ?? "", file ?? ""]) {
      assert.ok(displayWidth(line) <= 49, `${JSON.stringify(line)} is ${displayWidth(line)} columns`);
    }
  });

  it("never lets a control character in a name reach the terminal", () => {
    const { terminal, printer } = open(80);
    printer.emit({ kind: "file-start", path: "x\u001b[2Jy\nz", size: 10 });
    printer.emit({ kind: "file-skipped", path: "p\rq", reason: "gone", retry: false });
    printer.close();
    assert.ok(!terminal.raw.includes("\u001b[2J"));
    assert.ok(!terminal.raw.includes("\r"));
    assert.ok(!terminal.raw.includes("y\nz"));
    const screen = terminal.screen();
    assert.equal(screen[0], `${CLOCK} skipped "p\\rq": gone`);
    assert.ok(screen[2]?.startsWith('  ↳ "x\\u001b[2Jy\\nz" 0 B/10 B'), screen[2]);
  });

  it("shows the server waiting for clients, then receiving", () => {
    const { terminal, printer } = open(80, "server");
    printer.emit({
      kind: "listening",
      host: "0.0.0.0",
      port: 7468,
      dest: "/srv/mirror",
      fingerprint: "SHA256:abc",
    });
    printer.emit({
      kind: "peer-connected",
      peer: "10.0.0.2:5000",
      client: "laptop",
      principal: "laptop",
      set: "docs",
    });
    printer.emit({ kind: "file-start", path: "a", size: 100 });
    printer.close();
    const lines = terminal.screen();
    assert.ok(
      lines.some((line) =>
        line.endsWith("listening on 0.0.0.0:7468, mirroring into /srv/mirror, TLS fingerprint SHA256:abc"),
      ),
    );
    assert.ok(lines.some((line) => line.startsWith("receiving 0/1 files · 0 B/100 B [")));
  });
});
