// The history, end to end on real processes: `history` shows every version of a file
// after several edits and a delete; `restore` brings back every past version byte for
// byte with its mode and mtime, and a folder or a whole set as it was at a past moment;
// `--overwrite`; `ls` of the sets and of a set at a past time; and the one-sentence
// errors for a bad TIME, a missing path and an unreachable server.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { chmod, mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { ServerLink } from "../src/client/link.js";
import { listEntries } from "../src/client/restorer.js";
import { KeepwatchError } from "../src/errors.js";
import { encodeHistory } from "../src/protocol/history-messages.js";
import { encode, MessageType } from "../src/protocol/messages.js";
import {
  freePort,
  LOOPBACK,
  type RunResult,
  readTree,
  Sandbox,
  type ServerHandle,
  sleep,
  stackLines,
  type TreeEntry,
  treeDifferences,
} from "./helpers.js";

/** One line of `history --json` or `ls --set ... --json`. */
interface VersionLine {
  path: string;
  set: string;
  kind: "file" | "dir" | "deleted";
  size: number;
  mtimeMs: number | null;
  mode: number | null;
  sha256: string | null;
  versionId: number;
  time: string;
  timeMs: number;
}

/** Run a history command (ls, history, restore) against `server`. */
function kw(box: Sandbox, server: ServerHandle | number, args: string[]): Promise<RunResult> {
  const port = typeof server === "number" ? server : server.port;
  return box.run(args[0] ?? "kw", [...args, "--port", String(port)]);
}

function jsonLines<T>(result: RunResult): T[] {
  return [...result.otherLines].map((line) => JSON.parse(line) as T);
}

function assertOk(result: RunResult, what: string): void {
  const context = `${what}\n${result.proc.describe(30)}`;
  assert.equal(result.code, 0, `${what} should exit 0\n${context}`);
  assert.deepEqual(stackLines(result.stderr), [], `${what} printed a stack trace\n${context}`);
}

/** Without --json: the exit code and exactly one `keepwatch: ...` sentence on stderr. */
function assertOneSentence(result: RunResult, exit: number, mentions: string[]): void {
  const context = `\n${result.proc.describe(30)}`;
  assert.equal(result.code, exit, `exit code${context}`);
  assert.deepEqual(stackLines(result.stderr), [], `a stack trace was printed${context}`);
  const lines = result.stderr.split("\n").filter((line) => line.trim() !== "");
  assert.equal(lines.length, 1, `exactly one line on stderr${context}`);
  assert.match(lines[0] as string, /^keepwatch: \S/);
  for (const fragment of mentions) {
    assert.ok(
      lines[0]?.includes(fragment),
      `the sentence should mention ${JSON.stringify(fragment)}${context}`,
    );
  }
}

async function pushOk(box: Sandbox, src: string, server: ServerHandle): Promise<void> {
  const result = await box.push(src, server.port);
  assertOk(result, "push");
}

/** The entries of `tree` below `prefix/`, keyed relative to it, `prefix` itself as "". */
function subtree(tree: Map<string, TreeEntry>, prefix: string): Map<string, TreeEntry> {
  const out = new Map<string, TreeEntry>();
  for (const [path, entry] of tree) {
    if (path.startsWith(`${prefix}/`)) out.set(path.slice(prefix.length + 1), entry);
  }
  return out;
}

/** Write `content` at `path` with a chosen mtime (so each edit is a visible change). */
async function writeVersion(
  path: string,
  content: Buffer | string,
  mtimeMs: number,
  mode?: number,
): Promise<void> {
  await writeFile(path, content);
  if (mode !== undefined) await chmod(path, mode);
  const when = new Date(mtimeMs);
  await utimes(path, when, when);
}

test("history shows every version after several edits and a delete, and each restores byte for byte", {
  timeout: 120_000,
}, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("source");
  await mkdir(join(src, "docs"), { recursive: true });
  const server = await box.startServer(box.path("dest"));
  const file = join(src, "docs", "notes.txt");
  const base = Date.UTC(2023, 0, 2, 3, 4, 5, 678);

  // Four contents, one of them large enough to be many chunks, and a mode change.
  const versions: { content: Buffer; mode: number; mtimeMs: number }[] = [
    { content: Buffer.from("first\n"), mode: 0o644, mtimeMs: base },
    {
      content: Buffer.concat([Buffer.from("second\n"), randomBytes(3 * 1024 * 1024)]),
      mode: 0o644,
      mtimeMs: base + 1000,
    },
    { content: Buffer.from("third, and private\n"), mode: 0o600, mtimeMs: base + 2000 },
    { content: Buffer.from(""), mode: 0o640, mtimeMs: base + 3000 },
  ];
  for (const version of versions) {
    await writeVersion(file, version.content, version.mtimeMs, version.mode);
    await pushOk(box, src, server);
  }
  await rm(file);
  await pushOk(box, src, server);

  // history --json: one line per version, oldest first, the delete last.
  const listed = await kw(box, server, ["history", "source/docs/notes.txt", LOOPBACK, "--json"]);
  assertOk(listed, "history --json");
  const lines = jsonLines<VersionLine>(listed);
  assert.deepEqual(
    lines.map((l) => l.kind),
    ["file", "file", "file", "file", "deleted"],
    listed.stdout,
  );
  for (const [i, version] of versions.entries()) {
    const line = lines[i] as VersionLine;
    assert.equal(line.path, "source/docs/notes.txt");
    assert.equal(line.size, version.content.length);
    assert.equal(line.mode, version.mode);
    assert.ok(Math.abs((line.mtimeMs ?? 0) - version.mtimeMs) < 1);
    assert.equal(line.sha256, sha256Hex(version.content));
  }
  const ids = lines.map((l) => l.versionId);
  assert.deepEqual(
    [...ids].sort((a, b) => a - b),
    ids,
    "version ids increase",
  );
  const times = lines.map((l) => l.timeMs);
  assert.deepEqual(
    [...times].sort((a, b) => a - b),
    times,
    "commit times increase",
  );
  assert.equal(new Date(lines[0]?.time ?? "").getTime(), lines[0]?.timeMs);

  // The plain table: a header, then one row per version with kind, size and version id.
  const table = await kw(box, server, ["history", "source/docs/notes.txt", LOOPBACK]);
  assertOk(table, "history");
  const rows = table.stdout.trimEnd().split("\n");
  assert.match(rows[0] ?? "", /^TIME\s+KIND\s+SIZE\s+MTIME\s+SHA256\s+VERSION\s+PATH$/);
  assert.equal(rows.length, 1 + lines.length, table.stdout);
  assert.match(rows[5] ?? "", /\bdeleted\b.*source\/docs\/notes\.txt$/);
  assert.ok(rows[2]?.includes(String(versions[1]?.content.length)));
  assert.ok(rows[1]?.includes((lines[0]?.sha256 ?? "").slice(0, 12)));

  // The history of the folder includes its file's versions; of the set, everything.
  const ofFolder = jsonLines<VersionLine>(await kw(box, server, ["history", "source/docs", "--json"]));
  assert.deepEqual(
    ofFolder.filter((l) => l.path === "source/docs/notes.txt").map((l) => l.versionId),
    ids,
  );

  // Every past version comes back byte for byte, with its mode and mtime.
  for (const [i, version] of versions.entries()) {
    const at = new Date((lines[i] as VersionLine).timeMs).toISOString();
    const out = box.path(`restored-${i}`);
    const result = await kw(box, server, [
      "restore",
      "source/docs/notes.txt",
      "--at",
      at,
      "--to",
      out,
      "--json",
    ]);
    assertOk(result, `restore of version ${i + 1}`);
    const restored = join(out, "notes.txt");
    assert.deepEqual(await readFile(restored), version.content, `version ${i + 1}'s bytes`);
    const st = await stat(restored);
    assert.equal(st.mode & 0o7777, version.mode, `version ${i + 1}'s mode`);
    assert.ok(Math.abs(st.mtimeMs - version.mtimeMs) < 1, `version ${i + 1}'s mtime: ${st.mtimeMs}`);
    assert.deepEqual(await readdir(out), ["notes.txt"], "nothing but the file: no temporary file");
    const done = result.events.filter((e) => e.event === "file-done");
    assert.deepEqual(
      done.map((e) => [e.path, e.op, e.size]),
      [["source/docs/notes.txt", "restore", version.content.length]],
    );
  }

  // At the moment of the delete (and now) there is nothing to restore.
  const gone = await kw(box, server, [
    "restore",
    "source/docs/notes.txt",
    "--at",
    new Date((lines[4] as VersionLine).timeMs).toISOString(),
    "--to",
    box.path("restored-deleted"),
  ]);
  assertOneSentence(gone, 1, ["source/docs/notes.txt"]);
  const goneNow = await kw(box, server, [
    "restore",
    "source/docs/notes.txt",
    "--to",
    box.path("restored-now"),
  ]);
  assertOneSentence(goneNow, 1, ["Nothing was backed up at", "now"]);
});

test("restore of a folder and of a whole set at a past moment equals the source as it was then", {
  timeout: 120_000,
}, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("source");
  const server = await box.startServer(box.path("dest"));
  await mkdir(join(src, "docs", "deep", "er"), { recursive: true });
  await mkdir(join(src, "private"), { mode: 0o700 });
  await chmod(join(src, "private"), 0o700);
  await writeVersion(join(src, "top.txt"), "top\n", Date.UTC(2020, 1, 2));
  await writeVersion(join(src, "docs", "a.txt"), "a, first\n", Date.UTC(2020, 1, 3, 4, 5, 6, 7));
  await writeVersion(join(src, "docs", "big.bin"), randomBytes(2 * 1024 * 1024 + 5), Date.UTC(2020, 1, 4));
  await writeVersion(join(src, "docs", "deep", "er", "x.sh"), "#!/bin/sh\n", Date.UTC(2020, 1, 5), 0o755);
  await writeVersion(join(src, "docs", "spaces and ü.txt"), "name\n", Date.UTC(2020, 1, 6));
  await writeVersion(join(src, "private", "key"), "secret\n", Date.UTC(2020, 1, 7), 0o600);
  await pushOk(box, src, server);
  const then = await readTree(src);
  await sleep(20);
  const moment = Date.now();
  await sleep(20);

  // Change everything: edits, a delete, a new file, a folder renamed, a mode change.
  await writeVersion(join(src, "docs", "a.txt"), "a, second and longer\n", Date.UTC(2021, 0, 1));
  await rm(join(src, "docs", "big.bin"));
  await writeVersion(join(src, "docs", "new.txt"), "new\n", Date.UTC(2021, 0, 2));
  await rename(join(src, "docs", "deep"), join(src, "docs", "moved"));
  await chmod(join(src, "top.txt"), 0o600);
  await writeVersion(join(src, "top.txt"), "top, edited\n", Date.UTC(2021, 0, 3));
  await pushOk(box, src, server);
  const now = await readTree(src);

  // The folder at the moment: DIR/docs holds docs as it was.
  const folderOut = box.path("folder-then");
  const folder = await kw(box, server, [
    "restore",
    "source/docs",
    "--at",
    new Date(moment).toISOString(),
    "--to",
    folderOut,
  ]);
  assertOk(folder, "restore of a folder at a past moment");
  assert.deepEqual(await readdir(folderOut), ["docs"]);
  assert.deepEqual(
    treeDifferences(subtree(then, "docs"), await readTree(join(folderOut, "docs"))),
    [],
    folder.stdout,
  );

  // The whole set at the moment: DIR/source is the source as it was.
  const setOut = box.path("set-then");
  const whole = await kw(box, server, [
    "restore",
    "source",
    "--at",
    new Date(moment).toISOString(),
    "--to",
    setOut,
  ]);
  assertOk(whole, "restore of the whole set at a past moment");
  assert.deepEqual(treeDifferences(then, await readTree(join(setOut, "source"))), []);
  assert.match(whole.stdout, /Restored 6 file\(s\)/);

  // And the set now equals the source now.
  const nowOut = box.path("set-now");
  assertOk(await kw(box, server, ["restore", "source", "--to", nowOut]), "restore of the set now");
  assert.deepEqual(treeDifferences(now, await readTree(join(nowOut, "source"))), []);

  // ls of the set at that moment lists the same paths, with sizes and modes.
  const ls = await kw(box, server, [
    "ls",
    "--set",
    "source",
    "--at",
    new Date(moment).toISOString(),
    "--json",
  ]);
  assertOk(ls, "ls --set --at");
  const listed = jsonLines<VersionLine>(ls);
  assert.deepEqual(
    listed.map((l) => l.path),
    [...then.keys()].map((p) => `source/${p}`).sort(),
  );
  for (const line of listed) {
    const entry = then.get(line.path.slice("source/".length)) as TreeEntry;
    assert.equal(line.kind, entry.kind);
    assert.equal(line.mode, entry.mode, line.path);
    if (entry.kind === "file") assert.equal(line.size, entry.size);
    assert.ok(line.timeMs <= moment, "every version shown was committed by then");
  }
  const lsPath = jsonLines<VersionLine>(
    await kw(box, server, [
      "ls",
      "--set",
      "source",
      "--path",
      "docs/deep",
      "--at",
      new Date(moment).toISOString(),
      "--json",
    ]),
  );
  assert.deepEqual(
    lsPath.map((l) => l.path),
    ["source/docs/deep", "source/docs/deep/er", "source/docs/deep/er/x.sh"],
  );
});

test("restore refuses to replace an existing file unless --overwrite", { timeout: 90_000 }, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("source");
  await mkdir(join(src, "docs"), { recursive: true });
  await writeVersion(join(src, "docs", "a.txt"), "from the backup\n", Date.UTC(2022, 5, 6));
  await writeVersion(join(src, "docs", "b.txt"), "b\n", Date.UTC(2022, 5, 7));
  const server = await box.startServer(box.path("dest"));
  await pushOk(box, src, server);

  const out = box.path("out");
  await mkdir(join(out, "docs"), { recursive: true });
  await writeFile(join(out, "docs", "a.txt"), "my local edit\n");
  const refused = await kw(box, server, ["restore", "source/docs", "--to", out]);
  assertOneSentence(refused, 3, [join(out, "docs", "a.txt"), "--overwrite"]);
  assert.equal(await readFile(join(out, "docs", "a.txt"), "utf8"), "my local edit\n");
  assert.deepEqual(await readdir(join(out, "docs")), ["a.txt"], "nothing was written");

  const replaced = await kw(box, server, ["restore", "source/docs", "--to", out, "--overwrite"]);
  assertOk(replaced, "restore --overwrite");
  assert.deepEqual(treeDifferences(await readTree(src), await readTree(out)), []);
});

test("ls lists the sets, and a set's files at a past time", { timeout: 90_000 }, async (t) => {
  const box = await Sandbox.create(t);
  const server = await box.startServer(box.path("dest"));
  const empty = await kw(box, server, ["ls", "--json"]);
  assertOk(empty, "ls of an empty server");
  assert.deepEqual(empty.otherLines, []);

  const photos = box.path("photos");
  const music = box.path("music");
  await mkdir(photos);
  await mkdir(join(music, "album"), { recursive: true });
  await writeFile(join(photos, "a.jpg"), "a");
  await writeFile(join(photos, "b.jpg"), "b");
  await writeFile(join(music, "album", "song.ogg"), "la");
  await pushOk(box, photos, server);
  await sleep(20);
  const moment = Date.now();
  await sleep(20);
  await pushOk(box, music, server);
  await rm(join(photos, "b.jpg"));
  await pushOk(box, photos, server);

  const sets = await kw(box, server, ["ls", LOOPBACK, "--json"]);
  assertOk(sets, "ls --json");
  const listed = jsonLines<{ set: string; files: number; timeMs: number }>(sets);
  assert.deepEqual(
    listed.map((s) => [s.set, s.files]),
    [
      ["music", 1],
      ["photos", 1],
    ],
  );
  const photosNewest = listed.find((s) => s.set === "photos")?.timeMs ?? 0;
  assert.ok(photosNewest > moment, "the newest version of a set is its delete");

  const before = jsonLines<{ set: string; files: number }>(
    await kw(box, server, ["ls", "--at", new Date(moment).toISOString(), "--json"]),
  );
  assert.deepEqual(
    before.map((s) => [s.set, s.files]),
    [["photos", 2]],
    "at that moment music did not exist yet and photos had two files",
  );

  const plain = await kw(box, server, ["ls"]);
  assertOk(plain, "ls");
  assert.match(plain.stdout, /^SET\s+FILES\s+LAST CHANGE\n/);
  assert.match(plain.stdout, /\nmusic\s+1\s+\d{4}-\d\d-\d\dT/);

  const tree = await kw(box, server, ["ls", "--set", "photos", "--at", new Date(moment).toISOString()]);
  assertOk(tree, "ls --set --at");
  const rows = tree.stdout.trimEnd().split("\n");
  assert.match(rows[0] ?? "", /^MODE\s+SIZE\s+MTIME\s+VERSION TIME\s+PATH$/);
  assert.deepEqual(
    rows.slice(1).map((row) => row.split(/\s+/).at(-1)),
    ["photos/a.jpg", "photos/b.jpg"],
  );
  assert.match(rows[1] ?? "", /^-rw-r--r--\s+1\s/);
});

test("a bad TIME, a missing path and an unreachable server end in one sentence and the right exit code", {
  timeout: 90_000,
}, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("source");
  await mkdir(src);
  await writeFile(join(src, "a.txt"), "a");
  const server = await box.startServer(box.path("dest"));
  await pushOk(box, src, server);

  const out = box.path("out");
  for (const time of ["tomorrowish", "2024-13-01", "3 fortnights ago"]) {
    const bad = await kw(box, server, ["restore", "source/a.txt", "--at", time, "--to", out]);
    assertOneSentence(bad, 2, [JSON.stringify(time), "2h ago", "ISO 8601"]);
  }
  const badLs = await kw(box, server, ["ls", "--set", "source", "--at", "whenever"]);
  assertOneSentence(badLs, 2, ['"whenever"']);
  await assert.rejects(stat(out), "a refused restore creates nothing");

  const missing = await kw(box, server, ["restore", "source/nope.txt", "--to", out]);
  assertOneSentence(missing, 1, ['"source/nope.txt"']);
  await assert.rejects(stat(out), "nothing is created for a path that does not exist");
  const missingHistory = await kw(box, server, ["history", "source/nope.txt"]);
  assertOneSentence(missingHistory, 1, ['"source/nope.txt"']);
  const before = await kw(box, server, ["restore", "source/a.txt", "--at", "2001-01-01", "--to", out]);
  assertOneSentence(before, 1, ["source/a.txt", "2001-01-01T00:00:00.000"]);

  const json = await kw(box, server, ["history", "source/nope.txt", "--json"]);
  assert.equal(json.code, 1);
  assert.deepEqual(
    json.events.filter((e) => e.event === "error").map((e) => e.code),
    ["KW_NOT_FOUND"],
  );

  const badPath = await kw(box, server, ["history", ".hidden/x"]);
  assertOneSentence(badPath, 2, ['".hidden/x"']);

  const closed = await freePort();
  const unreachable = await kw(box, closed, ["restore", "source/a.txt", "--to", out]);
  assertOneSentence(unreachable, 4, [String(closed)]);
  const unreachableLs = await kw(box, closed, ["ls"]);
  assertOneSentence(unreachableLs, 4, [String(closed)]);
});

test("a connection bound to no set may only list the sets", { timeout: 60_000 }, async (t) => {
  const box = await Sandbox.create(t);
  const src = box.path("source");
  await mkdir(src);
  await writeFile(join(src, "a.txt"), "a");
  const server = await box.startServer(box.path("dest"));
  await pushOk(box, src, server);
  const connect = () =>
    ServerLink.connect({
      host: LOOPBACK,
      port: server.port,
      set: "",
      clientName: "test",
      security: box.security(),
    });

  const good = await connect();
  const sets: string[] = [];
  await listEntries(good, { path: "", time: -1, mode: 0 }, (entry) => {
    sets.push(`${entry.path}:${entry.kind}:${entry.size}`);
  });
  assert.deepEqual(sets, ["source:dir:1"]);
  await good.goodbye();

  const refused: [string, (link: ServerLink, id: number) => void][] = [
    [
      "LIST of a path",
      (link, id) =>
        link.conn.send(MessageType.LIST, id, encodeHistory.list({ path: "source", time: -1, mode: 0 })),
    ],
    [
      "LIST of every version",
      (link, id) => link.conn.send(MessageType.LIST, id, encodeHistory.list({ path: "", time: -1, mode: 1 })),
    ],
    [
      "RESTORE",
      (link, id) => link.conn.send(MessageType.RESTORE, id, encodeHistory.restore({ path: "", time: -1 })),
    ],
    ["MKDIR", (link, id) => link.conn.send(MessageType.MKDIR, id, encode.mkdir({ path: "x", mode: 0o755 }))],
  ];
  for (const [what, send] of refused) {
    const link = await connect();
    const request = link.open();
    send(link, request.id);
    await assert.rejects(
      request.answer,
      (error: unknown) => error instanceof KeepwatchError && error.code === "KW_UNEXPECTED_MESSAGE",
      what,
    );
    link.close();
  }
  assert.deepEqual((await readdir(box.path("dest"))).sort(), [".keepwatch", "source"], "no set was created");
});

function sha256Hex(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}
