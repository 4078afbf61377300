// verify, prune and rebuild-mirror end to end on real processes: verify is clean on an
// intact history (beside a running server too) and names the versions one flipped byte
// breaks; the DEST lock turns away a second server, prune and rebuild-mirror while a
// server runs; prune refuses a command line without a rule, and its dry run changes
// nothing; prune SIGKILLed at random moments leaves a history that verify finds clean and
// whose every version still reads back as written; rebuild-mirror repairs a mirror
// damaged by hand.

import assert from "node:assert/strict";
import { createHash, randomBytes, randomInt } from "node:crypto";
import { chmod, cp, mkdir, readdir, readFile, rm, stat, symlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { History } from "../src/server/history.js";
import { ChunkCodecContext } from "../src/store/chunk-codec.js";
import { flipByte } from "../src/store/chunk-store.conformance.js";
import type { LocalChunkStore } from "../src/store/local-chunk-store.js";
import type { VersionRecord } from "../src/store/metadata-store.js";
import { RECORD_HEADER_BYTES } from "../src/store/pack-format.js";
import { PackWalker } from "../src/store/pack-scan.js";
import { SqliteMetadataStore } from "../src/store/sqlite-metadata-store.js";
import {
  compareTrees,
  type KwEvent,
  LOOPBACK,
  type RunResult,
  Sandbox,
  sleep,
  stackLines,
} from "./helpers.js";

const CONTROL = ".keepwatch";

function sha(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

function assertOk(result: RunResult, what: string): void {
  const context = `${what}\n${result.proc.describe(30)}`;
  assert.equal(result.code, 0, `${what} should exit 0\n${context}`);
  assert.deepEqual(stackLines(result.stderr), [], `${what} printed a stack trace\n${context}`);
}

/** The exit code and exactly one `keepwatch: ...` sentence on stderr mentioning each fragment. */
function assertOneSentence(result: RunResult, exit: number, mentions: string[]): void {
  const context = `\n${result.proc.describe(30)}`;
  assert.equal(result.code, exit, `exit code${context}`);
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

async function allVersions(dest: string): Promise<VersionRecord[]> {
  const meta = SqliteMetadataStore.openReadOnly(join(dest, CONTROL, "index.db"));
  try {
    const out: VersionRecord[] = [];
    for await (const v of meta.allVersions()) out.push(v);
    return out;
  } finally {
    await meta.close();
  }
}

/** Where the record of chunk `id` is, found by walking the packs (no index needed). */
async function findRecord(
  dest: string,
  id: Buffer,
): Promise<{ pack: string; offset: number; storedLength: number }> {
  const packs = join(dest, CONTROL, "packs");
  for (const fan of await readdir(packs)) {
    for (const name of await readdir(join(packs, fan))) {
      const walker = await PackWalker.open(join(packs, fan, name));
      try {
        for await (const record of walker.records(new ChunkCodecContext())) {
          if (record.kind === "sound" && record.header.id.equals(id)) {
            return {
              pack: join(packs, fan, name),
              offset: record.offset,
              storedLength: record.header.storedLength,
            };
          }
        }
      } finally {
        await walker.close();
      }
    }
  }
  throw new Error(`chunk ${id.toString("hex")} is in no pack`);
}

/** The pack files of DEST's history, by name. */
async function packFiles(dest: string): Promise<string[]> {
  const packs = join(dest, CONTROL, "packs");
  const out: string[] = [];
  for (const fan of await readdir(packs)) {
    for (const name of await readdir(join(packs, fan)).catch(() => [])) out.push(name);
  }
  return out;
}

// The tests are independent (each its own sandbox), so they may run side by side.
describe("verify, prune and rebuild-mirror", { concurrency: true }, () => {
  test("verify: clean beside a running server; a flipped byte names the versions it breaks, found both ways; the DEST lock", async (t) => {
    const box = await Sandbox.create(t);
    const src = box.path("src");
    const dest = box.path("dest");
    await mkdir(join(src, "docs"), { recursive: true });
    await writeFile(join(src, "a.txt"), "alpha\n");
    await writeFile(join(src, "b.txt"), "bravo, the first version\n");
    await writeFile(join(src, "docs", "c.txt"), "charlie\n");
    const server = await box.startServer(dest);
    assertOk(await box.push(src, server.port), "first push");
    await writeFile(join(src, "b.txt"), "bravo, the second version\n");
    assertOk(await box.push(src, server.port), "second push");

    const beside = await box.run("verify", ["verify", dest, "--json"]);
    assertOk(beside, "verify beside the running server");
    assert.ok(
      beside.events.some(
        (e) => e.event === "info" && /every pack file is read directly/.test(String(e.message)),
      ),
      `verify says it walked the packs\n${beside.proc.describe(30)}`,
    );

    const pid = `pid ${server.proc.pid}`;
    const second = await box.run("server2", ["server", dest, LOOPBACK, "--port", "0"]);
    assertOneSentence(second, 3, ["is in use by keepwatch server", pid]);
    const prune = await box.run("prune", ["prune", dest, "--keep-last", "1"]);
    assertOneSentence(prune, 3, ["is in use by keepwatch server", pid, "stop that server"]);

    // b.txt's first version is one chunk (the file is smaller than the smallest chunk). The
    // server's index cannot be read while it runs, but the stored record can be found.
    const chunkId = Buffer.from(sha("bravo, the first version\n"), "hex");
    const where = await findRecord(dest, chunkId);
    await flipByte(where.pack, where.offset + RECORD_HEADER_BYTES + (where.storedLength >> 1));
    const versions = await allVersions(dest);
    const ofB = versions.filter((v) => v.path === "b.txt" && v.kind === "file");
    assert.equal(ofB.length, 2);
    const [first, later] = ofB as [VersionRecord, VersionRecord];

    // Beside the server, by walking the packs.
    const walked = await box.run("verify", ["verify", dest, "--json"]);
    assert.equal(walked.code, 1, `verify beside a server finds the damage\n${walked.proc.describe(30)}`);
    const warnings = walked.events.filter((e) => e.event === "warning").map((e) => String(e.message));
    assert.ok(
      warnings.some(
        (m) => m.startsWith(`src/b.txt version ${first.id} `) && m.includes(chunkId.toString("hex")),
      ),
      `the affected version is named\n${walked.proc.describe(30)}`,
    );
    assert.equal(walked.events.find((e) => e.event === "error")?.code, "KW_HISTORY_DAMAGED");
    await server.kill();

    // With the server stopped, through the chunk index, re-hashing every content.
    const damaged = await box.run("verify", ["verify", dest, "--full"]);
    const out = damaged.stdout;
    const context = `\n${damaged.proc.describe(30)}`;
    assert.equal(damaged.code, 1, `verify of a damaged history exits 1${context}`);
    assert.deepEqual(stackLines(damaged.stderr), [], `no stack trace${context}`);
    assert.match(
      out,
      new RegExp(`src/b\\.txt version ${first.id} \\(backed up .*cannot be restored`),
      context,
    );
    assert.ok(out.includes(chunkId.toString("hex")), `the damaged chunk's id is named${context}`);
    assert.ok(!out.includes(`src/b.txt version ${later.id} `), `the second version is intact${context}`);
    assert.ok(!/src\/a\.txt|docs\/c\.txt/.test(out), `the other files are intact${context}`);
    assert.match(
      out,
      /error: The history in .* is damaged: 1 damaged chunk, affecting 1 file version/,
      context,
    );
  });

  test("prune: a rule is required, DURATION is checked, a folder without history is refused", async (t) => {
    const box = await Sandbox.create(t);
    const empty = box.path("empty");
    await mkdir(empty);
    assertOneSentence(await box.run("prune", ["prune", empty]), 2, [
      "--keep-last N",
      "--keep-within DURATION",
    ]);
    assertOneSentence(await box.run("prune", ["prune", empty, "--keep-within", "7x"]), 2, ["DURATION"]);
    assertOneSentence(await box.run("prune", ["prune", empty, "--keep-last", "1"]), 3, [
      "holds no keepwatch history",
    ]);
  });

  test("prune SIGKILLed at random moments: verify is clean and every version left reads back as written", async (t) => {
    const box = await Sandbox.create(t);
    const src = box.path("src");
    const template = box.path("dest");
    await mkdir(join(src, "sub"), { recursive: true });
    /** Every content ever written, by SHA-256. */
    const written = new Map<string, Buffer>();
    const put = async (path: string, data: Buffer) => {
      written.set(sha(data), data);
      await writeFile(join(src, path), data);
    };
    const big = ["f0.bin", "f1.bin", "sub/f2.bin", "sub/f3.bin"];
    for (const name of big) await put(name, randomBytes(1024 * 1024 + randomInt(200_000)));
    await put("small.txt", Buffer.from("small, round 0\n"));
    await put("gone.txt", Buffer.from("deleted in round 1\n"));
    const server = await box.startServer(template);
    assertOk(await box.push(src, server.port), "round 0");
    for (let round = 1; round <= 3; round++) {
      for (const name of big) {
        if (name === "f1.bin" && (round === 2 || round === 3)) continue; // deleted in 2, back in 3
        // A new stretch in the middle: a few new chunks, the rest shared with the last version.
        const data = Buffer.from(await readFile(join(src, name)));
        randomBytes(48 * 1024).copy(data, randomInt(data.length - 48 * 1024));
        await put(name, data);
      }
      await put("small.txt", Buffer.from(`small, round ${round}\n`));
      if (round === 1) await rm(join(src, "gone.txt"));
      if (round === 2) await rm(join(src, "f1.bin"));
      if (round === 3) await put("f1.bin", randomBytes(900_000));
      assertOk(await box.push(src, server.port), `round ${round}`);
    }
    await server.kill();

    const everything = await allVersions(template);
    const keepLast2 = new Set<number>();
    const byPath = new Map<string, VersionRecord[]>();
    for (const v of everything) byPath.set(v.path, [...(byPath.get(v.path) ?? []), v]);
    for (const list of byPath.values()) for (const v of list.slice(-2)) keepLast2.add(v.id);
    assert.ok(everything.length - keepLast2.size >= 10, "the policy has versions to drop");
    const allIds = new Set(everything.map((v) => v.id));

    /** Every version in DEST is one we know, and reads back through the History API as written. */
    const checkHistory = async (dest: string, label: string) => {
      const history = await History.open(join(dest, CONTROL));
      const report = (history.chunks as LocalChunkStore).openReport;
      const fixes = [
        ...report.removedOrphans.map(() => "an orphan pack"),
        ...report.truncated.map(() => "an open pack"),
      ];
      assert.deepEqual(report.missing, [], `${label}: no pack the index names is missing`);
      const present = new Set<number>();
      try {
        for await (const v of history.meta.allVersions()) {
          present.add(v.id);
          if (v.kind !== "file") continue;
          const expected = written.get((v.sha256 as Buffer).toString("hex"));
          assert.ok(expected, `${label}: version ${v.id} of ${v.path} has a content we never wrote`);
          const chunks = await history.chunksOf(v.sha256 as Buffer);
          assert.ok(chunks, `${label}: version ${v.id} of ${v.path} has its chunk list`);
          const parts: Buffer[] = [];
          for await (const part of history.read(chunks)) parts.push(part);
          assert.ok(
            Buffer.concat(parts).equals(expected),
            `${label}: version ${v.id} of ${v.path} reads back as written`,
          );
        }
      } finally {
        await history.close();
      }
      return { present, repaired: fixes.join(", ") };
    };

    /** After a complete prune: exactly the kept versions, and no chunk left that none of them uses. */
    const checkFinished = async (dest: string, label: string) => {
      assertOk(await box.run("verify", ["verify", dest]), `${label}: verify`);
      const { present } = await checkHistory(dest, label);
      assert.deepEqual([...present].sort(), [...keepLast2].sort(), label);
      const history = await History.open(join(dest, CONTROL));
      try {
        const referenced = new Set<string>();
        for await (const id of history.meta.referencedChunks()) referenced.add(id.toString("hex"));
        assert.equal(
          (await history.chunks.stats()).chunks,
          referenced.size,
          `${label}: no unused chunk is left`,
        );
      } finally {
        await history.close();
      }
    };

    // A dry run changes nothing.
    const before = (await checkHistory(template, "before the dry run")).present;
    const dry = await box.run("prune", ["prune", template, "--keep-last", "2", "--dry-run", "--json"]);
    assertOk(dry, "dry run");
    const wouldDrop = dry.events.filter((e) => /^Would drop /.test(String(e.message)));
    assert.equal(
      wouldDrop.length,
      everything.length - keepLast2.size,
      "the dry run lists each version to drop",
    );
    assert.deepEqual((await checkHistory(template, "after the dry run")).present, before);

    const templatePacks = new Set(await packFiles(template));
    const newPack = async (dest: string) => (await packFiles(dest)).some((p) => !templatePacks.has(p));
    const isDropping = (e: KwEvent) => e.event === "info" && /^Dropping src\//.test(String(e.message));
    const isDeleting = (e: KwEvent) => e.event === "info" && /^Deleting \d+ chunks?/.test(String(e.message));
    const outcomes: string[] = [];
    for (let run = 0; run < 10; run++) {
      const dest = box.path(`run${run}`);
      await cp(template, dest, { recursive: true });
      const proc = box.spawn("prune", ["prune", dest, "--keep-last", "2", "--json"]);
      // A third of the runs die at any moment of the process's life, a third around the
      // commit of the dropped versions, a third inside the chunk delete (the repack).
      let when: string;
      let delay: number;
      if (run % 3 === 0) {
        delay = randomInt(0, 2500);
        when = `${delay} ms after start`;
      } else if (run % 3 === 1) {
        await box.waitForEvent(proc, "info", { match: isDropping, alive: [proc], timeoutMs: 30_000 });
        delay = randomInt(0, 40);
        when = `${delay} ms after the plan`;
      } else {
        // The repack has begun once its new pack file appears.
        await box.waitForEvent(proc, "info", { match: isDeleting, alive: [proc], timeoutMs: 30_000 });
        while (proc.running && !(await newPack(dest))) await sleep(1);
        delay = randomInt(0, 40);
        when = `${delay} ms into the repack`;
      }
      await Promise.race([sleep(delay), proc.closed]);
      const status = await proc.stop("SIGKILL");
      const label = `run ${run} (killed ${when}${status.signal === "SIGKILL" ? "" : ", had finished"})`;
      assertOk(await box.run("verify", ["verify", dest]), `${label}: verify`);
      const { present, repaired } = await checkHistory(dest, label);
      const same = (a: Set<number>, b: Set<number>) => a.size === b.size && [...a].every((id) => b.has(id));
      // The versions go in one transaction: all of them are there, or exactly the kept ones.
      const phase = same(present, allIds)
        ? "before the commit"
        : same(present, keepLast2)
          ? "after the commit"
          : null;
      assert.ok(phase, `${label}: versions ${[...present].join(",")} are neither all nor the kept ones`);
      outcomes.push(`${label}: ${phase}${repaired ? `; the store's open repaired ${repaired}` : ""}`);
      if (run === 8) {
        // Running prune again finishes the job.
        assertOk(await box.run("prune", ["prune", dest, "--keep-last", "2"]), `${label}: prune again`);
        await checkFinished(dest, `${label}, then pruned again`);
      }
      await rm(dest, { recursive: true, force: true });
    }
    t.diagnostic(outcomes.join("\n"));
    assert.ok(
      outcomes.some((o) => o.endsWith("after the commit")),
      `some kills came after the versions were dropped:\n${outcomes.join("\n")}`,
    );
  });

  test("rebuild-mirror: a mirror damaged by hand equals the source again", async (t) => {
    const box = await Sandbox.create(t);
    const src = box.path("src");
    const dest = box.path("dest");
    await mkdir(join(src, "docs", "deep"), { recursive: true });
    await writeFile(join(src, "a.txt"), "alpha\n");
    await writeFile(join(src, "b.bin"), randomBytes(400_000));
    await writeFile(join(src, "docs", "c.txt"), "charlie\n");
    await writeFile(join(src, "docs", "deep", "d.txt"), "delta\n");
    await writeFile(join(src, "later-deleted.txt"), "goes in the second push\n");
    await chmod(join(src, "docs", "c.txt"), 0o640);
    await chmod(join(src, "docs", "deep"), 0o750);
    await utimes(
      join(src, "a.txt"),
      new Date("2021-03-04T05:06:07.089Z"),
      new Date("2021-03-04T05:06:07.089Z"),
    );
    const server = await box.startServer(dest);
    assertOk(await box.push(src, server.port), "first push");
    await writeFile(join(src, "a.txt"), "alpha, edited\n");
    await rm(join(src, "later-deleted.txt"));
    assertOk(await box.push(src, server.port), "second push");
    await server.kill();

    const mirror = join(dest, "src");
    assert.deepEqual(await compareTrees(src, mirror), [], "the mirror starts equal");
    // Damage it: a file removed, one changed with its size and mtime kept, a mode changed,
    // a folder replaced by a file, and things the history does not have.
    await rm(join(mirror, "a.txt"));
    const bPath = join(mirror, "b.bin");
    const bStat = await stat(bPath);
    await flipByte(bPath, 1000);
    await utimes(bPath, bStat.atime, bStat.mtime);
    await chmod(join(mirror, "docs", "c.txt"), 0o600);
    await rm(join(mirror, "docs", "deep"), { recursive: true });
    await writeFile(join(mirror, "docs", "deep"), "a file where a folder was\n");
    await writeFile(join(mirror, "extra.txt"), "not in the history\n");
    await mkdir(join(mirror, "extra-folder", "inner"), { recursive: true });
    await writeFile(join(mirror, "extra-folder", "inner", "x"), "x\n");
    await symlink("/etc/passwd", join(mirror, "docs", "link"));
    assert.notDeepEqual(await compareTrees(src, mirror), []);

    const rebuilt = await box.run("rebuild", ["rebuild-mirror", dest, "--json"]);
    assertOk(rebuilt, "rebuild-mirror");
    assert.deepEqual(
      await compareTrees(src, mirror),
      [],
      `the mirror equals the source\n${rebuilt.proc.describe(40)}`,
    );
    const restored = rebuilt.events
      .filter((e) => e.event === "file-done" && e.op === "restore")
      .map((e) => e.path);
    assert.deepEqual(restored.sort(), ["src/a.txt", "src/b.bin", "src/docs/c.txt", "src/docs/deep/d.txt"]);

    const again = await box.run("rebuild", ["rebuild-mirror", dest, "--set", "src", "--json"]);
    assertOk(again, "a second rebuild");
    assert.equal(again.events.filter((e) => e.event === "file-done").length, 0, "nothing left to do");
    assertOneSentence(await box.run("rebuild", ["rebuild-mirror", dest, "--set", "nope"]), 1, [
      'no set named "nope"',
    ]);
  });
});
