// The server against a hand-made client: real frames on a real socket to a real server
// process (127.0.0.1, --port 0). Every case checks three things: what the client receives
// (frame type, request id, error code), what happened on disk (nothing outside DEST/<set>/,
// nothing in the mirror that should not be there, DEST/.keepwatch/tmp empty afterwards),
// and that the server still serves a new, well-behaved client. docs/protocol.md is the
// specification; section numbers below refer to it.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";
import { encodeFrame, HEADER_SIZE } from "../src/protocol/frame.js";
import { decode, encode, MessageType, PROTOCOL_VERSION } from "../src/protocol/messages.js";
import { SMALL_FILE_BYTES } from "../src/server/put.js";
import { DEFAULT_WINDOW } from "../src/server/server.js";
import { exists, readTree, Sandbox, type ServerHandle, sleep, stackLines } from "./helpers.js";
import {
  ANSWER_MS,
  closeAllClients,
  DATA_CHUNK,
  deleteFrame,
  errorText,
  expectAck,
  expectClosed,
  expectError,
  expectSilence,
  helloPayload,
  localToken,
  mkdirFrame,
  rawClient as openRawClient,
  putAbort,
  putBegin,
  putData,
  putEnd,
  putFrames,
  type RawClient,
  type RawClientOptions,
  setRawToken,
  sha256,
  showFrame,
} from "./raw-client.js";

/** A raw client whose welcomed sets are remembered (they are the only folders DEST may hold). */
function rawClient(port: number, options: RawClientOptions = {}): Promise<RawClient> {
  return openRawClient(port, { onWelcome: (set) => knownSets.add(set), ...options });
}

/** A file this size is received into a temporary file (larger ones are not held in memory). */
const LARGE = SMALL_FILE_BYTES + 64 * 1024;

// ---------------------------------------------------------------------------------------
// Requests

// ---------------------------------------------------------------------------------------
// The world: one server for the whole file, one set per case

let box: Sandbox;
let server: ServerHandle;
/** Parent of DEST: must only ever hold DEST. */
let outer: string;
let dest: string;
/** Sets that got a WELCOME: the only folders DEST may hold besides .keepwatch. */
const knownSets = new Set<string>();
let probes = 0;

async function listDir(path: string): Promise<string[]> {
  return (await readdir(path)).sort();
}

function tmpDir(): string {
  return join(dest, ".keepwatch", "tmp");
}

/**
 * Temporary files present when the current case started: a file leaked by one case is
 * reported by that case and does not make every later case fail too.
 */
let tmpBaseline = new Set<string>();

async function newTmpFiles(): Promise<string[]> {
  return (await readdir(tmpDir())).filter((name) => !tmpBaseline.has(name)).sort();
}

/** The set-relative paths in the mirror of `set`, sorted. */
async function mirrorPaths(set: string): Promise<string[]> {
  // A set's folder appears with its first stored file or folder.
  if (!(await exists(join(dest, set)))) return [];
  return [...(await readTree(join(dest, set))).keys()].sort();
}

/** Nothing outside DEST/<set>/: the parent of DEST holds only DEST, DEST only .keepwatch and sets. */
async function assertNothingOutside(what: string): Promise<void> {
  assert.deepEqual(await listDir(outer), ["dest"], `${what}: the parent of DEST holds only DEST`);
  // A welcomed set's folder exists once something was stored in it; no other name may.
  const unexpected = (await listDir(dest)).filter((name) => name !== ".keepwatch" && !knownSets.has(name));
  assert.deepEqual(unexpected, [], `${what}: DEST holds only .keepwatch and the sets that were welcomed`);
}

/** DEST/.keepwatch/tmp holds no new file (soon: temporary files are removed asynchronously). */
async function assertTmpEmpty(what: string, timeoutMs = 3000): Promise<void> {
  await box.waitUntil(
    `${what}: DEST/.keepwatch/tmp to be empty`,
    async () => {
      const names = await newTmpFiles();
      return names.length === 0
        ? true
        : `tmp holds ${names.length} new file(s): ${names.slice(0, 5).join(", ")}`;
    },
    { timeoutMs, alive: [server.proc] },
  );
}

async function waitTmpCount(count: number, what: string): Promise<void> {
  await box.waitUntil(
    `${what}: ${count} temporary file(s) in DEST/.keepwatch/tmp`,
    async () => {
      const n = (await newTmpFiles()).length;
      return n === count ? true : `${n} new temporary file(s)`;
    },
    { timeoutMs: 5000, alive: [server.proc] },
  );
}

/**
 * The server still serves a new, well-behaved client: a raw HELLO, PUT (ACKed, on disk),
 * BYE; or a `keepwatch push` run with the CLI.
 */
async function assertStillServes(how: "raw" | "push" = "raw"): Promise<void> {
  assert.equal(server.proc.running, true, `the server is still running\n${box.report()}`);
  probes++;
  const set = `probe-${how}-${probes}`;
  const content = Buffer.from(`probe ${probes}: ${randomBytes(8).toString("hex")}\n`);
  if (how === "push") {
    const src = box.path(`push-src-${probes}`);
    await mkdir(src);
    await writeFile(join(src, "probe.txt"), content);
    const result = await box.push(src, server.port, ["--name", set]);
    knownSets.add(set);
    assert.equal(result.code, 0, `a push after the case should succeed\n${result.proc.describe(30)}`);
  } else {
    const client = await rawClient(server.port);
    await client.hello(set);
    client.write(putFrames(1, "probe.txt", content));
    await expectAck(client, 1, "a well-formed PUT from a new client");
    client.send(MessageType.BYE, 0);
    assert.equal(showFrame(await client.nextFrame()), "BYE id 0", "BYE is answered with BYE");
    await expectClosed(client, "after BYE");
  }
  assert.deepEqual(await mirrorPaths(set), ["probe.txt"], "the probe's mirror");
  assert.ok((await readFile(join(dest, set, "probe.txt"))).equals(content), "the probe file's bytes");
}

/** The checks every case ends with. */
async function assertCleanAfter(what: string, how: "raw" | "push" = "raw"): Promise<void> {
  await assertTmpEmpty(what);
  await assertNothingOutside(what);
  await assertStillServes(how);
  await assertTmpEmpty(`${what}, after the probe`);
  await assertNothingOutside(`${what}, after the probe`);
}

async function assertFile(
  set: string,
  path: string,
  content: Buffer,
  attrs: { mode: number; mtimeMs: number },
): Promise<void> {
  const abs = join(dest, set, path);
  const st = await stat(abs);
  assert.ok(st.isFile(), `${path} is a file`);
  assert.ok((await readFile(abs)).equals(content), `${path}: bytes`);
  assert.equal((st.mode & 0o7777).toString(8), (attrs.mode & 0o7777).toString(8), `${path}: mode`);
  assert.ok(
    Math.abs(st.mtimeMs - attrs.mtimeMs) < 1,
    `${path}: mtime ${st.mtimeMs}, expected ${attrs.mtimeMs} (within 1 ms)`,
  );
}

describe("the server against a hand-made protocol client", { timeout: 90_000 }, () => {
  before(async () => {
    box = await Sandbox.create(null);
    outer = box.path("outer");
    dest = join(outer, "dest");
    await mkdir(outer);
    server = await box.startServer(dest);
    setRawToken(await localToken(box.configDir, server.port));
  });
  beforeEach(async () => {
    tmpBaseline = new Set(await readdir(tmpDir()));
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    await box.cleanup();
  });

  it("1. valid PUTs (small, large in several frames, empty, interleaved) are ACKed and stored with mode and mtime", async () => {
    const set = "valid";
    const client = await rawClient(server.port);
    const welcome = await client.hello(set);
    assert.equal(welcome.version, PROTOCOL_VERSION);
    assert.ok(welcome.window >= 1 && welcome.maxFrame >= DATA_CHUNK, JSON.stringify(welcome));

    // PING is answered with a PONG carrying the same id.
    client.send(MessageType.PING, 77);
    assert.equal(showFrame(await client.nextFrame()), "PONG id 77", "PING is answered with PONG");

    const small = randomBytes(1000);
    const large = randomBytes(2 * DATA_CHUNK + 12345);
    const smallAttrs = { mode: 0o640, mtimeMs: 1_234_567_890_123.25 };
    // Type bits in the mode are dropped (mode & 0o7777).
    const largeAttrs = { mode: 0o100600, mtimeMs: 1_000_000_000_000.5 };
    const emptyAttrs = { mode: 0o444, mtimeMs: 86_400_000 };
    const largeData = putData(1, large);
    client.write(
      Buffer.concat([
        putBegin(1, "big.bin", large.length, largeAttrs),
        putBegin(2, "docs/note.txt", small.length, smallAttrs),
        largeData[0] as Buffer,
        ...putData(2, small),
        largeData[1] as Buffer,
        putEnd(2, sha256(small)),
        largeData[2] as Buffer,
        putEnd(1, sha256(large)),
        putBegin(3, "empty", 0, emptyAttrs),
        putEnd(3, sha256(Buffer.alloc(0))),
      ]),
    );
    await expectAck(client, 1, "the large PUT");
    await expectAck(client, 2, "the small PUT");
    await expectAck(client, 3, "the empty PUT");
    await assertFile(set, "big.bin", large, largeAttrs);
    await assertFile(set, "docs/note.txt", small, smallAttrs);
    await assertFile(set, "empty", Buffer.alloc(0), emptyAttrs);

    // PUT_ABORT of a PUT in progress: ACK, and the mirror is unchanged (7.2).
    client.write(
      Buffer.concat([putBegin(4, "aborted.txt", 10), ...putData(4, Buffer.from("12345")), putAbort(4)]),
    );
    await expectAck(client, 4, "PUT_ABORT of an open PUT");
    await expectSilence(client, 100, "after the ACKs");
    assert.deepEqual(await mirrorPaths(set), ["big.bin", "docs", "docs/note.txt", "empty"]);
    client.destroy();
    await assertCleanAfter("valid PUTs", "push");
  });

  it("1b. a pre-1970 (negative, fractional) mtime is stored as sent, for small and large files", async () => {
    const set = "old-mtime";
    const client = await rawClient(server.port);
    await client.hello(set);
    const small = Buffer.from("small and old\n");
    const large = randomBytes(LARGE);
    const attrs = { mode: 0o644, mtimeMs: -1500.5 };
    client.write(
      Buffer.concat([
        putFrames(1, "small-old.txt", small, attrs),
        putFrames(2, "large-old.bin", large, attrs),
      ]),
    );
    await expectAck(client, 1, "a small PUT with mtimeMs -1500.5");
    await expectAck(client, 2, "a large PUT with mtimeMs -1500.5");
    client.destroy();
    assert.deepEqual(await mirrorPaths(set), ["large-old.bin", "small-old.txt"]);
    const failures: string[] = [];
    for (const [path, content] of [
      ["small-old.txt", small],
      ["large-old.bin", large],
    ] as const) {
      try {
        await assertFile(set, path, content, attrs);
      } catch (error) {
        failures.push(error instanceof Error ? error.message : String(error));
      }
    }
    assert.deepEqual(failures, [], "the mtimes as sent (5.6: mtimeMs may be negative)");
    await assertCleanAfter("pre-1970 mtime");
  });

  it("2. PUT_END with a wrong SHA-256: KW_HASH_MISMATCH for that id, the previous version stays, the connection stays open", async () => {
    const set = "hash";
    const client = await rawClient(server.port);
    await client.hello(set);
    for (const [path, size] of [
      ["small.txt", 100],
      ["large.bin", LARGE],
    ] as const) {
      const a = randomBytes(size);
      const aAttrs = { mode: 0o644, mtimeMs: 1_500_000_000_000 };
      client.write(putFrames(1, path, a, aAttrs));
      await expectAck(client, 1, `version A of ${path}`);
      await assertFile(set, path, a, aAttrs);

      const b = randomBytes(size);
      const wrong = sha256(b);
      wrong[0] = (wrong[0] as number) ^ 0xff;
      client.write(putFrames(2, path, b, { mode: 0o600, mtimeMs: 1_700_000_000_000, digest: wrong }));
      await expectError(client, 2, "KW_HASH_MISMATCH", `version B of ${path} with a wrong SHA-256`);
      await assertFile(set, path, a, aAttrs);

      // The connection is open and the ids are free again.
      client.write(mkdirFrame(2, `after-${path}`));
      await expectAck(client, 2, "a MKDIR after the hash mismatch");
    }
    await expectSilence(client, 100, "after the hash mismatches");
    assert.deepEqual(await mirrorPaths(set), [
      "after-large.bin",
      "after-small.txt",
      "large.bin",
      "small.txt",
    ]);
    client.destroy();
    await assertCleanAfter("hash mismatch");
  });

  it("3. PUT_END before all announced bytes: KW_SIZE_MISMATCH for that id, the connection stays open", async () => {
    const set = "short";
    const client = await rawClient(server.port);
    await client.hello(set);
    for (const [id, path, size, sent] of [
      [1, "small.txt", 10, 4],
      [2, "large.bin", LARGE, DATA_CHUNK],
    ] as const) {
      const content = randomBytes(size);
      client.write(
        Buffer.concat([
          putBegin(id, path, size),
          ...putData(id, content.subarray(0, sent)),
          putEnd(id, sha256(content)),
        ]),
      );
      await expectError(client, id, "KW_SIZE_MISMATCH", `${path}: ${sent} of ${size} bytes, then PUT_END`);
    }
    client.write(mkdirFrame(3, "still-open"));
    await expectAck(client, 3, "a MKDIR after the short PUTs");
    // The ids of the failed PUTs may be used again.
    const again = Buffer.from("complete\n");
    client.write(putFrames(1, "again.txt", again));
    await expectAck(client, 1, "a complete PUT reusing the id of a short one");
    await expectSilence(client, 100, "after the short PUTs");
    assert.deepEqual(await mirrorPaths(set), ["again.txt", "still-open"]);
    client.destroy();
    await assertCleanAfter("short PUTs");
  });

  it("4. more PUT_DATA than announced: KW_SIZE_MISMATCH with id 0, the connection closes, nothing stored", async () => {
    const set = "overflow";
    // Small (held in memory) and large (temporary file): one byte too many, with a MKDIR
    // in the same write that must not be acted on (3: failure is final).
    for (const [path, size] of [
      ["small.txt", 3],
      ["large.bin", LARGE],
    ] as const) {
      const client = await rawClient(server.port);
      await client.hello(set);
      const content = randomBytes(size + 1);
      client.write(Buffer.concat([putBegin(1, path, size), ...putData(1, content.subarray(0, size - 1))]));
      client.write(
        Buffer.concat([
          encodeFrame(MessageType.PUT_DATA, 1, content.subarray(size - 1)),
          mkdirFrame(2, "after-violation"),
        ]),
      );
      await expectError(client, 0, "KW_SIZE_MISMATCH", `${path}: ${size + 1} bytes for ${size} announced`);
      await expectClosed(client, `${path} overflow`);
    }
    // A PUT refused at PUT_BEGIN (bad path) still counts its data: too much is still a violation (7.2).
    const client = await rawClient(server.port);
    await client.hello(set);
    client.write(putBegin(1, "../refused", 2));
    await expectError(client, 1, "KW_BAD_PATH", "a PUT with a bad path");
    client.write(encodeFrame(MessageType.PUT_DATA, 1, Buffer.from("abc")));
    await expectError(client, 0, "KW_SIZE_MISMATCH", "3 bytes for 2 announced on a refused PUT");
    await expectClosed(client, "overflow of a refused PUT");

    assert.deepEqual(await mirrorPaths(set), [], "nothing stored");
    await assertCleanAfter("overflowing PUTs");
  });

  it("5. bad paths: KW_BAD_PATH per request, a refused PUT stays open until PUT_ABORT/PUT_END, nothing written anywhere", async () => {
    const set = "paths";
    // A victim set and a sentinel a bad DELETE might reach.
    const victim = "victim";
    const keep = Buffer.from("keep me\n");
    {
      const client = await rawClient(server.port);
      await client.hello(victim);
      client.write(Buffer.concat([putFrames(1, "keep.txt", keep), mkdirFrame(2, "sub")]));
      await expectAck(client, 1, "the victim's file");
      await expectAck(client, 2, "the victim's folder");
      client.destroy();
    }
    const sentinel = box.path("sentinel.txt");
    await writeFile(sentinel, "sentinel\n");

    const fiveThousand = `${`${"d".repeat(99)}/`.repeat(49)}${"e".repeat(100)}`;
    assert.equal(Buffer.byteLength(fiveThousand), 5000);
    const badPaths = [
      "../escape",
      "../../escape",
      "/abs",
      `${outer}/abs-escape`,
      "a//b",
      "a/./b",
      "a/../../x",
      "a\0b",
      fiveThousand,
      `ok/${"y".repeat(300)}`,
      "",
      "a/",
      ".",
      "..",
      "a/..",
    ];
    const badDeletes = [
      ...badPaths,
      `../${victim}/keep.txt`,
      `../${victim}`,
      `${dest}/${victim}/keep.txt`,
      "../../../sentinel.txt",
    ];

    const client = await rawClient(server.port);
    await client.hello(set);
    let id = 100;
    const abortedIds: number[] = [];
    for (const path of badPaths) {
      const label = JSON.stringify(
        path.length > 40 ? `${path.slice(0, 20)}…(${Buffer.byteLength(path)} bytes)` : path,
      );
      // PUT refused at PUT_BEGIN, ended with PUT_ABORT: no answer to the abort.
      const abortId = ++id;
      client.write(putBegin(abortId, path, 5));
      await expectError(client, abortId, "KW_BAD_PATH", `PUT_BEGIN ${label}`);
      client.write(putAbort(abortId));
      abortedIds.push(abortId);
      // PUT refused at PUT_BEGIN whose client sends all its data and PUT_END anyway:
      // the data is ignored, no answer to the PUT_END.
      const endId = ++id;
      client.write(putBegin(endId, path, 5));
      await expectError(client, endId, "KW_BAD_PATH", `PUT_BEGIN ${label} (to be ended)`);
      client.write(
        Buffer.concat([...putData(endId, Buffer.from("hello")), putEnd(endId, sha256(Buffer.from("hello")))]),
      );
      // MKDIR (the next frame must be its answer: nothing came for the PUTs above).
      client.write(mkdirFrame(++id, path));
      await expectError(client, id, "KW_BAD_PATH", `MKDIR ${label}`);
    }
    for (const path of badDeletes) {
      const label = JSON.stringify(
        path.length > 40 ? `${path.slice(0, 20)}…(${Buffer.byteLength(path)} bytes)` : path,
      );
      client.write(deleteFrame(++id, path));
      await expectError(client, id, "KW_BAD_PATH", `DELETE ${label}`);
    }
    // The connection is open; nothing more came for the refused PUTs, and their ids are free.
    client.write(mkdirFrame(++id, "still-open"));
    assert.equal(showFrame(await client.nextFrame()), `ACK id ${id}`, "a good MKDIR after the bad paths");
    await expectSilence(client, 200, "after the refused PUTs were ended");
    const reuse = abortedIds[0] as number;
    client.write(putFrames(reuse, "reused.txt", Buffer.from("reused\n")));
    assert.equal(
      showFrame(await client.nextFrame()),
      `ACK id ${reuse}`,
      "a PUT reusing the id of an aborted one",
    );
    await expectSilence(client, 100, "after the reuse");
    client.destroy();

    assert.deepEqual(
      await mirrorPaths(set),
      ["reused.txt", "still-open"],
      "the mirror holds only the good requests",
    );
    assert.deepEqual(await mirrorPaths(victim), ["keep.txt", "sub"], "the victim set is untouched");
    assert.ok((await readFile(join(dest, victim, "keep.txt"))).equals(keep));
    assert.equal(await readFile(sentinel, "utf8"), "sentinel\n", "the sentinel outside DEST is untouched");
    assert.equal(await exists("/abs"), false, "nothing at /abs");
    await assertCleanAfter("bad paths");
  });

  it("6. HELLO with a bad set name: KW_BAD_SET_NAME (id 0), close, no folder created", async () => {
    // (An empty name is not among them: it opens a session without a set, for listing sets.)
    for (const name of ["..", ".keepwatch", "a/b", "s".repeat(300), ".", "tab\there", "nul\0x", "/abs"]) {
      const client = await rawClient(server.port);
      client.send(MessageType.HELLO, 0, helloPayload(name));
      await expectError(
        client,
        0,
        "KW_BAD_SET_NAME",
        `HELLO with set name ${JSON.stringify(name.slice(0, 20))}`,
      );
      await expectClosed(client, `set name ${JSON.stringify(name.slice(0, 20))}`);
    }
    await assertNothingOutside("bad set names");
    assert.equal(await exists(join(dest, "a")), false, "no folder for a/b");
    await assertCleanAfter("bad set names");
  });

  it("7. HELLO with versions 7-9 (or none in common): KW_VERSION_MISMATCH, close", async () => {
    for (const [min, max] of [
      [7, 9],
      [0, 0],
      [1, 1],
      [3, 2],
    ] as const) {
      const client = await rawClient(server.port);
      client.send(MessageType.HELLO, 0, helloPayload("versions", min, max));
      const frame = await expectError(client, 0, "KW_VERSION_MISMATCH", `HELLO versions ${min}-${max}`);
      assert.match(errorText(frame), new RegExp(`${min}-${max}`), "the sentence names the client's range");
      await expectClosed(client, `versions ${min}-${max}`);
    }
    assert.equal(knownSets.has("versions"), false);
    await assertNothingOutside("version mismatch");
    // A client offering 1-9 gets the highest version both speak.
    const client = await rawClient(server.port);
    client.send(MessageType.HELLO, 0, helloPayload("versions-ok", 1, 9));
    const frame = await client.nextFrame();
    assert.equal(showFrame(frame), "WELCOME id 0");
    knownSets.add("versions-ok");
    assert.equal(decode.welcome(frame.payload).version, PROTOCOL_VERSION, "the highest common version");
    client.destroy();
    await assertCleanAfter("version mismatch");
  });

  it("8. a first message that is not HELLO: KW_UNEXPECTED_MESSAGE, close", async () => {
    const firsts: [string, Buffer][] = [
      ["MKDIR", mkdirFrame(1, "before-hello")],
      ["PUT_BEGIN", putFrames(1, "before-hello.txt", Buffer.from("x"))],
      ["HELLO with request id 3", encodeFrame(MessageType.HELLO, 3, helloPayload("hello-id-3"))],
      ["BYE", encodeFrame(MessageType.BYE, 0)],
    ];
    for (const [what, bytes] of firsts) {
      const client = await rawClient(server.port);
      client.write(bytes);
      await expectError(client, 0, "KW_UNEXPECTED_MESSAGE", `${what} as the first message`);
      await expectClosed(client, `${what} first`);
    }
    await assertCleanAfter("a first message that is not HELLO");
  });

  it("9. after HELLO, an unknown type (0x7777) or a server-only type: KW_UNEXPECTED_MESSAGE (id 0), close", async () => {
    const set = "unknown-type";
    const cases: [string, Buffer][] = [
      ["type 0x7777", encodeFrame(0x7777, 0)],
      ["type 0x7777 with request id 5 and a payload", encodeFrame(0x7777, 5, Buffer.from("?"))],
      ["ACK from a client", encodeFrame(MessageType.ACK, 1)],
      ["WELCOME from a client", encodeFrame(MessageType.WELCOME, 0)],
      ["a second HELLO", encodeFrame(MessageType.HELLO, 0, helloPayload(set))],
    ];
    for (const [what, bytes] of cases) {
      const client = await rawClient(server.port);
      await client.hello(set);
      // A MKDIR in the same write must not be acted on.
      client.write(Buffer.concat([bytes, mkdirFrame(9, "after-violation")]));
      await expectError(client, 0, "KW_UNEXPECTED_MESSAGE", what);
      await expectClosed(client, what);
    }
    assert.deepEqual(await mirrorPaths(set), [], "nothing acted on after the violation");
    await assertCleanAfter("unexpected types");
  });

  it("10. PUT_DATA / PUT_END / PUT_ABORT for a PUT that is not open: KW_UNKNOWN_REQUEST, close", async () => {
    const set = "unknown-request";
    const cases: [string, Buffer][] = [
      ["PUT_DATA for an id never begun", encodeFrame(MessageType.PUT_DATA, 9, Buffer.from("data"))],
      ["PUT_END for an id never begun", putEnd(9, sha256(Buffer.alloc(0)))],
      ["PUT_ABORT for an id never begun", putAbort(9)],
    ];
    for (const [what, bytes] of cases) {
      const client = await rawClient(server.port);
      await client.hello(set);
      client.write(Buffer.concat([bytes, mkdirFrame(2, "after-violation")]));
      await expectError(client, 0, "KW_UNKNOWN_REQUEST", what);
      await expectClosed(client, what);
    }
    // PUT_DATA for a PUT that is already done (ACKed).
    const client = await rawClient(server.port);
    await client.hello(set);
    client.write(putFrames(1, "done.txt", Buffer.from("done\n")));
    await expectAck(client, 1, "a PUT");
    client.write(encodeFrame(MessageType.PUT_DATA, 1, Buffer.from("more")));
    await expectError(client, 0, "KW_UNKNOWN_REQUEST", "PUT_DATA for a PUT already ACKed");
    await expectClosed(client, "PUT_DATA after ACK");
    assert.deepEqual(await mirrorPaths(set), ["done.txt"]);
    await assertCleanAfter("unknown requests");
  });

  it("11. reusing an in-flight id: KW_UNEXPECTED_MESSAGE, close; request id 0: KW_BAD_MESSAGE, close", async () => {
    const set = "ids";
    const reuses: [string, Buffer, Buffer][] = [
      ["PUT_BEGIN twice (large PUT open)", putBegin(5, "large.bin", LARGE), putBegin(5, "other.bin", 3)],
      ["MKDIR on the id of an open PUT", putBegin(5, "small.txt", 3), mkdirFrame(5, "dir")],
      ["DELETE on the id of an open PUT", putBegin(5, "small.txt", 3), deleteFrame(5, "small.txt")],
    ];
    for (const [what, first, second] of reuses) {
      const client = await rawClient(server.port);
      await client.hello(set);
      client.write(first);
      if (what.includes("large")) await waitTmpCount(1, what);
      client.write(second);
      await expectError(client, 0, "KW_UNEXPECTED_MESSAGE", what);
      await expectClosed(client, what);
    }
    // A PUT refused at PUT_BEGIN is in flight until it is ended (7.1): its id is not free.
    {
      const client = await rawClient(server.port);
      await client.hello(set);
      client.write(putBegin(6, "../refused", 3));
      await expectError(client, 6, "KW_BAD_PATH", "a PUT with a bad path");
      client.write(mkdirFrame(6, "reuse-of-refused"));
      await expectError(client, 0, "KW_UNEXPECTED_MESSAGE", "MKDIR on the id of a refused PUT not yet ended");
      await expectClosed(client, "reuse of a refused PUT's id");
    }
    // Request id 0 is reserved for the connection.
    const zeros: [string, Buffer][] = [
      ["PUT_BEGIN with request id 0", putFrames(0, "zero.txt", Buffer.from("zero\n"))],
      ["MKDIR with request id 0", mkdirFrame(0, "zero-dir")],
      ["DELETE with request id 0", deleteFrame(0, "zero.txt")],
    ];
    for (const [what, bytes] of zeros) {
      const client = await rawClient(server.port);
      await client.hello(set);
      client.write(bytes);
      await expectError(client, 0, "KW_BAD_MESSAGE", what);
      await expectClosed(client, what);
    }
    await assertTmpEmpty("after the id reuses");
    assert.deepEqual(await mirrorPaths(set), [], "nothing stored");
    await assertCleanAfter("id reuse and id 0");
  });

  it("12. a frame header announcing 2^31 bytes: KW_FRAME_TOO_LARGE at once (no payload sent), close", async () => {
    const set = "too-large";
    const header = (length: number, type: number) => {
      const h = Buffer.alloc(HEADER_SIZE);
      h.writeUInt32BE(length, 0);
      h.writeUInt16BE(type, 4);
      h.writeUInt16BE(0, 6);
      h.writeUInt32BE(1, 8);
      return h;
    };
    const cases: [string, boolean, Buffer][] = [
      ["PUT_DATA announcing 2^31 bytes after HELLO", true, header(2 ** 31, MessageType.PUT_DATA)],
      ["MKDIR announcing 2^32-1 bytes after HELLO", true, header(2 ** 32 - 1, MessageType.MKDIR)],
      ["PUT_DATA announcing 1 MiB + 1 after HELLO", true, header(1024 * 1024 + 1, MessageType.PUT_DATA)],
      ["HELLO announcing 2^31 bytes as the first frame", false, header(2 ** 31, MessageType.HELLO)],
    ];
    for (const [what, afterHello, bytes] of cases) {
      const client = await rawClient(server.port);
      if (afterHello) {
        await client.hello(set);
        client.write(putBegin(1, "big.bin", 2 ** 31));
        await sleep(50);
      }
      const started = Date.now();
      client.write(bytes);
      await expectError(client, 0, "KW_FRAME_TOO_LARGE", what);
      const elapsed = Date.now() - started;
      assert.ok(elapsed < 1000, `${what}: answered after ${elapsed} ms, expected at once`);
      await expectClosed(client, what, 2000);
    }
    assert.deepEqual(await mirrorPaths(set), [], "nothing stored");
    await assertCleanAfter("frames too large");
  });

  it("13. connections that end early (no byte, preamble only, half a frame, mid-PUT): the server keeps serving", async () => {
    const set = "abrupt";
    // No byte at all.
    {
      const client = await rawClient(server.port, { magic: false });
      client.socket.end();
      await expectClosed(client, "a connection closed without a byte");
    }
    // Only the preamble.
    {
      const client = await rawClient(server.port);
      client.socket.end();
      await expectClosed(client, "a connection closed after the preamble");
    }
    // Half a frame (the first bytes of a HELLO), then end: KW_BAD_FRAME at most; nothing else.
    {
      const client = await rawClient(server.port);
      const hello = encodeFrame(MessageType.HELLO, 0, helloPayload(set));
      client.write(hello.subarray(0, 6));
      await sleep(20);
      client.socket.end();
      await client.closed;
      const frames = client.queued.map(showFrame);
      assert.ok(
        frames.length === 0 || (frames.length === 1 && frames[0] === "ERROR id 0 KW_BAD_FRAME"),
        `half a frame then end: got ${frames.join(" | ")}`,
      );
      client.destroy();
    }
    assert.equal(knownSets.has(set), false);
    await assertNothingOutside("early ends before HELLO");
    await assertStillServes();

    // After HELLO: a large PUT begun, half a PUT_DATA frame, then end; and the same cut with
    // a reset. The temporary file must go, nothing may be installed.
    for (const how of ["end", "reset"] as const) {
      const client = await rawClient(server.port);
      await client.hello(set);
      const content = randomBytes(LARGE);
      client.write(Buffer.concat([putBegin(1, `cut-${how}.bin`, LARGE), ...putData(1, content).slice(0, 1)]));
      await waitTmpCount(1, `a large PUT begun (${how})`);
      client.write(encodeFrame(MessageType.PUT_DATA, 1, content.subarray(DATA_CHUNK)).subarray(0, 1000));
      await sleep(20);
      if (how === "end") client.socket.end();
      else client.tcp.resetAndDestroy();
      await client.closed;
      client.destroy();
      await assertTmpEmpty(`a PUT cut mid-frame (${how})`);
    }
    assert.deepEqual(await mirrorPaths(set), [], "nothing stored");
    await assertCleanAfter("early ends", "push");
  });

  it("13b. a client that vanishes right after PUT_BEGIN of a large file: its temporary file is removed", async () => {
    const set = "vanished";
    // The connection ends while the server is still opening the temporary file.
    for (let round = 0; round < 10; round++) {
      const client = await rawClient(server.port);
      await client.hello(set);
      client.write(putBegin(1, `vanished-${round}.bin`, LARGE));
      client.socket.end();
      await client.closed;
      client.destroy();
    }
    await assertTmpEmpty("clients that vanished right after PUT_BEGIN");
    assert.deepEqual(await mirrorPaths(set), [], "nothing stored");
    await assertCleanAfter("vanished clients");
  });

  it("14. more requests than the window: the 129th gets KW_WINDOW_EXCEEDED, close, temporary files removed", async () => {
    const set = "window";
    const client = await rawClient(server.port);
    const welcome = await client.hello(set);
    assert.equal(welcome.window, DEFAULT_WINDOW, "the server's window");
    assert.equal(DEFAULT_WINDOW, 128);
    const begins: Buffer[] = [];
    for (let id = 1; id <= welcome.window; id++)
      begins.push(putBegin(id, `f${id}.bin`, SMALL_FILE_BYTES + 1));
    client.write(Buffer.concat(begins));
    await waitTmpCount(welcome.window, "128 large PUTs begun");
    await expectSilence(client, 100, "128 PUTs in flight");
    client.write(putBegin(welcome.window + 1, "one-too-many.bin", SMALL_FILE_BYTES + 1));
    await expectError(client, 0, "KW_WINDOW_EXCEEDED", "the 129th request");
    await expectClosed(client, "window exceeded");
    await assertTmpEmpty("the 128 open PUTs of a closed connection");

    // PUTs refused at PUT_BEGIN and not ended count against the window too (7.1).
    const refused = await rawClient(server.port);
    await refused.hello(set);
    for (let id = 1; id <= welcome.window; id++) {
      refused.write(putBegin(id, `../refused-${id}`, 1));
      await expectError(refused, id, "KW_BAD_PATH", `refused PUT ${id}`);
    }
    refused.write(mkdirFrame(welcome.window + 1, "one-too-many"));
    await expectError(refused, 0, "KW_WINDOW_EXCEEDED", "a MKDIR with 128 refused PUTs not ended");
    await expectClosed(refused, "window exceeded by refused PUTs");

    assert.deepEqual(await mirrorPaths(set), [], "nothing stored");
    await assertCleanAfter("window exceeded", "push");
  });

  it("15. a client ERROR with id 0 after HELLO: the server closes and keeps serving others", async () => {
    const set = "client-error";
    const client = await rawClient(server.port);
    await client.hello(set);
    const content = randomBytes(LARGE);
    client.write(Buffer.concat([putBegin(1, "open.bin", LARGE), ...putData(1, content).slice(0, 1)]));
    await waitTmpCount(1, "a large PUT begun");
    client.send(
      MessageType.ERROR,
      0,
      encode.error({
        code: "KW_TIMEOUT",
        message: "The server sent nothing for 30 s, so the connection was closed.",
      }),
    );
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      client.closed.then(() => false),
      new Promise<boolean>((resolvePromise) => {
        timer = setTimeout(() => resolvePromise(true), ANSWER_MS);
      }),
    ]);
    clearTimeout(timer);
    assert.equal(timedOut, false, "the server closes the connection after the client's ERROR");
    const answers = client.queued.map(showFrame);
    assert.deepEqual(
      answers.filter((f) => !f.startsWith("ERROR id 0") && f !== "BYE id 0"),
      [],
      "no answer to the open PUT",
    );
    client.destroy();
    await assertTmpEmpty("the open PUT of a client that sent ERROR (id 0)");

    // A client answers no requests: an ERROR with a non-zero id is KW_UNEXPECTED_MESSAGE (9.2).
    const other = await rawClient(server.port);
    await other.hello(set);
    other.send(
      MessageType.ERROR,
      3,
      encode.error({ code: "KW_SERVER_IO", message: "Not a client's to send." }),
    );
    await expectError(other, 0, "KW_UNEXPECTED_MESSAGE", "a client ERROR with request id 3");
    await expectClosed(other, "a client ERROR with request id 3");

    assert.deepEqual(await mirrorPaths(set), [], "nothing stored");
    await assertCleanAfter("a client ERROR", "push");
  });

  it("16. BYE: the server answers BYE and closes", async () => {
    const set = "bye";
    const client = await rawClient(server.port);
    await client.hello(set);
    client.write(mkdirFrame(1, "made"));
    await expectAck(client, 1, "a MKDIR");
    client.send(MessageType.BYE, 0);
    const frame = await client.nextFrame();
    assert.equal(showFrame(frame), "BYE id 0", "BYE is answered with BYE");
    assert.equal(frame.payload.length, 0, "BYE is empty");
    await expectClosed(client, "after BYE", 2000);
    assert.deepEqual(await mirrorPaths(set), ["made"]);
    await assertCleanAfter("BYE");
  });

  it("the server survived every case without a stack trace", () => {
    assert.equal(server.proc.running, true, box.report());
    assert.deepEqual(
      stackLines(server.proc.stderr),
      [],
      `stack trace on stderr\n${server.proc.describe(40)}`,
    );
    assert.deepEqual(server.proc.otherLines, [], "only JSON events on stdout");
  });
});
