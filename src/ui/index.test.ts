import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { chooseMode, createPrinter } from "./index.js";

describe("chooseMode", () => {
  it("lets --json win, then --quiet, then picks bars only for a terminal", () => {
    assert.equal(chooseMode({ json: true, quiet: true, isTTY: true }), "json");
    assert.equal(chooseMode({ quiet: true, isTTY: true }), "quiet");
    assert.equal(chooseMode({ isTTY: true }), "tty");
    assert.equal(chooseMode({ isTTY: false }), "plain");
  });
});

describe("createPrinter", () => {
  it("falls back to plain lines when asked for bars on a stream that is no terminal", () => {
    const stream = new PassThrough();
    const printer = createPrinter({
      mode: "tty",
      side: "client",
      stream: stream as unknown as NodeJS.WriteStream,
    });
    printer.reporter.emit({ kind: "file-done", path: "a.txt", op: "put", size: 3 });
    printer.close();
    assert.match(String(stream.read()), /^\S+Z sent a\.txt \(3 B\)\n$/);
  });

  it("writes JSON lines to a stream without a descriptor", () => {
    const stream = new PassThrough();
    const printer = createPrinter({
      mode: "json",
      side: "server",
      stream: stream as unknown as NodeJS.WriteStream,
    });
    printer.reporter.emit({
      kind: "listening",
      host: "127.0.0.1",
      port: 7468,
      dest: "/x",
      fingerprint: null,
    });
    printer.close();
    const line = JSON.parse(String(stream.read())) as Record<string, unknown>;
    assert.equal(line.event, "listening");
    assert.equal(line.dest, "/x");
  });
});

describe("quiet mode", () => {
  it("prints only warnings and errors", () => {
    const stream = new PassThrough();
    const printer = createPrinter({
      mode: "quiet",
      side: "client",
      stream: stream as unknown as NodeJS.WriteStream,
    });
    printer.reporter.emit({ kind: "info", message: "hello" });
    printer.reporter.emit({ kind: "file-done", path: "a", op: "put", size: 1 });
    printer.reporter.emit({ kind: "warning", message: "careful" });
    printer.reporter.emit({ kind: "error", message: "broken", code: "KW_X" });
    printer.close();
    const lines = String(stream.read()).trimEnd().split("\n");
    assert.equal(lines.length, 2);
    assert.match(lines[0] ?? "", /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z warning: careful$/);
    assert.match(lines[1] ?? "", / error: broken \(KW_X\)$/);
  });
});
