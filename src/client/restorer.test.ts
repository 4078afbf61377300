// The client side of restore against a hand-made server that speaks the protocol on a
// real loopback socket: files and folders land under DIR with their bytes, mode and
// mtime; nothing existing is replaced without `overwrite`; no link in DIR is followed;
// a bad content, a lying server or an error mid-file leaves no partial or temporary file.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import {
  chmod,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, test } from "node:test";
import { KeepwatchError } from "../errors.js";
import { Connection } from "../protocol/connection.js";
import type { Frame } from "../protocol/frame.js";
import {
  decodeHistory,
  type Entry,
  encodeHistory,
  type RestoreRequest,
} from "../protocol/history-messages.js";
import { decode, encode, MessageType } from "../protocol/messages.js";
import { EventHub, type ProgressEvent } from "../ui/events.js";
import { ServerLink } from "./link.js";
import { localPath, restore } from "./restorer.js";

const MTIME = Date.UTC(2021, 2, 3, 4, 5, 6, 789) + 0.5;

interface Item {
  entry: Entry;
  data: Buffer;
}

let nextVersion = 1;

function file(path: string, data: Buffer | string, mode = 0o644, mtimeMs = MTIME): Item {
  const bytes = Buffer.from(data);
  return {
    entry: {
      path,
      kind: "file",
      size: bytes.length,
      mtimeMs,
      mode,
      sha256: createHash("sha256").update(bytes).digest(),
      versionId: nextVersion++,
      time: 1000,
    },
    data: bytes,
  };
}

function folder(path: string, mode = 0o755, mtimeMs = MTIME): Item {
  return {
    entry: {
      path,
      kind: "dir",
      size: 0,
      mtimeMs,
      mode,
      sha256: Buffer.alloc(0),
      versionId: nextVersion++,
      time: 1000,
    },
    data: Buffer.alloc(0),
  };
}

type RestoreBehaviour = (conn: Connection, id: number, items: Item[]) => Promise<void>;

/** Send every item of the tree, each file's bytes in pieces of uneven sizes, then ACK. */
const honest: RestoreBehaviour = async (conn, id, items) => {
  for (const { entry, data } of items) {
    await conn.sendAndWait(MessageType.ENTRY, id, encodeHistory.entry(entry));
    let offset = 0;
    let piece = 1;
    while (offset < data.length) {
      const end = Math.min(data.length, offset + piece);
      await conn.sendAndWait(MessageType.FILE_DATA, id, data.subarray(offset, end));
      offset = end;
      piece = (piece * 7 + 13) % 200_000;
    }
  }
  conn.send(MessageType.ACK, id);
};

/** A server for one set whose history is `items`, answering LIST mode 0 and RESTORE. */
class FakeServer {
  readonly requests: string[] = [];
  private server: Server | null = null;
  port = 0;

  constructor(
    private readonly items: Item[],
    private readonly onRestore: RestoreBehaviour = honest,
  ) {}

  async start(): Promise<void> {
    this.server = createServer((socket) => {
      const conn = new Connection(socket, { idleTimeoutMs: 30_000, keepaliveMs: 10_000 });
      conn.setHandler((frame) => this.onFrame(conn, frame));
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    this.port = typeof address === "object" && address ? address.port : 0;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server?.close(() => resolve()));
  }

  private selected(path: string): Item[] {
    return this.items.filter(
      (i) => path === "" || i.entry.path === path || i.entry.path.startsWith(`${path}/`),
    );
  }

  private async onFrame(conn: Connection, frame: Frame): Promise<void> {
    switch (frame.type) {
      case MessageType.HELLO: {
        const hello = decode.hello(frame.payload);
        conn.send(
          MessageType.WELCOME,
          0,
          encode.welcome({
            version: hello.maxVersion,
            storeId: "00000000-0000-0000-0000-000000000000",
            maxFrame: 1024 * 1024,
            window: 64,
            idleTimeoutMs: 30_000,
            serverName: "fake",
          }),
        );
        return;
      }
      case MessageType.LIST: {
        const request = decodeHistory.list(frame.payload);
        this.requests.push(`LIST ${request.path}`);
        for (const { entry } of this.selected(request.path)) {
          await conn.sendAndWait(MessageType.ENTRY, frame.requestId, encodeHistory.entry(entry));
        }
        conn.send(MessageType.ACK, frame.requestId);
        return;
      }
      case MessageType.RESTORE: {
        const request: RestoreRequest = decodeHistory.restore(frame.payload);
        this.requests.push(`RESTORE ${request.path}`);
        await this.onRestore(conn, frame.requestId, this.selected(request.path));
        return;
      }
      case MessageType.BYE:
        conn.send(MessageType.BYE, 0);
        conn.end();
        return;
      default:
        return;
    }
  }
}

describe("restore (client side)", () => {
  let dir: string;
  let root: string;
  let servers: FakeServer[];
  let links: ServerLink[];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "kw-restorer-"));
    root = join(dir, "out");
    servers = [];
    links = [];
  });

  afterEach(async () => {
    for (const link of links) link.close();
    for (const server of servers) await server.close();
    // Restored read-only folders must not stop the cleanup.
    await chmodTree(dir);
    await rm(dir, { recursive: true, force: true });
  });

  async function run(
    items: Item[],
    options: { path?: string; overwrite?: boolean; onRestore?: RestoreBehaviour } = {},
  ): Promise<{ events: ProgressEvent[]; server: FakeServer; link: ServerLink }> {
    const server = new FakeServer(items, options.onRestore);
    await server.start();
    servers.push(server);
    const link = await ServerLink.connect({
      host: "127.0.0.1",
      port: server.port,
      set: "src",
      clientName: "test",
      // FakeServer speaks plain TCP; TLS and credentials have their own end-to-end tests.
      security: { insecure: true, secret: null, configDir: join(dir, "config") },
    });
    links.push(link);
    const hub = new EventHub();
    const events: ProgressEvent[] = [];
    hub.subscribe((event) => events.push(event));
    await restore({
      link,
      reporter: hub,
      root,
      set: "src",
      path: options.path ?? "docs",
      time: -1,
      overwrite: options.overwrite ?? false,
    });
    return { events, server, link };
  }

  async function runFailing(
    items: Item[],
    code: string,
    options: { path?: string; overwrite?: boolean; onRestore?: RestoreBehaviour } = {},
  ): Promise<KeepwatchError> {
    let caught: unknown = null;
    await run(items, options).catch((error: unknown) => {
      caught = error;
    });
    assert.ok(caught instanceof KeepwatchError, `expected ${code}, got ${String(caught)}`);
    assert.equal(caught.code, code, caught.message);
    return caught;
  }

  test("where entries go: the restored path's last component under DIR, or SET/... for a whole set", () => {
    assert.equal(localPath({ set: "src", path: "docs" }, "docs/a/b.txt"), "docs/a/b.txt");
    assert.equal(localPath({ set: "src", path: "a/docs" }, "a/docs/b.txt"), "docs/b.txt");
    assert.equal(localPath({ set: "src", path: "a/docs/b.txt" }, "a/docs/b.txt"), "b.txt");
    assert.equal(localPath({ set: "src", path: "" }, "a/b.txt"), "src/a/b.txt");
  });

  test("files and folders arrive with their bytes, mode and mtime", async () => {
    const big = randomBytes(1024 * 1024 + 3);
    const items = [
      folder("docs", 0o555),
      file("docs/a.txt", "alpha\n", 0o640),
      file("docs/empty", "", 0o600, MTIME - 1000),
      folder("docs/sub", 0o700),
      file("docs/sub/big.bin", big, 0o755),
      file("docs/sub dir ü\nx", "odd name"),
      file("elsewhere.txt", "not restored"),
    ];
    const { events, server } = await run(items);
    assert.deepEqual(server.requests, ["LIST docs", "RESTORE docs"]);
    for (const { entry, data } of items.slice(0, 6)) {
      const abs = join(root, ...entry.path.split("/"));
      const st = await lstat(abs);
      assert.equal(st.mode & 0o7777, entry.mode, `mode of ${entry.path}`);
      if (entry.kind === "file") {
        assert.ok(st.isFile());
        assert.deepEqual(await readFile(abs), data, entry.path);
        assert.ok(Math.abs(st.mtimeMs - entry.mtimeMs) < 1, `mtime of ${entry.path}: ${st.mtimeMs}`);
      } else {
        assert.ok(st.isDirectory());
        assert.ok(Math.abs(st.mtimeMs - entry.mtimeMs) < 1, `a folder's mtime is set after its contents`);
      }
    }
    assert.deepEqual((await readdir(root)).sort(), ["docs"], "nothing else, no temporary file");
    assert.deepEqual(await leftovers(root), []);
    assert.deepEqual(events[0], { kind: "queued", files: 4, bytes: 6 + big.length + 8 });
    assert.deepEqual(
      events
        .filter((e) => e.kind === "file-done")
        .map((e) => (e.kind === "file-done" ? `${e.op} ${e.path}` : "")),
      [
        "restore src/docs/a.txt",
        "restore src/docs/empty",
        "restore src/docs/sub/big.bin",
        "restore src/docs/sub dir ü\nx",
      ],
    );
    const progress = events.filter((e) => e.kind === "file-progress" && e.path === "src/docs/sub/big.bin");
    assert.ok(progress.length > 1, "the bar moves while a file arrives");
  });

  test("a whole set goes into DIR/SET, and an existing DIR is merged into", async () => {
    await mkdir(join(root, "src"), { recursive: true });
    await writeFile(join(root, "src", "mine.txt"), "keep me");
    await run([file("a.txt", "a"), folder("d"), file("d/b.txt", "b")], { path: "" });
    assert.equal(await readFile(join(root, "src", "a.txt"), "utf8"), "a");
    assert.equal(await readFile(join(root, "src", "d", "b.txt"), "utf8"), "b");
    assert.equal(await readFile(join(root, "src", "mine.txt"), "utf8"), "keep me");
  });

  test("an existing file is refused before anything is written; overwrite replaces it", async () => {
    const items = [
      folder("docs"),
      file("docs/a.txt", "restored"),
      folder("docs/new"),
      file("docs/new/b.txt", "b"),
    ];
    await mkdir(join(root, "docs"), { recursive: true });
    await writeFile(join(root, "docs", "a.txt"), "mine");
    const error = await runFailing(items, "KW_TARGET_EXISTS");
    assert.match(error.message, /a\.txt already exists; add --overwrite/);
    assert.deepEqual(servers[0]?.requests, ["LIST docs"], "no RESTORE was sent");
    assert.equal(await readFile(join(root, "docs", "a.txt"), "utf8"), "mine");
    assert.deepEqual(await readdir(join(root, "docs")), ["a.txt"], "nothing was written");

    await run(items, { overwrite: true });
    assert.equal(await readFile(join(root, "docs", "a.txt"), "utf8"), "restored");
    assert.equal(await readFile(join(root, "docs", "new", "b.txt"), "utf8"), "b");
    assert.deepEqual(await leftovers(root), []);
  });

  test("several files in the way: the first is named, the rest counted", async () => {
    await mkdir(join(root, "docs", "sub"), { recursive: true });
    await writeFile(join(root, "docs", "a.txt"), "mine");
    await writeFile(join(root, "docs", "sub", "b.txt"), "mine");
    const items = [folder("docs"), file("docs/a.txt", "x"), folder("docs/sub"), file("docs/sub/b.txt", "y")];
    const error = await runFailing(items, "KW_TARGET_EXISTS");
    assert.match(error.message, /a\.txt already exists, and 1 more of the restored paths are taken in /);
  });

  test("a folder where a file goes is never replaced, even with overwrite", async () => {
    await mkdir(join(root, "docs", "a.txt"), { recursive: true });
    await runFailing([folder("docs"), file("docs/a.txt", "x")], "KW_TARGET_EXISTS", { overwrite: true });
    assert.ok((await stat(join(root, "docs", "a.txt"))).isDirectory());
  });

  test("a symbolic link in DIR is never followed out of DIR", async () => {
    const outside = join(dir, "outside");
    await mkdir(outside);
    await mkdir(root);
    await symlink(outside, join(root, "docs"));
    const items = [folder("docs"), file("docs/a.txt", "x")];
    await runFailing(items, "KW_TARGET_EXISTS");
    assert.deepEqual(await readdir(outside), []);

    // With overwrite the link itself is replaced by a real folder; its target is untouched.
    await run(items, { overwrite: true });
    assert.ok((await lstat(join(root, "docs"))).isDirectory());
    assert.equal(await readFile(join(root, "docs", "a.txt"), "utf8"), "x");
    assert.deepEqual(await readdir(outside), []);

    // A link where a file goes is replaced, never written through.
    const target = join(outside, "victim");
    await writeFile(target, "victim");
    await rm(join(root, "docs"), { recursive: true });
    await mkdir(join(root, "docs"));
    await symlink(target, join(root, "docs", "a.txt"));
    await runFailing(items, "KW_TARGET_EXISTS");
    await run(items, { overwrite: true });
    assert.ok((await lstat(join(root, "docs", "a.txt"))).isFile());
    assert.equal(await readFile(target, "utf8"), "victim");
  });

  test("content that does not match its SHA-256 is not put in place", async () => {
    const items = [folder("docs"), file("docs/good.txt", "good"), file("docs/bad.txt", "right")];
    const tampering: RestoreBehaviour = async (conn, id, selected) => {
      for (const { entry, data } of selected) {
        await conn.sendAndWait(MessageType.ENTRY, id, encodeHistory.entry(entry));
        const sent = entry.path.endsWith("bad.txt") ? Buffer.from("wrong") : data;
        if (sent.length > 0) await conn.sendAndWait(MessageType.FILE_DATA, id, sent);
      }
      conn.send(MessageType.ACK, id);
    };
    const error = await runFailing(items, "KW_CHUNK_CORRUPT", { onRestore: tampering });
    assert.match(error.message, /bad\.txt/);
    assert.deepEqual((await readdir(join(root, "docs"))).sort(), ["good.txt"]);
  });

  test("an ERROR in the middle of a file leaves the files before it and no partial file", async () => {
    const items = [folder("docs"), file("docs/a.txt", "complete"), file("docs/b.bin", randomBytes(100_000))];
    const failing: RestoreBehaviour = async (conn, id, selected) => {
      for (const { entry, data } of selected) {
        await conn.sendAndWait(MessageType.ENTRY, id, encodeHistory.entry(entry));
        if (entry.path.endsWith("b.bin")) {
          await conn.sendAndWait(MessageType.FILE_DATA, id, data.subarray(0, 5000));
          conn.sendError(id, new KeepwatchError("KW_CHUNK_MISSING", "A chunk is missing."));
          return;
        }
        if (data.length > 0) await conn.sendAndWait(MessageType.FILE_DATA, id, data);
      }
    };
    await runFailing(items, "KW_CHUNK_MISSING", { onRestore: failing });
    assert.deepEqual(await readdir(join(root, "docs")), ["a.txt"]);
    assert.equal(await readFile(join(root, "docs", "a.txt"), "utf8"), "complete");
  });

  test("a server that breaks the rules ends the connection and leaves nothing half-written", async () => {
    const items = [folder("docs"), file("docs/a.txt", "abc")];
    const tooMuch: RestoreBehaviour = async (conn, id, selected) => {
      for (const { entry, data } of selected) {
        await conn.sendAndWait(MessageType.ENTRY, id, encodeHistory.entry(entry));
        if (data.length > 0) await conn.sendAndWait(MessageType.FILE_DATA, id, Buffer.concat([data, data]));
      }
      conn.send(MessageType.ACK, id);
    };
    await runFailing(items, "KW_SIZE_MISMATCH", { onRestore: tooMuch });
    assert.ok(links[0]?.isLost, "the connection is closed");
    assert.deepEqual(await leftovers(root), []);
    assert.deepEqual(await readdir(join(root, "docs")), []);

    const outsidePath: RestoreBehaviour = async (conn, id) => {
      await conn.sendAndWait(MessageType.ENTRY, id, encodeHistory.entry(file("elsewhere/x", "x").entry));
      conn.send(MessageType.ACK, id);
    };
    await runFailing(items, "KW_BAD_MESSAGE", { onRestore: outsidePath });

    const cutShort: RestoreBehaviour = async (conn, id, selected) => {
      for (const { entry } of selected)
        await conn.sendAndWait(MessageType.ENTRY, id, encodeHistory.entry(entry));
      conn.send(MessageType.ACK, id);
    };
    await runFailing(items, "KW_SIZE_MISMATCH", { onRestore: cutShort });
    assert.deepEqual(await leftovers(root), []);
  });
});

/** Temporary files a restore may have left behind anywhere below `root`. */
async function leftovers(root: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (path: string): Promise<void> => {
    for (const entry of await readdir(path, { withFileTypes: true })) {
      if (entry.name.startsWith(".kw-restore-")) found.push(join(path, entry.name));
      if (entry.isDirectory()) await walk(join(path, entry.name));
    }
  };
  await walk(root).catch(() => {});
  return found;
}

async function chmodTree(path: string): Promise<void> {
  try {
    const st = await lstat(path);
    if (!st.isDirectory()) return;
    await chmod(path, 0o755);
    for (const name of await readdir(path)) await chmodTree(join(path, name));
  } catch {
    // gone already
  }
}
