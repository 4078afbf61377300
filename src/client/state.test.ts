// Tests of the client's state: fingerprints kept with a file's chunk list, forgotten on
// demand, and a state written before they were kept brought up to date without loss.

import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { ChunkList, type ChunkRef } from "../chunking/chunk-list.js";
import { ClientState, type FileRecord, recordedChunks } from "./state.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "kw-state-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const list = new ChunkList(2);
list.push(Buffer.alloc(32, 1), 70_000);
list.push(Buffer.alloc(32, 2), 30_000);
const chunks = Buffer.from(list.stored());

/** Fingerprints as a chunk list stores them (the chunks themselves do not matter here). */
function encodeMarks(marks: bigint[]): Buffer | null {
  const marked = new ChunkList(marks.length, true);
  for (const mark of marks) marked.push(Buffer.alloc(32), 1, mark);
  return marked.storedMarks();
}
const file = {
  size: 100_000,
  mtimeMs: 1,
  mode: 0o644,
  ino: 7,
  ctimeMs: 2,
  sha256: Buffer.alloc(32, 3),
  chunks,
};

function fileRecord(state: ClientState, path: string): FileRecord {
  const record = state.get(path);
  assert.equal(record?.kind, "file");
  return record as FileRecord;
}

/** The chunks a record gives the next read of its file, or null. */
function recorded(record: FileRecord): ChunkRef[] | null {
  const chunks = recordedChunks(record);
  return chunks && [...chunks];
}

describe("client state", () => {
  test("keeps a file's fingerprints with its chunks, and forgets them when told", async () => {
    const stateDir = join(dir, "a");
    const state = ClientState.open(stateDir, "store", "set", "/src");
    state.recordFile("big", { ...file, marks: encodeMarks([11n, 2n ** 64n - 1n]) });
    state.recordFile("small", { ...file, chunks: null, marks: null });
    assert.deepEqual(
      recorded(fileRecord(state, "big"))?.map((c) => [c.id[0], c.length, c.mark]),
      [
        [1, 70_000, 11n],
        [2, 30_000, 2n ** 64n - 1n],
      ],
    );
    assert.equal(recorded(fileRecord(state, "small")), null);
    state.forgetMarks("big");
    assert.deepEqual(
      recorded(fileRecord(state, "big"))?.map((c) => [c.id[0], c.mark]),
      [
        [1, undefined],
        [2, undefined],
      ],
    );
    state.close();
  });

  test("fingerprints that do not fit the chunk list are not used", () => {
    const state = ClientState.open(join(dir, "b"), "store", "set", "/src");
    state.recordFile("big", { ...file, marks: encodeMarks([11n]) });
    assert.deepEqual(
      recorded(fileRecord(state, "big"))?.map((c) => c.mark),
      [undefined, undefined],
    );
    state.close();
  });

  test("a state from before fingerprints (schema 4) is brought up to date, its records kept", async () => {
    const stateDir = join(dir, "c");
    const state = ClientState.open(stateDir, "store", "set", "/src");
    state.recordFile("big", { ...file, marks: encodeMarks([1n, 2n]) });
    state.close();
    const [name] = (await readdir(stateDir)).filter((n) => n.endsWith(".db"));
    const raw = new Database(join(stateDir, name as string));
    raw.exec("ALTER TABLE entries DROP COLUMN marks");
    raw.pragma("user_version = 4");
    raw.close();

    const reopened = ClientState.open(stateDir, "store", "set", "/src");
    const record = fileRecord(reopened, "big");
    assert.deepEqual(record.chunks, chunks);
    assert.equal(record.marks, null);
    reopened.close();
    const check = new Database(join(stateDir, name as string), { readonly: true });
    assert.equal(check.pragma("user_version", { simple: true }), 6);
    check.close();
  });

  test("folders the server made on the way to a recorded file are marked as sent, also in an older state", async () => {
    // A file sent before its folders' own requests makes the server create them; unless
    // they are marked, no scan deletes them once they are gone (the walk never meets them).
    const stateDir = join(dir, "e");
    const state = ClientState.open(stateDir, "store", "set", "/src");
    state.recordFolder("a", 0o755);
    state.markSent("a/b/c/f");
    state.recordFile("a/b/c/f", { ...file, marks: null });
    assert.deepEqual(state.sentBelow("").sort(), ["a/b", "a/b/c"], "up to the first recorded folder");
    state.recordFolder("a/b", 0o755);
    assert.deepEqual(state.sentBelow(""), ["a/b/c"], "a folder's record takes its mark away");
    // Schema 5 knew nothing of this: its records below unrecorded folders are marked on opening.
    state.recordFile("p/q/g", { ...file, marks: null });
    state.close();
    const [name] = (await readdir(stateDir)).filter((n) => n.endsWith(".db"));
    const raw = new Database(join(stateDir, name as string));
    raw.exec("DELETE FROM sent");
    raw.pragma("user_version = 5");
    raw.close();
    const reopened = ClientState.open(stateDir, "store", "set", "/src");
    assert.deepEqual(reopened.sentBelow("").sort(), ["a/b/c", "p", "p/q"]);
    reopened.close();
  });

  test("marks made in one turn are committed together at its end, before their promises resolve", async () => {
    const stateDir = join(dir, "m");
    const state = ClientState.open(stateDir, "store", "set", "/src");
    try {
      const [name] = (await readdir(stateDir)).filter((n) => n.endsWith(".db"));
      const other = new Database(join(stateDir, name as string), { readonly: true });
      const committed = () =>
        (other.prepare("SELECT path FROM sent ORDER BY path").all() as { path: string }[]).map((r) => r.path);
      try {
        let resolved = 0;
        const marks = ["one", "two"].map((path) =>
          state.markSent(path).then(() => {
            resolved++;
            assert.deepEqual(committed(), ["one", "two"], "committed before any promise resolves");
          }),
        );
        assert.deepEqual(state.sentBelow(""), ["one", "two"], "this connection sees them at once");
        assert.deepEqual(committed(), [], "not yet committed: the turn goes on");
        assert.equal(resolved, 0);
        await Promise.all(marks);
        assert.equal(resolved, 2);
        // A mark still waiting when the state closes is committed by the close.
        const last = state.markSent("three");
        state.close();
        await last;
        assert.deepEqual(committed(), ["one", "three", "two"]);
      } finally {
        other.close();
      }
    } finally {
      state.close();
    }
  });

  test("a state written by a newer keepwatch is refused, with what to do", async () => {
    const stateDir = join(dir, "d");
    ClientState.open(stateDir, "store", "set", "/src").close();
    const [name] = (await readdir(stateDir)).filter((n) => n.endsWith(".db"));
    const raw = new Database(join(stateDir, name as string));
    raw.pragma("user_version = 99");
    raw.close();
    assert.throws(() => ClientState.open(stateDir, "store", "set", "/src"), {
      code: "KW_STATE_UNUSABLE",
      message: /newer keepwatch.*KEEPWATCH_STATE_DIR/,
    });
  });
});
