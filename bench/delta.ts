// Measures keepwatch's chunk-level deltas against rsync's delta algorithm, side by side in the
// same run, on the same data, over loopback:
//   bytes on the wire — counted on the socket by a counting TCP proxy on 127.0.0.1 placed
//     between the keepwatch client and server and between the rsync client and an rsync daemon
//     (both directions, handshakes included; TCP payload, not IP/TCP headers); rsync's own
//     `--stats` "Total bytes sent/received" are recorded for reference;
//   for four scenarios, each starting from a destination that holds the previous state:
//     1. one byte flipped in the middle of a 1 GiB incompressible file;
//     2. 100 bytes inserted at its start;
//     3. a 100 MiB file renamed within SRC (rsync has no rename detection: it sends it again);
//     4. a 100 MiB file copied within SRC;
//   wall time of the 1-byte flip for both tools (keepwatch: push spawn → exit; rsync: command
//     spawn → exit), medians of 3 rounds with min–max. The other scenarios' wall times are
//     recorded too, measured the same way, for information.
// It follows /work/shared/BENCHMARKING.md: before each measured run `sync`, a wait for a quiet
// machine, ~2 GiB of memory touched and freed in a separate process, the load average printed;
// tools run alternately (keepwatch, rsync, keepwatch, rsync…); every round has fresh
// destinations (a new keepwatch server folder and state folder, a new rsync module folder),
// set up untimed with the initial transfer; nothing is deleted until all runs are done.
// All sources sit in the page cache (warm); caches are not dropped.
//
// Run: npx tsx bench/delta.ts [--quick] [--keep] [--no-wait]
//   --quick    128 MiB and 16 MiB files instead of 1 GiB and 100 MiB
//   --keep     leave the generated data in /tmp/kw-delta-*
//   --no-wait  do not wait for a quiet machine before each run (a sanity check of the bench
//              itself; the byte counts are unaffected, the wall times are then flagged)
// Takes about 5 minutes on a quiet machine (much longer when other work keeps it busy: each
// measured run waits up to 3 minutes for a quiet second).
// Installs rsync with apt-get if it is missing (says so). Results: printed, and written as JSON
// to bench/out/delta.json (bench/out/delta-quick.json with --quick).

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  copyFileSync,
  existsSync,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { connect, createServer } from "node:net";
import { cpus, totalmem } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type ByteCounts, CountingProxy } from "./counting-proxy.js";
import {
  ByteStream,
  busyOver,
  CLK_TCK,
  fmt,
  fmtSummary,
  gitDescribe,
  type JsonEvent,
  killAll,
  live,
  loadLine,
  median,
  parseLines,
  raceTimeout,
  type Summary,
  sleep,
  sourceFingerprint,
  summarize,
  syncDisks,
  warmMemory,
} from "./lib.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const MAIN = join(ROOT, "src", "cli", "main.ts");
const HOST = "127.0.0.1";
const MiB = 2 ** 20;
const GiB = 2 ** 30;

const args = new Set(process.argv.slice(2));
for (const arg of args) {
  if (arg !== "--quick" && arg !== "--keep" && arg !== "--no-wait") {
    console.error(`unknown argument ${arg}; use --quick, --keep, --no-wait`);
    process.exit(2);
  }
}
const QUICK = args.has("--quick");
const KEEP = args.has("--keep");
const NO_WAIT = args.has("--no-wait");
const OUT = join(ROOT, "bench", "out", QUICK ? "delta-quick.json" : "delta.json");

const config = QUICK
  ? { bigBytes: 128 * MiB, midBytes: 16 * MiB }
  : { bigBytes: 1 * GiB, midBytes: 100 * MiB };
const INSERT_BYTES = 100;
const ROUNDS = 3;
const QUIET_BUSY = 0.25;
const QUIET_WAIT_S = 180;
const WARMUP_BYTES = 2 * GiB;
const RUN_TIMEOUT_MS = 15 * 60_000;
/** FastCDC's largest chunk (docs/chunking.md): a local edit touches at most two chunks. */
const MAX_CHUNK = 256 * 1024;

const BIG = "big.bin";
const MID = "mid.bin";
const MID_RENAMED = "mid-renamed.bin";
const MID_COPY = "mid-copy.bin";

type ScenarioId = "flip" | "insert" | "rename" | "copy";
interface Scenario {
  id: ScenarioId;
  label: string;
  /** the file whose keepwatch `sentBytes` is reported */
  file: string;
  /** keepwatch wire bytes / rsync wire bytes at most this */
  target: number;
  targetText: string;
}
const SCENARIOS: Scenario[] = [
  {
    id: "flip",
    label: `1. 1 byte flipped mid-file (${humanBytes(config.bigBytes)})`,
    file: BIG,
    target: 0.2,
    targetText: "≤ 0.2",
  },
  {
    id: "insert",
    label: `2. ${INSERT_BYTES} bytes inserted at offset 0`,
    file: BIG,
    target: 0.2,
    targetText: "≤ 0.2",
  },
  {
    id: "rename",
    label: `3. ${humanBytes(config.midBytes)} file renamed`,
    file: MID_RENAMED,
    target: 0.01,
    targetText: "≈ 0 (≤ 0.01)",
  },
  {
    id: "copy",
    label: `4. ${humanBytes(config.midBytes)} file copied`,
    file: MID_COPY,
    target: 0.01,
    targetText: "≈ 0 (≤ 0.01)",
  },
];

// ---------------------------------------------------------------- small helpers

/** Whole bytes with thousands separators. */
function fmtInt(value: number): string {
  return Number.isFinite(value) ? Math.round(value).toLocaleString("en") : "n/a";
}

/** A byte count in bytes, with min–max when the rounds differ. */
function fmtBytesSummary(s: Summary): string {
  const base = `${fmtInt(s.median)} B`;
  return s.min === s.max ? base : `${base} (${fmtInt(s.min)}–${fmtInt(s.max)})`;
}

function humanBytes(bytes: number): string {
  if (bytes >= GiB) return `${fmt(bytes / GiB, bytes % GiB === 0 ? 0 : 2)} GiB`;
  if (bytes >= MiB) return `${fmt(bytes / MiB, bytes % MiB === 0 ? 0 : 1)} MiB`;
  if (bytes >= 1024) return `${fmt(bytes / 1024, 1)} KiB`;
  return `${fmt(bytes, 0)} B`;
}

function writeAll(fd: number, data: Buffer, position: number): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off, position + off);
}

function readFully(fd: number, buf: Buffer, length: number, position: number): void {
  let off = 0;
  while (off < length) {
    const n = readSync(fd, buf, off, length - off, position + off);
    if (n === 0) throw new Error("unexpected end of file");
    off += n;
  }
}

/** Streams `size` pseudo-random bytes to `path` in 8 MiB pieces; never holds the file in memory. */
function writeBigFile(path: string, size: number, seed: string): void {
  const stream = new ByteStream(seed);
  const fd = openSync(path, "w");
  try {
    let written = 0;
    while (written < size) {
      const piece = stream.next(Math.min(8 * MiB, size - written));
      writeAll(fd, piece, written);
      written += piece.length;
    }
  } finally {
    closeSync(fd);
  }
}

/** Scenario 1: XOR the byte at size/2 with 0xff, in place. Returns its offset. */
function flipMiddleByte(path: string): number {
  const fd = openSync(path, "r+");
  try {
    const offset = Math.floor(fstatSync(fd).size / 2);
    const b = Buffer.alloc(1);
    readFully(fd, b, 1, offset);
    b[0] = (b[0] as number) ^ 0xff;
    writeAll(fd, b, offset);
    return offset;
  } finally {
    closeSync(fd);
  }
}

/** Scenario 2: insert `bytes` at offset 0, in place (same inode), shifting the file from its end. */
function insertAtStart(path: string, bytes: Buffer): void {
  const fd = openSync(path, "r+");
  try {
    const size = fstatSync(fd).size;
    const buf = Buffer.allocUnsafe(8 * MiB);
    for (let end = size; end > 0; ) {
      const start = Math.max(0, end - buf.length);
      readFully(fd, buf, end - start, start);
      writeAll(fd, buf.subarray(0, end - start), start + bytes.length);
      end = start;
    }
    writeAll(fd, bytes, 0);
  } finally {
    closeSync(fd);
  }
}

/** Regular files under `root` (relative path → size), skipping `skip` at the top level. */
function listFiles(root: string, skip: string[] = []): Map<string, number> {
  const files = new Map<string, number>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (dir === root && skip.includes(entry.name)) continue;
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) files.set(relative(root, path), statSync(path).size);
    }
  };
  walk(root);
  return files;
}

function sameContent(a: string, b: string): boolean {
  const fa = openSync(a, "r");
  const fb = openSync(b, "r");
  try {
    const size = fstatSync(fa).size;
    if (fstatSync(fb).size !== size) return false;
    const ba = Buffer.allocUnsafe(8 * MiB);
    const bb = Buffer.allocUnsafe(8 * MiB);
    for (let pos = 0; pos < size; pos += ba.length) {
      const n = Math.min(ba.length, size - pos);
      readFully(fa, ba, n, pos);
      readFully(fb, bb, n, pos);
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
    }
    return true;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** Differences between the source tree and a destination copy (names, sizes, content). */
function compareTrees(src: string, copy: string, skip: string[] = []): string[] {
  if (!existsSync(copy)) return [`${copy} does not exist`];
  const want = listFiles(src);
  const have = listFiles(copy, skip);
  const diffs: string[] = [];
  for (const [path, size] of want) {
    const got = have.get(path);
    if (got === undefined) diffs.push(`missing ${path}`);
    else if (got !== size) diffs.push(`${path}: ${got} bytes, expected ${size}`);
    else if (!sameContent(join(src, path), join(copy, path))) diffs.push(`${path}: content differs`);
  }
  for (const path of have.keys()) if (!want.has(path)) diffs.push(`extra ${path}`);
  return diffs;
}

/**
 * CPU seconds (user + sys) from /proc/<pid>/stat: the process's own (all its threads) and that of
 * its children it has reaped. The bench's own `children` figure grows by exactly the measured
 * client once it has exited (the servers and the daemon are not reaped until the end).
 */
function cpuOf(pid: number | "self"): { own: number; children: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return {
      own: (Number(f[11]) + Number(f[12])) / CLK_TCK,
      children: (Number(f[13]) + Number(f[14])) / CLK_TCK,
    };
  } catch {
    return { own: Number.NaN, children: Number.NaN };
  }
}

/** Wait until the machine has been under QUIET_BUSY busy for one second, at most QUIET_WAIT_S. */
async function waitQuiet(): Promise<{ busy: number; waitedS: number; quiet: boolean }> {
  const t0 = performance.now();
  if (NO_WAIT) {
    const busy = await busyOver(200);
    return { busy, waitedS: 0, quiet: busy < QUIET_BUSY };
  }
  for (;;) {
    const busy = await busyOver(1000);
    const waitedS = (performance.now() - t0) / 1000;
    if (busy < QUIET_BUSY) return { busy, waitedS, quiet: true };
    if (waitedS > QUIET_WAIT_S) return { busy, waitedS, quiet: false };
  }
}

let firstSource = "";

interface Prep {
  source: string;
  sourceChanged: boolean;
  load: string;
  warmupS: number;
  busyBefore: number;
  waitedS: number;
  quiet: boolean;
}

async function prepareRun(label: string): Promise<Prep> {
  syncDisks();
  const q = await waitQuiet();
  const warmupS = warmMemory(WARMUP_BYTES);
  const source = sourceFingerprint();
  if (firstSource === "") firstSource = source;
  const sourceChanged = source !== firstSource;
  if (sourceChanged)
    console.log(`    [${label}] warning: the sources changed since the first run (now ${source})`);
  const load = loadLine();
  console.log(
    `    [${label}] load average ${load}; machine ${fmt(q.busy * 100, 0)}% busy in the second before ` +
      `(${NO_WAIT ? "--no-wait" : `waited ${fmt(q.waitedS, 0)} s`}${q.quiet ? "" : NO_WAIT ? `; over ${QUIET_BUSY * 100}%: run is contended` : `, never under ${QUIET_BUSY * 100}%: run is contended`}); ` +
      `warm-up ${fmt(warmupS, 2)} s`,
  );
  return { source, sourceChanged, load, warmupS, busyBefore: q.busy, waitedS: q.waitedS, quiet: q.quiet };
}

function checkSourceAfter(label: string, prep: Prep): void {
  const now = sourceFingerprint();
  if (now !== prep.source) {
    prep.sourceChanged = true;
    console.log(`    [${label}] warning: the sources changed during this run (${prep.source} → ${now})`);
  }
}

// ---------------------------------------------------------------- processes

interface Child {
  proc: ChildProcess;
  pid: number;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout: () => string;
  stderr: () => string;
}

/** Spawns `command`; stdout goes to a file descriptor or is collected. */
function startProcess(command: string, commandArgs: string[], stdout: "pipe" | number): Child {
  const proc = spawn(command, commandArgs, { cwd: ROOT, stdio: ["ignore", stdout, "pipe"] });
  if (proc.pid === undefined) throw new Error(`could not start ${command} ${commandArgs.join(" ")}`);
  live.add(proc);
  let out = "";
  let err = "";
  proc.stdout?.setEncoding("utf8");
  proc.stdout?.on("data", (chunk: string) => {
    if (out.length < 1_000_000) out += chunk;
  });
  proc.stderr?.setEncoding("utf8");
  proc.stderr?.on("data", (chunk: string) => {
    if (err.length < 64_000) err += chunk;
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => {
    proc.on("close", (code, signal) => {
      live.delete(proc);
      done({ code, signal });
    });
  });
  return { proc, pid: proc.pid, exit, stdout: () => out, stderr: () => err };
}

function startCli(cliArgs: string[], stdout: "pipe" | number): Child {
  return startProcess(process.execPath, ["--import", "tsx", MAIN, ...cliArgs], stdout);
}

async function stop(child: Child): Promise<void> {
  if (child.proc.exitCode !== null || child.proc.signalCode !== null) return;
  child.proc.kill("SIGTERM");
  if ((await raceTimeout(child.exit, 15_000, "timeout" as const)) === "timeout") {
    console.log(`  warning: pid ${child.pid} did not stop within 15 s of SIGTERM; killing it`);
    child.proc.kill("SIGKILL");
    await child.exit;
  }
}

/** Waits for the exit; kills the process after RUN_TIMEOUT_MS. */
async function waitExit(child: Child, label: string): Promise<number | null> {
  const r = await raceTimeout(child.exit, RUN_TIMEOUT_MS, "timeout" as const);
  if (r === "timeout") {
    console.log(`    warning: ${label} still running after ${RUN_TIMEOUT_MS / 1000} s; killing it`);
    child.proc.kill("SIGKILL");
    await child.exit;
    return null;
  }
  return r.code;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r, reject) => {
    server.once("error", reject);
    server.listen(0, HOST, () => r());
  });
  const address = server.address();
  const port = address !== null && typeof address !== "string" ? address.port : 0;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((r) => {
    const socket = connect({ port, host: HOST });
    socket.once("connect", () => {
      socket.destroy();
      r(true);
    });
    socket.once("error", () => r(false));
  });
}

// ---------------------------------------------------------------- rsync

/** Finds rsync, installing it with apt-get if absent. Returns a note for the output. */
function ensureRsync(): string {
  const has = () => spawnSync("sh", ["-c", "command -v rsync"], { encoding: "utf8" }).stdout.trim();
  let path = has();
  if (path) return `rsync found at ${path}`;
  console.log("rsync is missing: running `apt-get install -y rsync`…");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  let r = spawnSync("apt-get", ["install", "-y", "rsync"], { stdio: "inherit", env });
  let note = "rsync was missing: installed it with `apt-get install -y rsync`";
  if (r.status !== 0) {
    console.log("the install failed: running `apt-get update`, then the install again…");
    spawnSync("apt-get", ["update"], { stdio: "inherit", env });
    r = spawnSync("apt-get", ["install", "-y", "rsync"], { stdio: "inherit", env });
    note = "rsync was missing: installed it with `apt-get update` then `apt-get install -y rsync`";
  }
  path = has();
  if (!path) throw new Error("rsync is not installed and `apt-get install -y rsync` did not install it");
  return `${note} (${path})`;
}

interface RsyncDaemon {
  child: Child;
  port: number;
  configFile: string;
  modules: Map<string, string>;
}

/** `rsync --daemon --no-detach` on 127.0.0.1 with one writable module per round, as this user. */
async function startRsyncDaemon(work: string, modules: Map<string, string>): Promise<RsyncDaemon> {
  const configFile = join(work, "rsyncd.conf");
  const lines = [
    "# written by keepwatch bench/delta.ts",
    `pid file = ${join(work, "rsyncd.pid")}`,
    `log file = ${join(work, "rsyncd.log")}`,
    "use chroot = no",
  ];
  // As root the daemon would switch to nobody: make it run as the current user instead.
  if (process.getuid?.() === 0) lines.push(`uid = ${process.getuid()}`, `gid = ${process.getgid?.()}`);
  for (const [name, path] of modules) {
    mkdirSync(path, { recursive: true });
    lines.push("", `[${name}]`, `  path = ${path}`, "  read only = false");
  }
  writeFileSync(configFile, `${lines.join("\n")}\n`);
  const port = await freePort();
  const child = startProcess(
    "rsync",
    ["--daemon", "--no-detach", `--config=${configFile}`, "--port", String(port), "--address", HOST],
    "pipe",
  );
  const deadline = performance.now() + 15_000;
  while (!(await canConnect(port))) {
    if (child.proc.exitCode !== null || performance.now() > deadline) {
      await stop(child);
      throw new Error(`the rsync daemon did not start: ${child.stderr()}`);
    }
    await sleep(50);
  }
  return { child, port, configFile, modules };
}

interface RsyncStats {
  totalSent: number;
  totalReceived: number;
  literal: number;
  matched: number;
  filesTransferred: number;
}

function parseRsyncStats(text: string): RsyncStats {
  const num = (label: string) => {
    const m = new RegExp(`^${label}:\\s*([\\d,.]+)`, "m").exec(text);
    return m?.[1] ? Number(m[1].replace(/[,.]/g, "")) : Number.NaN;
  };
  return {
    totalSent: num("Total bytes sent"),
    totalReceived: num("Total bytes received"),
    literal: num("Literal data"),
    matched: num("Matched data"),
    filesTransferred: num("Number of regular files transferred"),
  };
}

// ---------------------------------------------------------------- keepwatch server

interface KwServer {
  child: Child;
  port: number;
  outFile: string;
}

async function startKwServer(dest: string, outFile: string): Promise<KwServer> {
  const fd = openSync(outFile, "w");
  const child = startCli(["server", dest, HOST, "--port", "0", "--json"], fd);
  closeSync(fd);
  const deadline = performance.now() + 60_000;
  for (;;) {
    if (child.proc.exitCode !== null || child.proc.signalCode !== null || performance.now() > deadline) {
      await stop(child);
      throw new Error(
        `the keepwatch server did not report listening:\n${readFileSync(outFile, "utf8")}${child.stderr()}`,
      );
    }
    const listening = parseLines(readFileSync(outFile, "utf8")).find((e) => e.event === "listening");
    if (listening && typeof listening.port === "number") return { child, port: listening.port, outFile };
    await sleep(20);
  }
}

// ---------------------------------------------------------------- one run of each tool

interface Wire {
  up: number;
  down: number;
  total: number;
  connections: number;
  /** the proxy saw every connection close within 10 s of the exit */
  drained: boolean;
}

async function wireSince(proxy: CountingProxy, before: ByteCounts): Promise<Wire> {
  const drained = await proxy.drained(10_000);
  const now = proxy.counts();
  const up = now.up - before.up;
  const down = now.down - before.down;
  return { up, down, total: up + down, connections: now.connections - before.connections, drained };
}

interface KwRun {
  tool: "keepwatch";
  scenario: ScenarioId | "initial";
  round: number;
  prep?: Prep;
  wallS: number;
  exitCode: number | null;
  wire: Wire;
  /** sentBytes of the scenario's file (its file-done, op put) */
  fileSentBytes: number;
  /** sum of sentBytes over all file-done events of the push */
  totalSentBytes: number;
  fileDones: { path?: string; op?: string; size?: number; sentBytes?: number }[];
  /** from the push's own JSON event times (ms resolution) */
  phases: { startupS: number; scanS: number; transferS: number; exitS: number };
  /** CPU seconds (user + sys) of the push, and of the server while the push ran */
  cpu: { clientS: number; serverS: number };
  verified: string[];
}

async function kwPush(
  work: string,
  src: string,
  stateDir: string,
  dest: string,
  proxy: CountingProxy,
  serverPid: number,
  scenario: ScenarioId | "initial",
  file: string,
  round: number,
  timed: boolean,
): Promise<KwRun> {
  const label = `keepwatch ${scenario} r${round}`;
  const prep = timed ? await prepareRun(label) : undefined;
  const outFile = join(work, `push-${scenario}-r${round}.jsonl`);
  const fd = openSync(outFile, "w");
  const before = proxy.counts();
  const cpuSelf0 = cpuOf("self").children;
  const cpuServer0 = cpuOf(serverPid).own;
  const spawnedAt = Date.now();
  const t0 = performance.now();
  const push = startCli(
    ["push", src, HOST, "--port", String(proxy.port), "--json", "--state-dir", stateDir],
    fd,
  );
  closeSync(fd);
  const exitCode = await waitExit(push, label);
  const wallS = (performance.now() - t0) / 1000;
  const exitedAt = Date.now();
  const wire = await wireSince(proxy, before);
  const cpu = { clientS: cpuOf("self").children - cpuSelf0, serverS: cpuOf(serverPid).own - cpuServer0 };
  if (prep) checkSourceAfter(label, prep);
  if (exitCode !== 0)
    console.log(`    warning: ${label}: push exited with ${exitCode}: ${push.stderr().trim()}`);
  if (!wire.drained)
    console.log(`    warning: ${label}: a proxied connection was still open 10 s after the exit`);

  const events = parseLines(readFileSync(outFile, "utf8"));
  const at = (name: string) => {
    const e = events.find((x) => x.event === name);
    return e ? Date.parse(e.time) : Number.NaN;
  };
  const dones = events.filter((e) => e.event === "file-done");
  const lastDone = dones.length > 0 ? Date.parse((dones[dones.length - 1] as JsonEvent).time) : Number.NaN;
  const filePut = dones.find((e) => e.op === "put" && e.path === file);
  if (!filePut) console.log(`    warning: ${label}: no file-done (put) for ${file}`);
  const set = src.split("/").pop() as string;
  const verified = compareTrees(src, join(dest, set));
  if (verified.length > 0) console.log(`    warning: ${label}: the mirror differs: ${verified.join("; ")}`);
  const run: KwRun = {
    tool: "keepwatch",
    scenario,
    round,
    ...(prep ? { prep } : {}),
    wallS,
    exitCode,
    wire,
    fileSentBytes: typeof filePut?.sentBytes === "number" ? filePut.sentBytes : Number.NaN,
    totalSentBytes: dones.reduce((n, e) => n + (typeof e.sentBytes === "number" ? e.sentBytes : 0), 0),
    fileDones: dones.map((e) => ({ path: e.path, op: e.op, size: e.size, sentBytes: e.sentBytes })),
    phases: {
      startupS: (at("connected") - spawnedAt) / 1000,
      scanS: (at("scan-done") - at("scan-start")) / 1000,
      transferS: (lastDone - at("scan-done")) / 1000,
      exitS: (exitedAt - lastDone) / 1000,
    },
    cpu,
    verified,
  };
  console.log(
    `    [${label}] ${fmt(wallS, 2)} s (exit ${exitCode}); wire ${fmtInt(wire.total)} B ` +
      `(up ${fmtInt(wire.up)}, down ${fmtInt(wire.down)}, ${wire.connections} connection(s)); ` +
      `sentBytes ${file} ${fmtInt(run.fileSentBytes)} (all files ${fmtInt(run.totalSentBytes)}); ` +
      `phases startup ${fmt(run.phases.startupS, 2)} s, scan ${fmt(run.phases.scanS, 2)} s, ` +
      `transfer ${fmt(run.phases.transferS, 2)} s, exit ${fmt(run.phases.exitS, 2)} s; ` +
      `CPU client ${fmt(cpu.clientS, 2)} s, server ${fmt(cpu.serverS, 2)} s; ` +
      `mirror ${verified.length === 0 ? "matches SRC" : "DIFFERS"}`,
  );
  return run;
}

interface RsyncRun {
  tool: "rsync";
  scenario: ScenarioId | "initial";
  round: number;
  prep?: Prep;
  wallS: number;
  exitCode: number | null;
  wire: Wire;
  stats: RsyncStats;
  /** CPU seconds (user + sys) of the rsync client, and of the daemon's per-connection processes */
  cpu: { clientS: number; serverS: number };
  verified: string[];
}

async function rsyncRun(
  src: string,
  module: string,
  dest: string,
  proxy: CountingProxy,
  daemonPid: number,
  scenario: ScenarioId | "initial",
  round: number,
  timed: boolean,
): Promise<RsyncRun> {
  const label = `rsync ${scenario} r${round}`;
  const prep = timed ? await prepareRun(label) : undefined;
  const before = proxy.counts();
  const cpuSelf0 = cpuOf("self").children;
  const cpuDaemon0 = cpuOf(daemonPid).children;
  const t0 = performance.now();
  const child = startProcess(
    "rsync",
    ["-a", "--delete", "--stats", `${src}/`, `rsync://${HOST}:${proxy.port}/${module}/`],
    "pipe",
  );
  const exitCode = await waitExit(child, label);
  const wallS = (performance.now() - t0) / 1000;
  const wire = await wireSince(proxy, before);
  const clientS = cpuOf("self").children - cpuSelf0;
  // The daemon reaps its per-connection process (and that one its own children) shortly after
  // the connection closes: wait until its children's CPU stops changing.
  let serverS = cpuOf(daemonPid).children - cpuDaemon0;
  for (let i = 0; i < 20; i++) {
    await sleep(50);
    const now = cpuOf(daemonPid).children - cpuDaemon0;
    if (now === serverS && now > 0) break;
    serverS = now;
  }
  const cpu = { clientS, serverS };
  if (prep) checkSourceAfter(label, prep);
  if (exitCode !== 0)
    console.log(`    warning: ${label}: rsync exited with ${exitCode}: ${child.stderr().trim()}`);
  if (!wire.drained)
    console.log(`    warning: ${label}: a proxied connection was still open 10 s after the exit`);
  const stats = parseRsyncStats(child.stdout());
  const verified = compareTrees(src, dest);
  if (verified.length > 0) console.log(`    warning: ${label}: the copy differs: ${verified.join("; ")}`);
  console.log(
    `    [${label}] ${fmt(wallS, 2)} s (exit ${exitCode}); wire ${fmtInt(wire.total)} B ` +
      `(up ${fmtInt(wire.up)}, down ${fmtInt(wire.down)}); --stats sent ${fmtInt(stats.totalSent)} + ` +
      `received ${fmtInt(stats.totalReceived)}, literal ${fmtInt(stats.literal)}, matched ${fmtInt(stats.matched)}; ` +
      `CPU client ${fmt(cpu.clientS, 2)} s, daemon ${fmt(cpu.serverS, 2)} s; ` +
      `copy ${verified.length === 0 ? "matches SRC" : "DIFFERS"}`,
  );
  return {
    tool: "rsync",
    scenario,
    round,
    ...(prep ? { prep } : {}),
    wallS,
    exitCode,
    wire,
    stats,
    cpu,
    verified,
  };
}

/** Applies a scenario's change to SRC (untimed). */
function applyChange(src: string, scenario: ScenarioId, round: number): string {
  switch (scenario) {
    case "flip": {
      const offset = flipMiddleByte(join(src, BIG));
      return `flipped the byte at offset ${fmtInt(offset)} of ${BIG} (XOR 0xff)`;
    }
    case "insert":
      insertAtStart(join(src, BIG), new ByteStream(`insert-${round}`).next(INSERT_BYTES));
      return `inserted ${INSERT_BYTES} random bytes at offset 0 of ${BIG} (in place)`;
    case "rename":
      renameSync(join(src, MID), join(src, MID_RENAMED));
      return `renamed ${MID} to ${MID_RENAMED}`;
    case "copy":
      copyFileSync(join(src, MID_RENAMED), join(src, MID_COPY));
      return `copied ${MID_RENAMED} to ${MID_COPY}`;
  }
}

// ---------------------------------------------------------------- main

const METHOD =
  `SRC holds ${BIG} (${humanBytes(config.bigBytes)}) and ${MID} (${humanBytes(config.midBytes)}) of AES-128-CTR ` +
  "keystream (incompressible, deterministic). Each of the 3 rounds has its own copy of SRC, a fresh keepwatch server " +
  "folder and --state-dir, and a fresh rsync module folder. Setup (untimed, not controlled): the initial " +
  "transfer by each tool. Then the scenarios in order, each on top of the previous state, the change applied once " +
  "to SRC and then both tools run: keepwatch `push SRC 127.0.0.1 --port PROXY --json --state-dir STATE` (the state " +
  "persists between pushes), then `rsync -a --delete --stats SRC/ rsync://127.0.0.1:PROXY/rN/` (rsync's default " +
  "delta algorithm; the daemon runs `--daemon --no-detach --address 127.0.0.1`, `use chroot = no`, as the current " +
  "user, and reads its module from the page cache too). Bytes on the wire: TCP payload counted by a proxy in the " +
  "bench process (both directions, every connection the run opened, counted until all closed); IP/TCP headers not " +
  "included. Wall time: spawn → exit (performance.now()), Node + tsx start-up included for keepwatch, through the " +
  "proxy for both. Before each measured run: `sync`, a wait until the CPUs were under " +
  `${QUIET_BUSY * 100}% busy for 1 s (at most ${QUIET_WAIT_S} s), a separate process touching and freeing ` +
  `${humanBytes(WARMUP_BYTES)}, the load average printed. After each run the destination is compared with SRC byte ` +
  "for byte (untimed).";

async function main(): Promise<void> {
  const started = new Date();
  console.log(`keepwatch vs rsync: deltas${QUICK ? " (--quick: reduced sizes)" : ""}`);
  console.log(
    `machine: ${cpus().length} vCPU (${cpus()[0]?.model ?? "?"}), ${humanBytes(totalmem())} RAM, Node ${process.version}`,
  );
  const rsyncNote = ensureRsync();
  const rsyncVersion =
    spawnSync("rsync", ["--version"], { encoding: "utf8" }).stdout.split("\n")[0]?.trim() ?? "rsync ?";
  console.log(`${rsyncNote}; ${rsyncVersion}`);

  console.log(spawnSync("df", ["-h", "/tmp"], { encoding: "utf8" }).stdout.trimEnd());
  // Per round: SRC, keepwatch's mirror and its chunk packs, rsync's copy plus its temporary file.
  const perRound = (config.bigBytes + 2 * config.midBytes) * 4 + config.bigBytes;
  const needBytes = config.bigBytes + config.midBytes + ROUNDS * perRound + 512 * MiB;
  const fs = statfsSync("/tmp");
  const freeBytes = fs.bavail * fs.bsize;
  console.log(`disk: /tmp has ${humanBytes(freeBytes)} free; this run needs about ${humanBytes(needBytes)}`);
  if (freeBytes < needBytes) throw new Error("not enough free space in /tmp");

  const gitAtStart = gitDescribe();
  console.log(
    `code: git ${gitAtStart.head}, ${gitAtStart.dirtySrcFiles} uncommitted file(s) in src/ and package files; ` +
      `source fingerprint ${sourceFingerprint()} (runs started from the working tree)`,
  );

  const work = mkdtempSync("/tmp/kw-delta-");
  console.log(`data folder: ${work}${KEEP ? " (kept: --keep)" : " (removed at the end)"}`);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      killAll();
      if (!KEEP) rmSync(work, { recursive: true, force: true });
      process.exit(signal === "SIGINT" ? 130 : 143);
    });
  }

  let daemon: RsyncDaemon | undefined;
  let rsyncProxy: CountingProxy | undefined;
  try {
    const startupS: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      spawnSync(process.execPath, ["--import", "tsx", MAIN, "--version"], { cwd: ROOT });
      startupS.push((performance.now() - t0) / 1000);
    }
    const startup = summarize(startupS);
    console.log(`keepwatch CLI start-up alone (--version, 3 runs): ${fmtSummary(startup, 2, "s")}`);

    console.log("\ngenerating data…");
    let t0 = performance.now();
    const orig = join(work, "orig");
    mkdirSync(orig);
    writeBigFile(join(orig, BIG), config.bigBytes, "delta-big");
    writeBigFile(join(orig, MID), config.midBytes, "delta-mid");
    const srcs: string[] = [];
    for (let r = 1; r <= ROUNDS; r++) {
      const src = join(work, `src-r${r}`);
      mkdirSync(src);
      copyFileSync(join(orig, BIG), join(src, BIG));
      copyFileSync(join(orig, MID), join(src, MID));
      srcs.push(src);
    }
    syncDisks();
    console.log(
      `  ${ROUNDS} copies of SRC (${BIG} ${humanBytes(config.bigBytes)}, ${MID} ${humanBytes(config.midBytes)}), ` +
        `${fmt((performance.now() - t0) / 1000, 1)} s incl. sync; all sources are in the page cache (warm).`,
    );

    const modules = new Map<string, string>();
    for (let r = 1; r <= ROUNDS; r++) modules.set(`r${r}`, join(work, `rsync-dest-r${r}`));
    daemon = await startRsyncDaemon(work, modules);
    rsyncProxy = await CountingProxy.start(daemon.port);
    const rsyncPid = daemon.child.pid;
    console.log(
      `rsync daemon on ${HOST}:${daemon.port} (config ${daemon.configFile}); counting proxy ${HOST}:${rsyncProxy.port}`,
    );
    console.log(`\nmethod: ${METHOD}`);

    const kwRuns: KwRun[] = [];
    const rsRuns: RsyncRun[] = [];
    const changes: string[] = [];
    t0 = performance.now();
    for (let round = 1; round <= ROUNDS; round++) {
      console.log(`\nround ${round}/${ROUNDS}`);
      const src = srcs[round - 1] as string;
      const kwDest = join(work, `kw-dest-r${round}`);
      const stateDir = join(work, `kw-state-r${round}`);
      const rsDest = modules.get(`r${round}`) as string;
      const server = await startKwServer(kwDest, join(work, `server-r${round}.jsonl`));
      const kwProxy = await CountingProxy.start(server.port);
      try {
        console.log("  setup (untimed): initial transfer");
        kwRuns.push(
          await kwPush(work, src, stateDir, kwDest, kwProxy, server.child.pid, "initial", BIG, round, false),
        );
        rsRuns.push(await rsyncRun(src, `r${round}`, rsDest, rsyncProxy, rsyncPid, "initial", round, false));
        for (const scenario of SCENARIOS) {
          const change = applyChange(src, scenario.id, round);
          if (round === 1) changes.push(`${scenario.id}: ${change}`);
          console.log(`  ${scenario.label}: ${change}`);
          kwRuns.push(
            await kwPush(
              work,
              src,
              stateDir,
              kwDest,
              kwProxy,
              server.child.pid,
              scenario.id,
              scenario.file,
              round,
              true,
            ),
          );
          rsRuns.push(
            await rsyncRun(src, `r${round}`, rsDest, rsyncProxy, rsyncPid, scenario.id, round, true),
          );
        }
      } finally {
        await stop(server.child);
        await kwProxy.close();
      }
    }
    console.log(`\nall rounds took ${fmt((performance.now() - t0) / 1000, 0)} s`);

    // ------------------------------------------------------------ results
    const pick = <T extends KwRun | RsyncRun>(runs: T[], id: ScenarioId | "initial") =>
      runs.filter((r) => r.scenario === id);
    const scenarioResults = (["initial", ...SCENARIOS.map((s) => s.id)] as const).map((id) => {
      const kw = pick(kwRuns, id);
      const rs = pick(rsRuns, id);
      const kwWire = summarize(kw.map((r) => r.wire.total));
      const rsWire = summarize(rs.map((r) => r.wire.total));
      const scenario = SCENARIOS.find((s) => s.id === id);
      return {
        id,
        label:
          scenario?.label ?? `setup: initial transfer (${humanBytes(config.bigBytes + config.midBytes)})`,
        file: scenario?.file ?? BIG,
        keepwatch: {
          wireTotal: kwWire,
          wireUp: summarize(kw.map((r) => r.wire.up)),
          wireDown: summarize(kw.map((r) => r.wire.down)),
          fileSentBytes: summarize(kw.map((r) => r.fileSentBytes)),
          totalSentBytes: summarize(kw.map((r) => r.totalSentBytes)),
          wallS: summarize(kw.map((r) => r.wallS)),
          transferS: summarize(kw.map((r) => r.phases.transferS)),
          startupS: summarize(kw.map((r) => r.phases.startupS)),
          scanS: summarize(kw.map((r) => r.phases.scanS)),
          exitS: summarize(kw.map((r) => r.phases.exitS)),
          clientCpuS: summarize(kw.map((r) => r.cpu.clientS)),
          serverCpuS: summarize(kw.map((r) => r.cpu.serverS)),
        },
        rsync: {
          wireTotal: rsWire,
          wireUp: summarize(rs.map((r) => r.wire.up)),
          wireDown: summarize(rs.map((r) => r.wire.down)),
          statsSent: summarize(rs.map((r) => r.stats.totalSent)),
          statsReceived: summarize(rs.map((r) => r.stats.totalReceived)),
          literal: summarize(rs.map((r) => r.stats.literal)),
          matched: summarize(rs.map((r) => r.stats.matched)),
          wallS: summarize(rs.map((r) => r.wallS)),
          clientCpuS: summarize(rs.map((r) => r.cpu.clientS)),
          serverCpuS: summarize(rs.map((r) => r.cpu.serverS)),
        },
        ratio: kwWire.median / rsWire.median,
        target: scenario ? { max: scenario.target, text: scenario.targetText } : undefined,
        meetsTarget: scenario ? kwWire.median / rsWire.median <= scenario.target : undefined,
      };
    });

    const failures = [...kwRuns, ...rsRuns].filter((r) => r.exitCode !== 0 || r.verified.length > 0).length;
    const measured = [...kwRuns, ...rsRuns].filter((r) => r.prep !== undefined);
    const results = {
      date: started.toISOString(),
      git: gitAtStart,
      sourceFingerprint: firstSource,
      quick: QUICK,
      machine: { cpus: cpus().length, model: cpus()[0]?.model, memBytes: totalmem(), node: process.version },
      rsync: { version: rsyncVersion, note: rsyncNote },
      config: {
        ...config,
        noWait: NO_WAIT,
        insertBytes: INSERT_BYTES,
        rounds: ROUNDS,
        warmupBytes: WARMUP_BYTES,
        maxChunk: MAX_CHUNK,
      },
      method: METHOD,
      changes,
      cliStartupS: startup,
      scenarios: scenarioResults,
      flipWall: {
        keepwatchS: summarize(pick(kwRuns, "flip").map((r) => r.wallS)),
        rsyncS: summarize(pick(rsRuns, "flip").map((r) => r.wallS)),
        ratio:
          median(pick(kwRuns, "flip").map((r) => r.wallS)) / median(pick(rsRuns, "flip").map((r) => r.wallS)),
      },
      failedRuns: failures,
      contendedRuns: measured.filter((r) => r.prep && !r.prep.quiet).length,
      sourceChangedRuns: measured.filter((r) => r.prep?.sourceChanged).length,
      runs: { keepwatch: kwRuns, rsync: rsRuns },
    };

    // Table 1: bytes on the wire.
    const bytesHeader = [
      "scenario",
      "keepwatch on the wire",
      "rsync on the wire",
      "keepwatch / rsync",
      "target",
      "keepwatch sentBytes (file)",
      "rsync --stats sent + received",
    ];
    const bytesRows = scenarioResults.map((s) => [
      s.label,
      fmtBytesSummary(s.keepwatch.wireTotal),
      fmtBytesSummary(s.rsync.wireTotal),
      fmt(s.ratio, 4),
      s.target
        ? `${s.target.text} ${s.meetsTarget ? "met" : "NOT met"}${QUICK ? " (set for the full sizes)" : ""}`
        : "—",
      `${fmtInt(s.keepwatch.fileSentBytes.median)} (${s.file})`,
      `${fmtInt(s.rsync.statsSent.median)} + ${fmtInt(s.rsync.statsReceived.median)}`,
    ]);
    console.log(
      `\nbytes on the wire (TCP payload both directions, counting proxy; median of ${ROUNDS} rounds, min–max when they differ)`,
    );
    printTable(bytesHeader, bytesRows);
    const dirRows = scenarioResults.map((s) => [
      s.label,
      `${fmtInt(s.keepwatch.wireUp.median)} / ${fmtInt(s.keepwatch.wireDown.median)}`,
      `${fmtInt(s.rsync.wireUp.median)} / ${fmtInt(s.rsync.wireDown.median)}`,
      `${fmtInt(s.rsync.literal.median)} / ${fmtInt(s.rsync.matched.median)}`,
    ]);
    console.log(
      "\nby direction (client → server / server → client, medians), and rsync's literal / matched data",
    );
    printTable(["scenario", "keepwatch up / down", "rsync up / down", "rsync literal / matched"], dirRows);

    // Table 2: wall time.
    const flip = scenarioResults.find((s) => s.id === "flip");
    const wallRows = scenarioResults
      .filter((s) => s.id !== "initial")
      .map((s) => [
        s.id === "flip" ? s.label : `${s.label} (for information)`,
        fmtSummary(s.keepwatch.wallS, 2, "s"),
        fmtSummary(s.rsync.wallS, 2, "s"),
        fmt(s.keepwatch.wallS.median / s.rsync.wallS.median, 2),
      ]);
    console.log(
      `\nwall time, spawn → exit (median of ${ROUNDS}, min–max; alternating keepwatch, rsync; memory warmed before each; ` +
        "page cache warm; both through the proxy)",
    );
    printTable(["scenario", "keepwatch push", "rsync", "keepwatch / rsync"], wallRows);
    if (flip) {
      const k = flip.keepwatch;
      console.log(
        `keepwatch flip phases (medians, from its JSON event times): spawn → connected ${fmt(k.startupS.median, 2)} s, ` +
          `scan ${fmt(k.scanS.median, 2)} s, scan-done → file-done ${fmt(k.transferS.median, 2)} s, ` +
          `file-done → exit ${fmt(k.exitS.median, 2)} s; CLI start-up alone (--version) ${fmt(startup.median, 2)} s`,
      );
    }
    const cpuRows = scenarioResults.map((s) => [
      s.label,
      `${fmt(s.keepwatch.clientCpuS.median, 2)} s / ${fmt(s.keepwatch.serverCpuS.median, 2)} s`,
      `${fmt(s.rsync.clientCpuS.median, 2)} s / ${fmt(s.rsync.serverCpuS.median, 2)} s`,
    ]);
    console.log(
      `\nCPU user + sys, client / server side (medians of ${ROUNDS}; from /proc, ${1000 / CLK_TCK} ms ticks; ` +
        "keepwatch's client figure includes Node + tsx start-up)",
    );
    printTable(["scenario", "keepwatch push / server", "rsync client / daemon"], cpuRows);
    const initial = scenarioResults.find((s) => s.id === "initial");
    if (initial) {
      console.log(
        `setup, initial transfer (not a controlled timing): keepwatch ${fmtSummary(initial.keepwatch.wallS, 2, "s")}, ` +
          `rsync ${fmtSummary(initial.rsync.wallS, 2, "s")}`,
      );
    }
    console.log(
      "notes: rsync has no rename or copy detection: in scenarios 3 and 4 it sends the whole file again (with " +
        "--delete the old name is removed). rsync's --stats totals count its protocol stream; the proxy also sees the " +
        "daemon greeting and module negotiation.",
    );
    if (failures > 0)
      console.log(`warning: ${failures} run(s) failed or left a destination that differs from SRC`);
    if (results.sourceChangedRuns > 0) {
      console.log(`warning: the sources changed before or during ${results.sourceChangedRuns} run(s)`);
    }
    if (results.contendedRuns > 0) {
      console.log(`warning: ${results.contendedRuns} run(s) started while other work kept the machine busy`);
    }

    mkdirSync(dirname(OUT), { recursive: true });
    writeFileSync(OUT, `${JSON.stringify(results, null, 2)}\n`);
    console.log(`\nJSON: ${OUT}`);
  } finally {
    if (daemon) await stop(daemon.child);
    await rsyncProxy?.close();
    killAll();
    if (!KEEP) {
      const t = performance.now();
      rmSync(work, { recursive: true, force: true });
      console.log(`removed ${work} (${fmt((performance.now() - t) / 1000, 1)} s)`);
    }
  }
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  console.log(line(header));
  console.log(line(widths.map((w) => "-".repeat(w))));
  for (const r of rows) console.log(line(r));
}

main().catch((error) => {
  killAll();
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
