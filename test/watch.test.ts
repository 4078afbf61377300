// The watching client: after its first pass it follows every kind of change (create,
// append, editor-style save, delete, new deep folders, folder rename and delete), survives
// a server restart, stops cleanly on SIGTERM and, restarted, sends only what changed.

import assert from "node:assert/strict";
import { appendFile, mkdir, readdir, rename, rm, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { type ClientHandle, type KwEvent, Sandbox, type ServerHandle, stackLines } from "./helpers.js";

function putPaths(events: KwEvent[]): string[] {
  return events
    .filter((e) => e.event === "file-done" && e.op === "put")
    .map((e) => String(e.path))
    .sort();
}

describe("keepwatch client (watching)", { timeout: 120_000 }, () => {
  let box: Sandbox;
  let server: ServerHandle;
  let client: ClientHandle;
  let src: string;
  let dest: string;
  let mirror: string;
  // The steps build on each other: after one fails, the rest would only repeat its failure.
  let broken: string | null = null;

  after(() => box?.cleanup());

  before(async () => {
    box = await Sandbox.create(null);
    src = box.path("work");
    dest = box.path("dest");
    mirror = join(dest, "work");
    await mkdir(join(src, "docs", "sub"), { recursive: true });
    await mkdir(join(src, "old", "inner"), { recursive: true });
    await writeFile(join(src, "log.txt"), "line 1\n");
    await writeFile(join(src, "doc.txt"), "version 1\n");
    await writeFile(join(src, "doomed.txt"), "to be deleted\n");
    await writeFile(join(src, "docs", "readme.md"), "# docs\n");
    await writeFile(join(src, "docs", "guide.md"), "guide\n");
    await writeFile(join(src, "docs", "sub", "deep.md"), "deep\n");
    await writeFile(join(src, "old", "a.txt"), "a\n");
    await writeFile(join(src, "old", "inner", "b.txt"), "b\n");
    server = await box.startServer(dest);
  });

  /**
   * Run a step unless an earlier one failed. After a failure, `repair` (if given) undoes
   * the step's changes the client missed; when source and mirror then agree again, the
   * later steps still run, otherwise they are skipped as they would only repeat the failure.
   */
  async function step(
    t: TestContext,
    body: () => Promise<void>,
    repair?: () => Promise<void>,
  ): Promise<void> {
    if (broken !== null) {
      t.skip(`an earlier step failed: ${broken}`);
      return;
    }
    try {
      await body();
    } catch (error) {
      broken = t.name;
      if (repair) {
        try {
          await repair();
          await converged();
          broken = null;
        } catch {
          // stays broken
        }
      }
      throw error;
    }
  }

  // A change reaches the mirror well within a second here; 10 s leaves room for a loaded machine.
  const converged = () =>
    box.waitForMirror(src, mirror, { alive: [client.proc, server.proc], timeoutMs: 10_000 });

  it("makes a first full pass and reports idle", async (t) => {
    await step(t, async () => {
      client = await box.startClient(src, server.port);
      await converged();
      assert.deepEqual(putPaths(server.events), [
        "doc.txt",
        "docs/guide.md",
        "docs/readme.md",
        "docs/sub/deep.md",
        "doomed.txt",
        "log.txt",
        "old/a.txt",
        "old/inner/b.txt",
      ]);
    });
  });

  it("backs up a new file", async (t) => {
    await step(t, async () => {
      await writeFile(join(src, "new.txt"), "brand new\n");
      await converged();
    });
  });

  it("backs up an append to a file", async (t) => {
    await step(t, async () => {
      await appendFile(join(src, "log.txt"), "line 2\n");
      await converged();
    });
  });

  it("follows an editor-style save (temp file renamed over the target)", async (t) => {
    await step(t, async () => {
      const temp = join(src, ".doc.txt.swp~");
      await writeFile(temp, "version 2, saved by an editor\n");
      await rename(temp, join(src, "doc.txt"));
      await converged();
    });
  });

  it("deletes a deleted file", async (t) => {
    await step(t, async () => {
      await unlink(join(src, "doomed.txt"));
      await converged();
    });
  });

  it("backs up a new deep folder tree, and watches the new folders", async (t) => {
    const later = [
      join(src, "new", "a", "later.txt"),
      join(src, "new", "a", "b", "later.txt"),
      join(src, "new", "a", "b", "c", "later.txt"),
    ];
    await step(
      t,
      async () => {
        // Made in one go, like `mkdir -p`, `tar x` or `git clone` do.
        await mkdir(join(src, "new", "a", "b", "c"), { recursive: true });
        await mkdir(join(src, "new", "empty"), { recursive: true });
        await writeFile(join(src, "new", "top.txt"), "top\n");
        await writeFile(join(src, "new", "a", "one.txt"), "one\n");
        await writeFile(join(src, "new", "a", "b", "c", "deepest.txt"), "deepest\n");
        await converged();
        // Files written later into each new folder prove those folders are watched.
        for (const file of later) await writeFile(file, "written after the first sync\n");
        await converged();
      },
      async () => {
        for (const file of later) await rm(file, { force: true });
      },
    );
  });

  it("follows a folder rename, and changes below the renamed folder", async (t) => {
    const after = join(src, "documents", "sub", "after-rename.txt");
    await step(
      t,
      async () => {
        await rename(join(src, "docs"), join(src, "documents"));
        await converged();
        await writeFile(after, "written into a sub-folder of the renamed folder\n");
        await converged();
      },
      () => rm(after, { force: true }),
    );
  });

  it("follows a folder tree moved in from outside SRC, and changes deep inside it", async (t) => {
    const outside = box.path("outside");
    const later = join(src, "pkg", "x", "y", "later.txt");
    await step(
      t,
      async () => {
        await mkdir(join(outside, "pkg", "x", "y"), { recursive: true });
        await writeFile(join(outside, "pkg", "x", "y", "z.txt"), "z\n");
        await rename(join(outside, "pkg"), join(src, "pkg"));
        await converged();
        await writeFile(later, "written deep inside the moved-in folder\n");
        await converged();
      },
      () => rm(later, { force: true }),
    );
  });

  it("deletes a deleted folder", async (t) => {
    await step(t, async () => {
      await rm(join(src, "old"), { recursive: true });
      await converged();
    });
  });

  it("reconnects after the server is killed and restarted, and catches up", async (t) => {
    await step(t, async () => {
      const port = server.port;
      const since = client.events.length;
      await server.kill("SIGKILL");
      const gone = await box.waitForEvent(client.proc, "disconnected", { since, alive: [client.proc] });
      assert.equal(typeof gone.reason, "string");
      assert.equal(gone.retryInMs, 250, "the first retry comes after 250 ms");
      // Changes while nobody listens.
      await writeFile(join(src, "while-down.txt"), "written while the server was down\n");
      await appendFile(join(src, "log.txt"), "line 3, server down\n");
      await unlink(join(src, "new.txt"));
      await mkdir(join(src, "down-folder"));
      await writeFile(join(src, "down-folder", "x.txt"), "x\n");
      server = await box.startServer(dest, { port });
      assert.equal(server.port, port, "the new server listens on the same port");
      await box.waitForEvent(client.proc, "connected", {
        since,
        alive: [client.proc, server.proc],
        timeoutMs: 25_000,
      });
      // Backoff: 250 ms, doubling, at most 15 s.
      const delays = client.proc.eventsOf("disconnected", since).map((e) => e.retryInMs);
      const expected = delays.map((_, i) => Math.min(250 * 2 ** i, 15_000));
      assert.deepEqual(delays, expected, `retry delays while the server was down\n${box.report()}`);
      await converged();
    });
  });

  it("stops with exit 0 on SIGTERM", async (t) => {
    await step(t, async () => {
      const status = await client.kill("SIGTERM");
      assert.deepEqual(
        status,
        { code: 0, signal: null },
        `the client should exit 0 on SIGTERM\n${box.report()}`,
      );
      assert.deepEqual(stackLines(client.proc.stderr), []);
      assert.deepEqual(client.proc.otherLines, [], "every client stdout line is a JSON event");
      assert.deepEqual(client.proc.eventsOf("error"), [], "the client reported no error");
    });
  });

  it("restarted, sends only what changed while it was stopped", async (t) => {
    await step(t, async () => {
      await writeFile(join(src, "documents", "guide.md"), "guide, edited while the client was stopped\n");
      await writeFile(join(src, "added-while-stopped.txt"), "added\n");
      const since = server.events.length;
      client = await box.startClient(src, server.port);
      await converged();
      assert.deepEqual(
        putPaths(server.events.slice(since)),
        ["added-while-stopped.txt", "documents/guide.md"],
        `only the changed files are sent again\n${box.report()}`,
      );
      const scan = client.proc.eventsOf("scan-done")[0];
      assert.equal(scan?.changedFiles, 2, `the startup scan finds the two changes\n${box.report()}`);
      assert.deepEqual(client.proc.eventsOf("error"), []);
      assert.equal(server.proc.running, true);
      assert.deepEqual(
        await readdir(join(dest, ".keepwatch", "tmp")),
        [],
        "no temporary file is left in DEST",
      );
    });
  });
});
