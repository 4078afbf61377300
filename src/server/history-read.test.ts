// The read side of the history on the server (list.ts, restore.ts) against a real
// metadata store and an in-memory chunk store, through a RequestContext that records
// every frame: what LIST and RESTORE answer, and how they refuse.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, test } from "node:test";
import { KeepwatchError, ProtocolError } from "../errors.js";
import { decodeHistory, type Entry } from "../protocol/history-messages.js";
import { MessageType } from "../protocol/messages.js";
import { MemoryChunkStore } from "../store/memory-chunk-store.js";
import { SqliteMetadataStore } from "../store/sqlite-metadata-store.js";
import { History } from "./history.js";
import { handleList } from "./list.js";
import { FILE_DATA_PIECE, handleRestore } from "./restore.js";
import type { RequestContext } from "./session.js";

interface Recorded {
  entries: Entry[];
  /** FILE_DATA payloads, in order, with the index of the entry they follow. */
  data: { after: number; bytes: Buffer }[];
  outcome: "ack" | KeepwatchError | null;
}

function recordingContext(history: History, set: string): { ctx: RequestContext; seen: Recorded } {
  const seen: Recorded = { entries: [], data: [], outcome: null };
  const onFrame = (type: number, payload?: Buffer) => {
    assert.equal(seen.outcome, null, "no frame after the answer");
    if (type === MessageType.ENTRY) seen.entries.push(decodeHistory.entry(payload ?? Buffer.alloc(0)));
    else if (type === MessageType.FILE_DATA) {
      seen.data.push({ after: seen.entries.length - 1, bytes: Buffer.from(payload ?? Buffer.alloc(0)) });
    } else assert.fail(`unexpected frame type ${type}`);
  };
  const ctx = {
    set,
    history,
    isOpen: true,
    reporter: { emit() {} },
    track: (work: Promise<void>) => work,
    send: (type: number, _id: number, payload?: Buffer) => onFrame(type, payload),
    sendAndWait: async (type: number, _id: number, payload?: Buffer) => onFrame(type, payload),
    ack: () => {
      seen.outcome = "ack";
    },
    reject: (_id: number, error: KeepwatchError) => {
      seen.outcome = error;
    },
    release: () => {},
    // The server's own user: every set (authorization has its own end-to-end tests).
    readableSets: () => null,
  } as unknown as RequestContext;
  return { ctx, seen };
}

function sha(data: Buffer): Buffer {
  return createHash("sha256").update(data).digest();
}

describe("LIST and RESTORE on the server", () => {
  let dir: string;
  let history: History;
  const contents = new Map<string, Buffer>();

  async function putFile(set: string, path: string, data: Buffer, time: number, mode = 0o644): Promise<void> {
    const ingest = history.ingest();
    await ingest.write(data);
    const chunks = await ingest.finish();
    await history.commit({
      set,
      path,
      kind: "file",
      size: data.length,
      mtimeMs: time - 500.25,
      mode,
      content: { sha256: sha(data), chunks },
      time,
    });
    contents.set(`${set}/${path}@${time}`, data);
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "kw-history-read-"));
    history = new History(new MemoryChunkStore(), SqliteMetadataStore.open(join(dir, "index.db")));
    await history.commit({
      set: "src",
      path: "docs",
      kind: "dir",
      size: 0,
      mtimeMs: 0,
      mode: 0o750,
      time: 1000,
    });
    await putFile("src", "docs/a.txt", Buffer.from("first a\n"), 1100);
    await putFile("src", "docs/big.bin", randomBytes(3 * FILE_DATA_PIECE + 17), 1200);
    await putFile("src", "top.txt", Buffer.alloc(0), 1300, 0o600);
    await putFile("src", "docs/a.txt", Buffer.from("second a\n"), 2000);
    await history.commit({
      set: "src",
      path: "docs/big.bin",
      kind: "deleted",
      size: 0,
      mtimeMs: 0,
      mode: 0,
      time: 3000,
    });
    await putFile("other", "x", Buffer.from("x"), 1500);
  });

  afterEach(async () => {
    await history.close();
    await rm(dir, { recursive: true, force: true });
  });

  test("LIST mode 0 gives the tree at a moment, folders first, deletes left out", async () => {
    const { ctx, seen } = recordingContext(history, "src");
    await handleList(1, { path: "", time: 2500, mode: 0 }, ctx);
    assert.equal(seen.outcome, "ack");
    assert.deepEqual(
      seen.entries.map((e) => `${e.path}:${e.kind}:${e.size}`),
      ["docs:dir:0", "docs/a.txt:file:9", `docs/big.bin:file:${3 * FILE_DATA_PIECE + 17}`, "top.txt:file:0"],
    );
    const now = recordingContext(history, "src");
    await handleList(2, { path: "docs", time: -1, mode: 0 }, now.ctx);
    assert.deepEqual(
      now.seen.entries.map((e) => e.path),
      ["docs", "docs/a.txt"],
    );
    const a = now.seen.entries[1] as Entry;
    assert.equal(a.mode, 0o644);
    assert.equal(a.mtimeMs, 1500 - 0.25);
    assert.equal(a.time, 2000);
    assert.deepEqual(a.sha256, sha(Buffer.from("second a\n")));
  });

  test('LIST mode 1 gives every version, deletes included, oldest first; "" is the whole set', async () => {
    const { ctx, seen } = recordingContext(history, "src");
    await handleList(1, { path: "docs", time: -1, mode: 1 }, ctx);
    assert.equal(seen.outcome, "ack");
    assert.deepEqual(
      seen.entries.map((e) => `${e.path}:${e.kind}@${e.time}`),
      [
        "docs:dir@1000",
        "docs/a.txt:file@1100",
        "docs/big.bin:file@1200",
        "docs/a.txt:file@2000",
        "docs/big.bin:deleted@3000",
      ],
    );
    const ids = seen.entries.map((e) => e.versionId);
    assert.deepEqual(
      [...ids].sort((x, y) => x - y),
      ids,
      "version ids increase",
    );
    const whole = recordingContext(history, "src");
    await handleList(2, { path: "", time: -1, mode: 1 }, whole.ctx);
    assert.equal(whole.seen.entries.length, 6);
  });

  test("LIST on a connection bound to no set lists the sets, and only that", async () => {
    const { ctx, seen } = recordingContext(history, "");
    await handleList(1, { path: "", time: -1, mode: 0 }, ctx);
    assert.equal(seen.outcome, "ack");
    assert.deepEqual(
      seen.entries.map((e) => `${e.path}:${e.kind}:${e.size}@${e.time}`),
      ["other:dir:1@1500", "src:dir:2@3000"],
    );
    const before = recordingContext(history, "");
    await handleList(2, { path: "", time: 1400, mode: 0 }, before.ctx);
    assert.deepEqual(
      before.seen.entries.map((e) => `${e.path}:${e.size}@${e.time}`),
      ["src:3@1300"],
      "a set with nothing yet at that moment is left out",
    );
    for (const request of [
      { path: "src", time: -1, mode: 0 as const },
      { path: "", time: -1, mode: 1 as const },
    ]) {
      await assert.rejects(
        handleList(3, request, recordingContext(history, "").ctx),
        (error: unknown) => error instanceof ProtocolError && error.code === "KW_UNEXPECTED_MESSAGE",
      );
    }
  });

  test("LIST refuses a bad path and answers KW_NOT_FOUND when nothing matches", async () => {
    const bad = recordingContext(history, "src");
    await handleList(1, { path: "../etc", time: -1, mode: 0 }, bad.ctx);
    assert.ok(bad.seen.outcome instanceof KeepwatchError && bad.seen.outcome.code === "KW_BAD_PATH");
    for (const request of [
      { path: "docs/big.bin", time: -1, mode: 0 as const },
      { path: "docs", time: 999, mode: 0 as const },
      { path: "nope", time: -1, mode: 1 as const },
    ]) {
      const { ctx, seen } = recordingContext(history, "src");
      await handleList(1, request, ctx);
      assert.ok(seen.outcome instanceof KeepwatchError, JSON.stringify(request));
      assert.equal(seen.outcome.code, "KW_NOT_FOUND");
      assert.deepEqual(seen.entries, []);
    }
  });

  test("RESTORE streams each file's bytes after its entry, in pieces, exactly its size", async () => {
    const { ctx, seen } = recordingContext(history, "src");
    await handleRestore(1, { path: "", time: 1500 }, ctx);
    assert.equal(seen.outcome, "ack");
    assert.deepEqual(
      seen.entries.map((e) => e.path),
      ["docs", "docs/a.txt", "docs/big.bin", "top.txt"],
    );
    seen.entries.forEach((entry, index) => {
      const pieces = seen.data.filter((d) => d.after === index).map((d) => d.bytes);
      assert.ok(pieces.every((p) => p.length > 0 && p.length <= FILE_DATA_PIECE));
      const bytes = Buffer.concat(pieces);
      if (entry.kind === "dir") assert.equal(bytes.length, 0);
      else assert.deepEqual(bytes, contents.get(`src/${entry.path}@${entry.time}`), entry.path);
    });
    assert.equal(
      Buffer.concat(seen.data.filter((d) => d.after === 1).map((d) => d.bytes)).toString(),
      "first a\n",
      "the version at that moment, not the newest",
    );
  });

  test("RESTORE of one file, of a missing path, and of a damaged history", async () => {
    const one = recordingContext(history, "src");
    await handleRestore(1, { path: "docs/a.txt", time: -1 }, one.ctx);
    assert.equal(one.seen.outcome, "ack");
    assert.deepEqual(Buffer.concat(one.seen.data.map((d) => d.bytes)).toString(), "second a\n");

    const missing = recordingContext(history, "src");
    await handleRestore(2, { path: "docs/big.bin", time: -1 }, missing.ctx);
    assert.ok(missing.seen.outcome instanceof KeepwatchError && missing.seen.outcome.code === "KW_NOT_FOUND");

    // A chunk gone from the store: the request ends with ERROR, the connection stays.
    const chunks = (await history.chunksOf(sha(Buffer.from("second a\n")))) ?? [];
    await history.chunks.delete(Array.from(chunks, (c) => c.id));
    const damaged = recordingContext(history, "src");
    await handleRestore(3, { path: "docs", time: -1 }, damaged.ctx);
    assert.ok(damaged.seen.outcome instanceof KeepwatchError);
    assert.equal(damaged.seen.outcome.code, "KW_CHUNK_MISSING");
  });
});
