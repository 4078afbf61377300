// Every mistake a person (or a wrong peer) can make ends in one sentence naming the thing,
// the documented exit code and error code, no stack trace, and no change on disk.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect as tlsConnect } from "node:tls";
import { encodeFrame, FrameDecoder, MAGIC } from "../src/protocol/frame.js";
import { decode, encode, MessageType } from "../src/protocol/messages.js";
import {
  compareTrees,
  exists,
  freePort,
  LOOPBACK,
  type PlainListener,
  type RunResult,
  Sandbox,
  type ServerHandle,
  stackLines,
  startPlainListener,
} from "./helpers.js";

interface Expectation {
  exit: number;
  /** Fragments the one stderr sentence must contain (the path, the port, ...). */
  mentions: string[];
}

/** Without --json: the exit code, exactly one `keepwatch: ...` line on stderr, no stack. */
function assertFatal(result: RunResult, expected: Expectation): void {
  const context = `\n${result.proc.describe(30)}`;
  assert.equal(result.code, expected.exit, `exit code${context}`);
  assert.deepEqual(stackLines(result.stderr), [], `a stack trace was printed${context}`);
  assert.deepEqual(stackLines(result.stdout), [], `a stack trace was printed${context}`);
  const lines = result.stderr.split("\n").filter((line) => line.trim() !== "");
  assert.equal(lines.length, 1, `exactly one line on stderr${context}`);
  const line = lines[0] as string;
  assert.match(line, /^keepwatch: \S/, `the line starts with "keepwatch: "${context}`);
  for (const fragment of expected.mentions) {
    assert.ok(line.includes(fragment), `the sentence should mention ${JSON.stringify(fragment)}${context}`);
  }
}

/** With --json: the exit code, an `error` event with `code`, only JSON on stdout, no stack. */
function assertFatalJson(result: RunResult, expected: { exit: number; code: string }): void {
  const context = `\n${result.proc.describe(30)}`;
  assert.equal(result.code, expected.exit, `exit code${context}`);
  assert.deepEqual(result.otherLines, [], `only JSON events on stdout${context}`);
  assert.deepEqual(stackLines(result.stderr), [], `a stack trace was printed${context}`);
  const errors = result.events.filter((e) => e.event === "error");
  assert.deepEqual(
    errors.map((e) => e.code),
    [expected.code],
    `one error event with code ${expected.code}${context}`,
  );
  assert.equal(typeof errors[0]?.message, "string");
}

/** Make `dir` immutable with chattr; false (and nothing changed) when that is not possible. */
function makeImmutable(dir: string): boolean {
  const result = spawnSync("chattr", ["+i", dir], { stdio: "ignore" });
  return result.status === 0;
}

describe("mistakes: one sentence, the right exit code, nothing written", { timeout: 150_000 }, () => {
  let box: Sandbox;
  let server: ServerHandle;
  /** Records connections: client-side mistakes must be caught before connecting. */
  let listener: PlainListener;
  let src: string;
  let dest: string;

  after(() => box?.cleanup());

  before(async () => {
    box = await Sandbox.create(null);
    src = box.path("source");
    dest = box.path("dest");
    await mkdir(src);
    await writeFile(join(src, "file.txt"), "content\n");
    server = await box.startServer(dest);
    listener = await startPlainListener();
    box.onCleanup(() => listener.close());
  });

  /** The server's DEST still holds only its own files, and nobody completed a handshake. */
  async function assertServerUntouched(eventsBefore: number): Promise<void> {
    assert.deepEqual(
      await readdir(dest),
      [".keepwatch"],
      `no set folder was created in DEST\n${box.report()}`,
    );
    assert.deepEqual(await readdir(join(dest, ".keepwatch", "tmp")), [], "DEST/.keepwatch/tmp is empty");
    assert.deepEqual(
      server.proc.eventsOf("peer-connected", eventsBefore),
      [],
      "no client got through the handshake",
    );
    assert.equal(server.proc.running, true, "the server is still running");
  }

  it("push with a missing SRC: exit 3, KW_SOURCE_MISSING, names the path, connects nowhere", async () => {
    const missing = box.path("no-such-folder");
    const plain = await box.push(missing, listener.port, [], { json: false });
    assertFatal(plain, { exit: 3, mentions: [missing] });
    const json = await box.push(missing, listener.port);
    assertFatalJson(json, { exit: 3, code: "KW_SOURCE_MISSING" });
    assert.equal(listener.connections, 0, "nothing connected to the server");
    assert.equal(await exists(box.stateDir), false, "no client state was written");
    assert.equal(await exists(missing), false, "SRC was not created");
  });

  it("client with a missing SRC: exit 3, names the path", async () => {
    const missing = box.path("also-missing");
    const plain = await box.run("client", ["client", missing, LOOPBACK, "--port", String(listener.port)]);
    assertFatal(plain, { exit: 3, mentions: [missing] });
    assert.equal(listener.connections, 0, "nothing connected to the server");
    assert.equal(await exists(missing), false, "SRC was not created");
  });

  it("push with SRC a file: exit 3, KW_SOURCE_NOT_DIR, names the path", async () => {
    const file = box.path("a-file.txt");
    await writeFile(file, "not a folder\n");
    const plain = await box.push(file, listener.port, [], { json: false });
    assertFatal(plain, { exit: 3, mentions: [file] });
    const json = await box.push(file, listener.port);
    assertFatalJson(json, { exit: 3, code: "KW_SOURCE_NOT_DIR" });
    assert.equal(listener.connections, 0, "nothing connected to the server");
    assert.equal(await readFile(file, "utf8"), "not a folder\n");
  });

  it('push --name "..": exit 5, KW_BAD_SET_NAME, checked before connecting', async () => {
    const plain = await box.push(src, listener.port, ["--name", ".."], { json: false });
    assertFatal(plain, { exit: 5, mentions: ['".."'] });
    const json = await box.push(src, listener.port, ["--name", ".."]);
    assertFatalJson(json, { exit: 5, code: "KW_BAD_SET_NAME" });
    assert.equal(listener.connections, 0, "the set name is refused before connecting");
  });

  it('push --name ".keepwatch" to a real server: exit 5, DEST untouched', async () => {
    const storeId = await readFile(join(dest, ".keepwatch", "store-id"), "utf8");
    const controlBefore = (await readdir(join(dest, ".keepwatch"))).sort();
    const since = server.events.length;
    const json = await box.push(src, server.port, ["--name", ".keepwatch"]);
    assertFatalJson(json, { exit: 5, code: "KW_BAD_SET_NAME" });
    await assertServerUntouched(since);
    assert.equal(await readFile(join(dest, ".keepwatch", "store-id"), "utf8"), storeId, "store-id unchanged");
    assert.deepEqual(
      (await readdir(join(dest, ".keepwatch"))).sort(),
      controlBefore,
      "no file added to .keepwatch",
    );
    assert.deepEqual(await readdir(join(dest, ".keepwatch", "tmp")), []);
  });

  it("server with DEST a file: exit 3, KW_DEST_NOT_DIR, the file untouched", async () => {
    const file = box.path("dest-is-a-file");
    await writeFile(file, "keep me\n");
    const before = await stat(file);
    const plain = await box.run("server", ["server", file, LOOPBACK, "--port", "0"]);
    assertFatal(plain, { exit: 3, mentions: [file] });
    const json = await box.run("server", ["server", file, LOOPBACK, "--port", "0", "--json"]);
    assertFatalJson(json, { exit: 3, code: "KW_DEST_NOT_DIR" });
    const afterStat = await stat(file);
    assert.equal(await readFile(file, "utf8"), "keep me\n");
    assert.equal(afterStat.mtimeMs, before.mtimeMs);
    // DEST below a file is the same mistake.
    const below = join(file, "sub");
    const nested = await box.run("server", ["server", below, LOOPBACK, "--port", "0", "--json"]);
    assertFatalJson(nested, { exit: 3, code: "KW_DEST_NOT_DIR" });
  });

  it("server with DEST not writable: exit 3, KW_DEST_NOT_WRITABLE, nothing created", async (t) => {
    const locked = box.path("locked");
    await mkdir(locked);
    let missingDest: string;
    let existingDest: string | null;
    if (makeImmutable(locked)) {
      box.onCleanup(() => {
        spawnSync("chattr", ["-i", locked], { stdio: "ignore" });
      });
      missingDest = join(locked, "dest");
      existingDest = locked;
    } else if (await exists("/proc/self")) {
      // No chattr here: nothing can be created below /proc, even by root.
      missingDest = `/proc/keepwatch-test-${process.pid}`;
      existingDest = null;
    } else {
      t.skip("neither chattr +i nor /proc is available to make an unwritable folder");
      return;
    }
    const plain = await box.run("server", ["server", missingDest, LOOPBACK, "--port", "0"]);
    assertFatal(plain, { exit: 3, mentions: [missingDest] });
    const json = await box.run("server", ["server", missingDest, LOOPBACK, "--port", "0", "--json"]);
    assertFatalJson(json, { exit: 3, code: "KW_DEST_NOT_WRITABLE" });
    assert.equal(await exists(missingDest), false, "DEST was not created");
    if (existingDest !== null) {
      const existing = await box.run("server", ["server", existingDest, LOOPBACK, "--port", "0", "--json"]);
      assertFatalJson(existing, { exit: 3, code: "KW_DEST_NOT_WRITABLE" });
      assert.deepEqual(await readdir(existingDest), [], "the unwritable DEST is still empty");
    }
  });

  it("server on a port in use: exit 4, KW_PORT_IN_USE, names the port, DEST not created", async () => {
    const busy = await startPlainListener();
    box.onCleanup(() => busy.close());
    const newDest = box.path("dest-port-in-use");
    const plain = await box.run("server", ["server", newDest, LOOPBACK, "--port", String(busy.port)]);
    assertFatal(plain, { exit: 4, mentions: [String(busy.port)] });
    const json = await box.run("server", [
      "server",
      newDest,
      LOOPBACK,
      "--port",
      String(busy.port),
      "--json",
    ]);
    assertFatalJson(json, { exit: 4, code: "KW_PORT_IN_USE" });
    assert.equal(await exists(newDest), false, `a server that could not start left ${newDest} behind`);
  });

  it("push to a port where nothing listens: exit 4 at once, KW_UNREACHABLE, names host:port", async () => {
    const port = await freePort();
    const plain = await box.push(src, port, [], { json: false });
    assertFatal(plain, { exit: 4, mentions: [`${LOOPBACK}:${port}`] });
    const json = await box.push(src, port);
    assertFatalJson(json, { exit: 4, code: "KW_UNREACHABLE" });
    // A refused connection is final for push: no retrying with backoff, no waiting for a
    // time-out. The bound is generous; the point is "seconds", not "retries forever".
    assert.ok(json.elapsedMs < 8000, `push took ${json.elapsedMs} ms to give up\n${json.proc.describe()}`);
    assert.equal(await exists(box.stateDir), false, "no client state was written");
  });

  it("push to something that is not keepwatch: exit 5 (KW_TLS_FAILED, or KW_NOT_KEEPWATCH with --insecure), names host:port", async () => {
    const http = await startPlainListener((socket) => {
      socket.end("HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    box.onCleanup(() => http.close());
    const plain = await box.push(src, http.port, [], { json: false });
    assertFatal(plain, { exit: 5, mentions: [`${LOOPBACK}:${http.port}`, "TLS"] });
    const json = await box.push(src, http.port);
    assertFatalJson(json, { exit: 5, code: "KW_TLS_FAILED" });
    assert.equal(http.received[0]?.[0], 0x16, "the client opened with a TLS handshake record");
    const insecure = await box.push(src, http.port, ["--insecure"]);
    assertFatalJson(insecure, { exit: 5, code: "KW_NOT_KEEPWATCH" });
    assert.equal(http.connections, 3, "each push did connect");
    assert.ok(
      http.received[2]?.subarray(0, MAGIC.length).equals(MAGIC),
      "without TLS the client sent the keepwatch preamble",
    );
    assert.equal(await exists(box.stateDir), false, "no client state was written");
  });

  it("a client speaking protocol versions 7-9 gets KW_VERSION_MISMATCH; the server keeps serving", async () => {
    const since = server.events.length;
    const socket = tlsConnect({ host: LOOPBACK, port: server.port, rejectUnauthorized: false });
    const decoder = new FrameDecoder();
    const frames: { type: number; requestId: number; payload: Buffer }[] = [];
    let decodeError: unknown = null;
    const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
    socket.on("error", () => {});
    socket.on("data", (chunk: Buffer) => {
      try {
        frames.push(...decoder.push(chunk));
      } catch (error) {
        decodeError = error;
      }
    });
    socket.on("secureConnect", () => {
      const hello = encode.hello({
        minVersion: 7,
        maxVersion: 9,
        clientName: "a-future-client",
        setName: "future",
        token: Buffer.alloc(0),
      });
      socket.write(Buffer.concat([MAGIC, encodeFrame(MessageType.HELLO, 0, hello)]));
    });
    await box.waitUntil(
      "the server to answer the version 7-9 HELLO and close",
      () => (!socket.closed ? `${frames.length} frame(s) so far, still open` : true),
      { timeoutMs: 10_000, alive: [server.proc] },
    );
    await closed;
    assert.equal(decodeError, null, "the server's answer is well-formed");
    const errors = frames.filter((f) => f.type === MessageType.ERROR);
    assert.equal(errors.length, 1, `one ERROR frame, got types ${frames.map((f) => f.type).join(",")}`);
    assert.equal(frames.filter((f) => f.type === MessageType.WELCOME).length, 0, "no WELCOME");
    const error = errors[0] as { requestId: number; payload: Buffer };
    assert.equal(error.requestId, 0);
    const remote = decode.error(error.payload);
    assert.equal(remote.code, "KW_VERSION_MISMATCH");
    assert.match(remote.message, /7-9/, "the sentence names the versions the client offered");

    // The server is unharmed: still running, nothing created, and a normal push works.
    assert.equal(server.proc.running, true, "the server is still running");
    await assertServerUntouched(since);
    const push = await box.push(src, server.port);
    assert.equal(push.code, 0, `a normal push after the mismatch\n${box.report()}`);
    assert.deepEqual(await compareTrees(src, join(dest, "source")), [], "the push reached the mirror");
    assert.deepEqual(await readdir(join(dest, ".keepwatch", "tmp")), []);
  });

  it("an unknown command: exit 2, names the command", async () => {
    const result = await box.run("cli", ["frobnicate"]);
    assertFatal(result, { exit: 2, mentions: ["frobnicate"] });
  });

  it("an unknown option: exit 2, names the option", async () => {
    const result = await box.run("push", [
      "push",
      src,
      LOOPBACK,
      "--port",
      String(listener.port),
      "--frobnicate",
    ]);
    assertFatal(result, { exit: 2, mentions: ["--frobnicate"] });
    assert.equal(listener.connections, 0, "nothing connected");
  });

  it("a port out of range: exit 2, names the option", async () => {
    const result = await box.run("server", [
      "server",
      box.path("dest-bad-port"),
      LOOPBACK,
      "--port",
      "99999",
    ]);
    assertFatal(result, { exit: 2, mentions: ["--port"] });
    assert.equal(await exists(box.path("dest-bad-port")), false, "DEST was not created");
  });
});
