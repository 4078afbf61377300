// Broken networks, end to end, through a proxy that cuts, resets, stalls, slows and refuses
// connections (test/fault-proxy.ts). (a) A watching client backs up a changing tree through
// 100+ random cuts; once the proxy forwards cleanly again the client converges to a mirror
// equal to its source, the server survives without a stack trace and its history verifies.
// (b) A large file whose transfer is cut after most of its chunks reached the server resumes
// without sending those chunks again, for a paired client (secret) and for the server's own
// user. (c) One cut made on purpose where (a) meets it by chance: after the server committed
// a file and before its ACK reached the client.
//
// The fault plans come from a seed, printed with the figures; KEEPWATCH_FAULT_SEED=N
// replays one (the timing of a real network still varies from run to run).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import type { Dirent } from "node:fs";
import {
  appendFile,
  chmod,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  stat,
  unlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { describe, it, type TestContext } from "node:test";
import { FaultProxy } from "./fault-proxy.js";
import { Rng } from "./fuzz-lib.js";
import {
  type ClientHandle,
  compareTrees,
  type KwEvent,
  Sandbox,
  type ServerHandle,
  sleep,
  stackLines,
} from "./helpers.js";

const SEED = Number(process.env.KEEPWATCH_FAULT_SEED ?? Math.floor(Math.random() * 0x7fffffff));
const MiB = 1024 * 1024;

/** (a): cuts the backup must live through, and how long the faulty phase may take to cause them. */
const CUTS_WANTED = 100;
const FAULTY_PHASE_MAX_MS = 75_000;
/** (a): a change to the source every so often, so that there is always something to cut. */
const CHANGE_EVERY_MS = 300;

/**
 * (b): the large file. 200 MiB of random bytes (incompressible) crosses the proxy in about
 * 5 s here; the paired and the local case each send it about one and a half times.
 */
const RESUME_SIZE = 200 * MiB;
/** (b): the cut comes when this share of the file went up through the proxy. */
const CUT_SHARE = 0.6;
/**
 * (b): of the bytes that went up before the cut, at least this share must not go up again.
 * Some were still in socket buffers when the cut came and never reached the server.
 */
const KEPT_SHARE = 0.8;

/** The events after which a client is doing something again (idle must come after them). */
const BUSY_EVENTS = new Set(["connected", "disconnected", "scan-start", "queued", "file-start"]);

/** True when the client's latest news is that it is idle: connected, and everything acknowledged. */
function isConverged(events: KwEvent[]): boolean {
  for (let i = events.length - 1; i >= 0; i--) {
    const kind = (events[i] as KwEvent).event;
    if (kind === "idle") return true;
    if (BUSY_EVENTS.has(kind)) return false;
  }
  return false;
}

async function folderBytes(dir: string): Promise<number> {
  let total = 0;
  let entries: Dirent[];
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) total += await folderBytes(path);
    else total += (await stat(path)).size;
  }
  return total;
}

/** Lines: how many events of each kind, then the distinct warnings, errors and skips. */
function eventSummary(label: string, events: KwEvent[]): string[] {
  const kinds = new Map<string, number>();
  const notes = new Set<string>();
  for (const e of events) {
    kinds.set(e.event, (kinds.get(e.event) ?? 0) + 1);
    if (["warning", "error", "file-skipped"].includes(e.event)) {
      notes.add(`${label} ${e.event}: ${[e.code, e.path, e.message ?? e.reason].filter(Boolean).join(" ")}`);
    }
  }
  const counts = [...kinds].map(([kind, n]) => `${kind} ${n}`).join(", ");
  return [`${label} events: ${counts}`, ...[...notes].slice(0, 8)];
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** A server on DEST and the arguments a paired client (secret and fingerprint) connects with. */
async function pairedServer(box: Sandbox, dest: string): Promise<{ server: ServerHandle; args: string[] }> {
  const server = await box.startServer(dest);
  const secretFile = box.path("laptop.secret");
  const added = await box.run("clients-add", [
    "clients",
    "add",
    "laptop",
    "--dest",
    dest,
    "--secret-out",
    secretFile,
  ]);
  assert.equal(added.code, 0, `clients add exits 0\n${added.proc.describe()}`);
  const fingerprint = server.events.find((e) => e.event === "listening")?.fingerprint;
  assert.equal(typeof fingerprint, "string", "the server's listening event has its fingerprint");
  return { server, args: ["--secret-file", secretFile, "--fingerprint", String(fingerprint)] };
}

/** The events of `proc` that name one of `paths`, the latest `n`, one a line. */
function eventsAbout(label: string, events: KwEvent[], paths: string[], n = 12): string {
  const about = events.filter((e) => paths.includes(String(e.path)));
  return [`    ${label}: ${about.length} event(s) name them; the latest:`]
    .concat(about.slice(-n).map((e) => `      ${JSON.stringify(e)}`))
    .join("\n");
}

/**
 * Wait until the mirror equals the source and the client says it is idle. A failure names
 * what differs, with what client and server reported about those paths.
 */
async function converge(
  box: Sandbox,
  src: string,
  mirror: string,
  client: ClientHandle,
  server: ServerHandle,
  proxy: FaultProxy,
  timeoutMs: number,
): Promise<void> {
  try {
    await box.waitForMirror(src, mirror, { timeoutMs, alive: [client.proc, server.proc] });
    await box.waitUntil(
      "the client to be idle",
      () => isConverged(client.events) || `latest events: ${JSON.stringify(client.events.slice(-3))}`,
      { timeoutMs: 10_000, alive: [client.proc, server.proc] },
    );
  } catch (error) {
    const diffs = await compareTrees(src, mirror);
    const paths = diffs.flatMap((d) => [...d.matchAll(/"([^"]+)"/g)].map((m) => m[1] as string));
    throw new Error(
      [
        error instanceof Error ? error.message : String(error),
        proxy.describe(),
        eventsAbout("client", client.events, paths),
        eventsAbout("server", server.events, paths),
      ].join("\n"),
    );
  }
}

/** What the server must look like after a run: alive, no stack trace, a sound history, no leftovers. */
async function assertServerSound(box: Sandbox, server: ServerHandle, dest: string): Promise<void> {
  assert.ok(server.proc.running, `the server is still running\n${server.proc.describe(30)}`);
  assert.deepEqual(
    stackLines(server.proc.stderr),
    [],
    `the server printed a stack trace\n${server.proc.describe(40)}`,
  );
  const verify = await box.run("verify", ["verify", dest], { timeoutMs: 60_000 });
  assert.equal(verify.code, 0, `keepwatch verify exits 0\n${verify.proc.describe(30)}`);
  const tmp = join(dest, ".keepwatch", "tmp");
  await box.waitUntil(
    `${tmp} to be empty`,
    async () => {
      const left = await readdir(tmp).catch(() => []);
      return left.length === 0 || `left in tmp: ${left.join(", ")}`;
    },
    { timeoutMs: 5000 },
  );
}

// ---------------------------------------------------------------------------------------
// (a) a backup through at least 100 cuts

/** A source tree of mixed sizes, and the changes made to it while the network is bad. */
class ChangingTree {
  readonly files: string[] = [];
  readonly large: string[] = [];
  private readonly folders: string[] = [""];
  private serial = 0;
  changes = 0;

  constructor(
    readonly root: string,
    private readonly rng: Rng,
  ) {}

  async build(): Promise<number> {
    const rng = this.rng;
    for (let i = 0; i < 12; i++) {
      const parent = rng.pick(this.folders);
      const folder = parent === "" ? `dir${i}` : `${parent}/dir${i}`;
      await mkdir(join(this.root, folder), { recursive: true });
      this.folders.push(folder);
    }
    let bytes = 0;
    for (let i = 0; i < 120; i++) bytes += await this.create(rng.between(0, 6 * 1024));
    for (let i = 0; i < 16; i++) bytes += await this.create(rng.between(20 * 1024, 600 * 1024));
    for (const size of [3 * MiB, 6 * MiB, 12 * MiB]) {
      const path = `large-${size / MiB}.bin`;
      await writeFile(join(this.root, path), rng.bytes(size));
      this.large.push(path);
      bytes += size;
    }
    return bytes;
  }

  /** One change of a random kind. */
  async change(): Promise<void> {
    const rng = this.rng;
    this.changes++;
    const kind = rng.pick([
      "append",
      "create",
      "create",
      "rewrite",
      "edit-large",
      "delete",
      "rename",
      "chmod",
    ]);
    const path = this.files.length > 0 ? rng.pick(this.files) : null;
    switch (kind) {
      case "append":
        if (path)
          await appendFile(join(this.root, path), `change ${this.changes}\n`.repeat(rng.between(1, 50)));
        return;
      case "create":
        await this.create(rng.chance(0.8) ? rng.between(0, 8 * 1024) : rng.between(256 * 1024, 1200 * 1024));
        return;
      case "rewrite":
        if (path) await writeFile(join(this.root, path), this.rng.bytes(rng.between(0, 400 * 1024)));
        return;
      case "edit-large": {
        const handle = await open(join(this.root, rng.pick(this.large)), "r+");
        try {
          const { size } = await handle.stat();
          await handle.write(rng.bytes(64 * 1024), 0, 64 * 1024, rng.between(0, size - 64 * 1024));
        } finally {
          await handle.close();
        }
        return;
      }
      case "delete":
        if (path) {
          await unlink(join(this.root, path));
          this.files.splice(this.files.indexOf(path), 1);
        }
        return;
      case "rename":
        if (path) {
          const to = this.newPath();
          await rename(join(this.root, path), join(this.root, to));
          this.files[this.files.indexOf(path)] = to;
        }
        return;
      default:
        if (path) await chmod(join(this.root, path), rng.chance(0.5) ? 0o600 : 0o644);
    }
  }

  private async create(size: number): Promise<number> {
    const path = this.newPath();
    await writeFile(join(this.root, path), this.rng.bytes(size));
    this.files.push(path);
    return size;
  }

  private newPath(): string {
    const folder = this.rng.pick(this.folders);
    const name = `f${this.serial++}.dat`;
    return folder === "" ? name : `${folder}/${name}`;
  }
}

async function backupThroughCuts(t: TestContext): Promise<void> {
  const started = Date.now();
  const box = await Sandbox.create(t);
  const src = box.path("work");
  const dest = box.path("dest");
  await mkdir(src);
  const tree = new ChangingTree(src, new Rng(SEED));
  const treeBytes = await tree.build();
  const { server, args } = await pairedServer(box, dest);
  const proxy = await FaultProxy.start(server.port, { seed: SEED });
  box.onCleanup(() => proxy.close());
  const client = await box.startClient(src, proxy.port, { args, waitIdle: false });
  const failure = (what: string) => `${what}\n${proxy.describe()}\n${box.report()}`;

  // Bad network: keep changing the source until the proxy has cut often enough.
  const faultyFrom = Date.now();
  while (proxy.counts().cuts < CUTS_WANTED && Date.now() < faultyFrom + FAULTY_PHASE_MAX_MS) {
    assert.ok(client.proc.running, failure("the client stopped during the faulty phase"));
    assert.ok(server.proc.running, failure("the server stopped during the faulty phase"));
    await tree.change();
    await sleep(CHANGE_EVERY_MS);
  }
  const faulty = proxy.counts();
  const faultyMs = Date.now() - faultyFrom;
  assert.ok(
    faulty.cuts >= CUTS_WANTED,
    failure(`only ${faulty.cuts} cuts in ${FAULTY_PHASE_MAX_MS} ms (does the client reconnect so slowly?)`),
  );

  // Good network again: the client must catch up on everything. Whether it did or not, the
  // server's condition is checked (and the figures reported) before the verdict.
  proxy.setFaulty(false);
  const cleanFrom = Date.now();
  let notConverged: unknown = null;
  try {
    await converge(box, src, join(dest, "work"), client, server, proxy, 30_000);
  } catch (error) {
    notConverged = error;
  }
  const convergeMs = Date.now() - cleanFrom;

  assert.ok(client.proc.running, `the client is still running\n${client.proc.describe(30)}`);
  assert.deepEqual(
    stackLines(client.proc.stderr),
    [],
    `the client printed a stack trace\n${client.proc.describe(40)}`,
  );
  await assertServerSound(box, server, dest);
  assert.ok(
    faulty.byteCuts > 0 && faulty.timeCuts > 0 && faulty.stalls > 0 && faulty.slowdowns > 0,
    `cuts at byte offsets and after times, stalls and slow periods all happened\n${proxy.describe()}`,
  );

  const disconnects = client.events.filter((e) => e.event === "disconnected").length;
  t.diagnostic(
    `seed ${SEED}: tree of ${tree.files.length + tree.large.length} files (${mib(treeBytes)} at first), ` +
      `${tree.changes} changes; faulty phase ${faultyMs} ms: ${faulty.connections} connections, ${faulty.cuts} cuts ` +
      `(${faulty.byteCuts} at a byte offset, ${faulty.timeCuts} after a time; ${faulty.resets} resets), ` +
      `${faulty.stalls} stalls, ${faulty.slowdowns} slow periods, ${faulty.refusals} refusals, ${mib(faulty.up)} up; ` +
      `the client reported ${disconnects} disconnects; ` +
      `${notConverged ? "it did not converge within" : "it converged"} ${convergeMs} ms after clean forwarding began; ` +
      `${Date.now() - started} ms in all`,
  );
  for (const line of eventSummary("server", server.events)) t.diagnostic(line);
  for (const line of eventSummary("client", client.events)) t.diagnostic(line);
  for (const proc of [server.proc, client.proc]) {
    const warnings = proc.stderr.split("\n").filter((line) => /Warning:/.test(line));
    if (warnings.length > 0) t.diagnostic(`${proc.label} warned on stderr: ${warnings.join(" | ")}`);
  }
  if (notConverged) throw notConverged;
}

// ---------------------------------------------------------------------------------------
// (b) an interrupted large file resumes

interface ResumeFigures {
  upAtCut: number;
  upAfterCut: number;
  /** Content bytes the client reported for the attempt that succeeded. */
  finalSentBytes: number | null;
  /** Bytes in the store's pack files shortly after the cut, and at the end. */
  packsAfterCut: number;
  packsAtEnd: number;
  ms: number;
}

async function writeLargeFile(path: string, size: number): Promise<void> {
  const handle = await open(path, "w");
  try {
    for (let at = 0; at < size; at += 16 * MiB)
      await handle.write(randomBytes(Math.min(16 * MiB, size - at)));
  } finally {
    await handle.close();
  }
}

/**
 * Back up one large file through a proxy that cuts every connection once CUT_SHARE of the
 * file went up, and refuses new ones for a second; then forwards cleanly until the client
 * converges. `who` is the client's credential: a paired client's secret, or the server's
 * own user's local credential (its local-access file, copied to the proxy's port, since the
 * client looks it up by the port it connects to).
 */
async function interruptedLargeFile(t: TestContext, who: "paired" | "local"): Promise<ResumeFigures> {
  const started = Date.now();
  const box = await Sandbox.create(t);
  const src = box.path("work");
  const dest = box.path("dest");
  await mkdir(src);
  await writeLargeFile(join(src, "big.bin"), RESUME_SIZE);
  let server: ServerHandle;
  let args: string[] = [];
  let proxy: FaultProxy;
  if (who === "paired") {
    ({ server, args } = await pairedServer(box, dest));
    proxy = await FaultProxy.start(server.port, { seed: SEED, faulty: false });
  } else {
    server = await box.startServer(dest);
    proxy = await FaultProxy.start(server.port, { seed: SEED, faulty: false });
    const servers = join(box.configDir, "servers");
    const access = JSON.parse(await readFile(join(servers, `${server.port}.json`), "utf8"));
    await writeFile(join(servers, `${proxy.port}.json`), JSON.stringify({ ...access, port: proxy.port }), {
      mode: 0o600,
    });
  }
  const p = proxy;
  box.onCleanup(() => p.close());

  const cut = p.cutWhenUpReaches(Math.floor(CUT_SHARE * RESUME_SIZE), "reset", 1000);
  const client = await box.startClient(src, p.port, { args, waitIdle: false });
  let upAtCut = 0;
  void cut.then((up) => {
    upAtCut = up;
  });
  await box.waitUntil(
    `the cut at ${mib(CUT_SHARE * RESUME_SIZE)} up`,
    () => upAtCut > 0 || `${mib(p.counts().up)} up so far`,
    { timeoutMs: 60_000, alive: [client.proc, server.proc] },
  );
  // While new connections are refused, the server finishes what reached it.
  await sleep(700);
  const packs = join(dest, ".keepwatch", "packs");
  const packsAfterCut = await folderBytes(packs);

  await converge(box, src, join(dest, "work"), client, server, p, 90_000);
  const upAfterCut = p.counts().up - upAtCut;
  const done = client.events.filter((e) => e.event === "file-done" && e.path === "big.bin");
  const sent = done[done.length - 1]?.sentBytes;
  await assertServerSound(box, server, dest);
  const figures: ResumeFigures = {
    upAtCut,
    upAfterCut,
    finalSentBytes: typeof sent === "number" ? sent : null,
    packsAfterCut,
    packsAtEnd: await folderBytes(packs),
    ms: Date.now() - started,
  };
  t.diagnostic(
    `${who}: ${mib(RESUME_SIZE)} file, cut at ${mib(upAtCut)} up (${p.counts().cuts} cut); ` +
      `after the cut ${mib(upAfterCut)} went up (${((100 * upAfterCut) / RESUME_SIZE).toFixed(1)}% of the file), ` +
      `the successful attempt sent ${figures.finalSentBytes === null ? "?" : mib(figures.finalSentBytes)} of content; ` +
      `packs held ${mib(packsAfterCut)} after the cut, ${mib(figures.packsAtEnd)} at the end; ${figures.ms} ms`,
  );
  return figures;
}

function assertResumed(who: string, f: ResumeFigures): void {
  const allowed = RESUME_SIZE - KEPT_SHARE * f.upAtCut;
  assert.ok(
    f.upAfterCut <= allowed,
    `${who}: an interrupted large file was not resumed. The cut came after ${mib(f.upAtCut)} of the ` +
      `${mib(RESUME_SIZE)} file went up; the server's packs held ${mib(f.packsAfterCut)} shortly after it, ` +
      `so it had stored most of those chunks. Yet ${mib(f.upAfterCut)} went up after the cut ` +
      `(${((100 * f.upAfterCut) / RESUME_SIZE).toFixed(0)}% of the file; at most ${mib(allowed)} expected), and the ` +
      `successful attempt sent ${f.finalSentBytes === null ? "an unknown amount" : mib(f.finalSentBytes)} of ` +
      `content: the server asked again for chunks it already held (packs at the end: ${mib(f.packsAtEnd)}, ` +
      `so they were not stored twice).`,
  );
}

// ---------------------------------------------------------------------------------------
// (c) an acknowledgement lost to a cut

/**
 * The server commits a new file, but the cut comes before its ACK reaches the client; the
 * file is then deleted before the client reconnects. The server has a file the client never
 * heard it has: the client must still make the mirror equal its source again.
 */
async function lostAcknowledgement(t: TestContext): Promise<void> {
  const box = await Sandbox.create(t);
  const src = box.path("work");
  const dest = box.path("dest");
  await mkdir(src);
  await writeFile(join(src, "kept.txt"), "kept\n");
  const { server, args } = await pairedServer(box, dest);
  const proxy = await FaultProxy.start(server.port, { seed: SEED, faulty: false });
  box.onCleanup(() => proxy.close());
  const client = await box.startClient(src, proxy.port, { args });

  const since = server.events.length;
  proxy.stallAll("down", 60_000);
  await writeFile(join(src, "ghost.txt"), "committed, but the client never hears so\n");
  await box.waitForEvent(server.proc, "file-done", {
    since,
    match: (e) => e.path === "ghost.txt",
    alive: [client.proc, server.proc],
  });
  // The ACK is held in the proxy; the cut loses it, and the file goes before the client is back.
  proxy.refuse(1000);
  proxy.cutAll("reset", "the ACK of ghost.txt is held");
  await unlink(join(src, "ghost.txt"));
  await converge(box, src, join(dest, "work"), client, server, proxy, 10_000);
}

// (a) is mostly waiting (the client's reconnect backoff), (b) mostly hashing and storing:
// they run side by side to keep the file within about a minute and a half.
describe("broken networks", { concurrency: true }, () => {
  it(
    `a watching client converges through ${CUTS_WANTED}+ cuts, stalls and slow periods (seed ${SEED})`,
    { timeout: 150_000 },
    backupThroughCuts,
  );

  describe(`an interrupted ${mib(RESUME_SIZE)} file resumes without sending its stored chunks again`, {
    concurrency: false,
  }, () => {
    it("a paired client (secret)", { timeout: 120_000 }, async (t) => {
      assertResumed("paired client", await interruptedLargeFile(t, "paired"));
    });

    it("the server's own user (local credential)", { timeout: 120_000 }, async (t) => {
      assertResumed("the server's own user", await interruptedLargeFile(t, "local"));
    });
  });

  it(
    "a file the server committed but whose ACK a cut lost, deleted before the client is back, goes from the mirror",
    { timeout: 60_000 },
    lostAcknowledgement,
  );
});
