// `npm run bench`: keepwatch measured side by side with rsync (a daemon on 127.0.0.1) and restic
// (a local repository), on the same data, on this machine, with the project's targets marked
// pass or miss next to the figures.
//
// Scenarios (--only takes these names, or a group: big, small, mixed, watch):
//   big-initial    initial backup of one 1 GiB incompressible file
//   small-initial  initial backup of 20,000 files of 1–16 KiB in nested folders
//   mixed-initial  initial backup of a ~300 MiB mixed tree (text, binaries, a few large files, many small)
//   big-flip       one byte flipped in the middle of the 1 GiB file      } each starts from destinations
//   big-insert     100 bytes inserted at its start (after the flip)      } that hold the previous state
//   small-edit     10 of the 20,000 small files rewritten                } (set up untimed when the
//                                                                         } scenario before is not run)
//   watch-10       a watching `keepwatch client`, idle after its initial sync of the 20,000 files:
//                  10 of them rewritten at once; time from the last write until all 10 are acknowledged
//   watch-latency  the same client: 100 small files rewritten one after another, each after the
//                  previous one's acknowledgement; write → acknowledgement p50 and p99
// Measured: wall time spawn → exit of `keepwatch push`, `rsync -a --delete --stats SRC/ rsync://…`
// and `restic backup`; bytes on the socket (a counting proxy between keepwatch's client and server,
// and between the rsync client and daemon; TCP payload both ways, handshakes included); peak RSS
// (VmHWM) of keepwatch's client and server in every scenario.
//
// Method (/work/shared/BENCHMARKING.md): the tools run alternately (keepwatch, rsync, restic,
// keepwatch, …), --runs times each (3 by default); before each timed run `sync`, a wait for a quiet
// machine, ~2 GiB of memory touched and freed in a separate process, the load average printed;
// every run has fresh destinations (a new keepwatch DEST, client state and config folder, a new
// rsync module folder, a new restic repository), set up untimed; nothing is deleted until all
// timed runs are done. The data sets are generated once, deterministically, into .bench-data/
// (gitignored) and reused by later runs with the same sizes; they are read once before the timed
// runs, so every tool reads its source from the page cache (caches are never dropped).
// keepwatch runs as installed, from dist/ (`node OPTIONS dist/cli/main.js`, OPTIONS being those of
// the executable's first line; built from the working tree first when the sources changed): Node
// start-up (printed) is part of its wall times.
//
// Run:  npm run bench [-- --quick] [--runs N] [--only SCENARIO[,…]] [--keep] [--no-wait]
//   --quick    128 MiB big file, 2,000 small files, 40 MiB mixed tree, 20 latency edits, 1 run:
//              every scenario, as a sanity check of the bench (about 2.5 minutes on a quiet machine;
//              the targets are set for the full sizes)
//   --runs N   timed runs per tool and scenario (default 3; 1 with --quick)
//   --only …   a subset, e.g. --only big-flip,watch
//   --keep     leave the run folder (destinations, repositories, logs) in /tmp/kw-bench-*
//   --no-wait  do not wait for a quiet machine before each timed run (runs are flagged instead)
// The full run takes about 15 minutes on a quiet machine (plus ~20 s to generate 1.5 GiB of data
// the first time); longer when others keep the machine busy, since each of its ~60 timed runs waits
// up to 3 minutes for a quiet second. It needs about 27 GiB free in /tmp. Its clean-up deletes
// ~350,000 files: wait a few minutes before running it again (BENCHMARKING.md pitfall 2).
// rsync and restic are not installed by this script: a missing one is reported with the command
// that installs it (apt-get install rsync restic), its columns read "missing", and keepwatch is
// measured all the same. Results: printed, and written as JSON to bench/out/bench.json
// (bench/out/bench-quick.json with --quick).

import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { CountingProxy, type Wire, wireSince } from "./counting-proxy.js";
import {
  cachedDataSet,
  compareTrees,
  copyTree,
  flipBigFile,
  insertIntoBigFile,
  readTree,
  sameContent,
  smallFilePath,
  writeBigFile,
  writeMixedTree,
  writeSmallTree,
} from "./data.js";
import { EventLines, type KwServer, kwConnection, runPush, startKwServer } from "./keepwatch.js";
import {
  ByteStream,
  checkFreeSpace,
  codeLine,
  fmt,
  fmtInt,
  GiB,
  gitDescribe,
  HOST,
  humanBytes,
  killAll,
  loadLine,
  MiB,
  machineInfo,
  machineLine,
  percentile,
  printTable,
  ROOT,
  removeRunFolder,
  type Summary,
  sleep,
  summarize,
  syncDisks,
} from "./lib.js";
import {
  findTool,
  firstLine,
  type RsyncDaemon,
  resticEnv,
  resticInit,
  runRestic,
  runRsync,
  startRsyncDaemon,
} from "./peers.js";
import {
  type Child,
  cliNodeOptions,
  ensureBuilt,
  measureCliStartup,
  onInterrupt,
  peakRssMiB,
  resetPeakRss,
  startCli,
  stop,
} from "./processes.js";
import { type Prep, RunPreparer } from "./run-prep.js";

// ---------------------------------------------------------------- options

type Group = "big" | "small" | "mixed" | "watch";
type ScenarioId =
  | "big-initial"
  | "big-flip"
  | "big-insert"
  | "small-initial"
  | "small-edit"
  | "mixed-initial"
  | "watch-10"
  | "watch-latency";
type Tool = "keepwatch" | "rsync" | "restic";
const PEERS = ["rsync", "restic"] as const;
type Peer = (typeof PEERS)[number];

/** In run order: a group's scenarios build on each other's destinations. */
const SCENARIO_IDS: ScenarioId[] = [
  "big-initial",
  "big-flip",
  "big-insert",
  "small-initial",
  "small-edit",
  "mixed-initial",
  "watch-10",
  "watch-latency",
];
const GROUPS: Group[] = ["big", "small", "mixed", "watch"];
const groupOf = (id: ScenarioId): Group => id.split("-")[0] as Group;

function usage(message: string): never {
  console.error(
    `${message}\nusage: npm run bench -- [--quick] [--runs N] [--only SCENARIO[,…]] [--keep] [--no-wait]\n` +
      `scenarios: ${SCENARIO_IDS.join(", ")}; groups: ${GROUPS.join(", ")}`,
  );
  process.exit(2);
}

function parseOptions(argv: string[]) {
  let quick = false;
  let keep = false;
  let noWait = false;
  let runs: number | undefined;
  let only: Set<ScenarioId> | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const [name, inline] = arg.includes("=") ? (arg.split("=", 2) as [string, string]) : [arg, undefined];
    const value = () => inline ?? argv[++i] ?? usage(`${name} needs a value`);
    if (name === "--quick") quick = true;
    else if (name === "--keep") keep = true;
    else if (name === "--no-wait") noWait = true;
    else if (name === "--runs") {
      runs = Number(value());
      if (!Number.isInteger(runs) || runs < 1) usage("--runs takes a whole number of at least 1");
    } else if (name === "--only") {
      only = new Set();
      for (const item of value().split(",")) {
        const wanted = item.trim();
        if ((GROUPS as string[]).includes(wanted)) {
          for (const id of SCENARIO_IDS) if (groupOf(id) === wanted) only.add(id);
        } else if ((SCENARIO_IDS as string[]).includes(wanted)) only.add(wanted as ScenarioId);
        else usage(`unknown scenario ${wanted}`);
      }
    } else usage(`unknown argument ${arg}`);
  }
  return { quick, keep, noWait, runs: runs ?? (quick ? 1 : 3), only: only ?? new Set(SCENARIO_IDS) };
}

const OPTIONS = parseOptions(process.argv.slice(2));
const SIZES = OPTIONS.quick
  ? { bigBytes: 128 * MiB, smallFiles: 2_000, mixedBytes: 40 * MiB, latencyEdits: 20 }
  : { bigBytes: 1 * GiB, smallFiles: 20_000, mixedBytes: 300 * MiB, latencyEdits: 100 };
const BIG = "big.bin";
const INSERT_BYTES = 100;
const CHANGED_FILES = 10;
const RUN_TIMEOUT_MS = 15 * 60_000;
const ACK_TIMEOUT_MS = 15_000;
const IDLE_TIMEOUT_MS = 10 * 60_000;
/** After an acknowledgement, the next latency edit waits this long (the client's state settles). */
const EDIT_GAP_MS = 10;
const RSS_LIMIT_MIB = 150;
const DATA_ROOT = join(ROOT, ".bench-data");
const OUT = join(ROOT, "bench", "out", OPTIONS.quick ? "bench-quick.json" : "bench.json");
const selected = (id: ScenarioId) => OPTIONS.only.has(id);
const preparer = new RunPreparer({ noWait: OPTIONS.noWait, indent: "    " });

const LABELS: Record<ScenarioId, string> = {
  "big-initial": `initial: one ${humanBytes(SIZES.bigBytes)} incompressible file`,
  "big-flip": `1 byte flipped mid-file (${humanBytes(SIZES.bigBytes)})`,
  "big-insert": `${INSERT_BYTES} bytes inserted at offset 0`,
  "small-initial": `initial: ${fmtInt(SIZES.smallFiles)} files of 1–16 KiB`,
  "small-edit": `${CHANGED_FILES} of ${fmtInt(SIZES.smallFiles)} files changed (push)`,
  "mixed-initial": `initial: ${humanBytes(SIZES.mixedBytes)} mixed tree`,
  "watch-10": `${CHANGED_FILES} of ${fmtInt(SIZES.smallFiles)} changed, watching client`,
  "watch-latency": `${SIZES.latencyEdits} edits one by one, watching client`,
};

// ---------------------------------------------------------------- targets

type Metric = "wallS" | "wireBytes" | "ackS" | "p50Ms" | "p99Ms";

interface Target {
  metric: Metric;
  /** a ratio to this peer's median; absent: an absolute limit on keepwatch's median */
  peer?: Peer;
  max: number;
  text: string;
}

/** keepwatch's median at most `max` times the peer's. */
const versus = (metric: Metric, peer: Peer, max: number): Target => ({
  metric,
  peer,
  max,
  text: `≤ ${max}× ${peer}`,
});

const TARGETS: Partial<Record<ScenarioId, Target[]>> = {
  "big-initial": [versus("wallS", "rsync", 1.5), versus("wallS", "restic", 0.5)],
  "small-initial": [versus("wallS", "rsync", 1.0), versus("wallS", "restic", 0.5)],
  "mixed-initial": [versus("wallS", "rsync", 1.5), versus("wallS", "restic", 0.5)],
  "big-flip": [versus("wallS", "rsync", 1.0), versus("wireBytes", "rsync", 0.2)],
  "big-insert": [versus("wallS", "rsync", 1.0), versus("wireBytes", "rsync", 0.2)],
  "watch-10": [{ metric: "ackS", max: 0.25, text: "≤ 0.25 s" }],
  "watch-latency": [
    { metric: "p50Ms", max: 50, text: "≤ 50 ms" },
    { metric: "p99Ms", max: 250, text: "≤ 250 ms" },
  ],
};

// ---------------------------------------------------------------- records of runs

/** One timed run of one tool in one scenario. */
interface RunRecord {
  tool: Tool;
  scenario: ScenarioId;
  round: number;
  prep: Prep;
  exitCode: number | null;
  /** what differs between SRC and the destination afterwards (empty: identical) */
  differences: string[];
  wallS?: number;
  wire?: Wire;
  wireBytes?: number;
  clientHwmMiB?: number;
  serverHwmMiB?: number;
  ackS?: number;
  p50Ms?: number;
  p99Ms?: number;
  latenciesMs?: number[];
  missedAcks?: number;
  /** tool-specific figures (phases, CPU, rsync's --stats, restic's summary) */
  detail: Record<string, unknown>;
}

const records: RunRecord[] = [];
const setups: { tool: Tool; scenario: ScenarioId; round: number; wallS: number; exitCode: number | null }[] =
  [];

/** Keeps a timed run's record; an untimed setup run is only noted. */
function keep(run: Omit<RunRecord, "prep">, prep: Prep | undefined): void {
  if (prep) records.push({ ...run, prep });
  else
    setups.push({
      tool: run.tool,
      scenario: run.scenario,
      round: run.round,
      wallS: run.wallS ?? Number.NaN,
      exitCode: run.exitCode,
    });
}

function failed(r: RunRecord): boolean {
  return r.exitCode !== 0 || r.differences.length > 0 || (r.missedAcks ?? 0) > 0;
}

// ---------------------------------------------------------------- context of one group and round

interface Destinations {
  dir: string;
  src: string;
  set: string;
  server: KwServer;
  kwProxy: CountingProxy;
  kwDest: string;
  stateDir: string;
  rsyncModule: string;
  rsyncDest: string;
  resticRepo: string;
}

interface Peers {
  rsync: { daemon: RsyncDaemon; proxy: CountingProxy; modules: Map<string, string> } | null;
  restic: { env: NodeJS.ProcessEnv } | null;
}

/** Builds dist/ whenever the sources changed, so a build never counts in a timed run. */
function ensureCliCompiled(): void {
  ensureBuilt();
}

function logRun(label: string, timed: boolean, text: string): void {
  console.log(`    [${label}] ${timed ? "" : "setup (untimed): "}${text}`);
}

/** "matches SRC", or the first differences. */
function copyState(differences: string[]): string {
  return differences.length === 0 ? "matches SRC" : `DIFFERS: ${differences.slice(0, 5).join("; ")}`;
}

function fmtWire(w: Wire | undefined): string {
  return w ? `wire ${fmtInt(w.total)} B (up ${fmtInt(w.up)}, down ${fmtInt(w.down)})` : "";
}

async function keepwatchPush(d: Destinations, scenario: ScenarioId, round: number, timed: boolean) {
  const label = `keepwatch ${scenario} r${round}`;
  ensureCliCompiled();
  const prep = timed ? await preparer.prepare(label) : undefined;
  const hwmReset = resetPeakRss(d.server.child.pid);
  const r = await runPush({
    src: d.src,
    stateDir: d.stateDir,
    server: d.server,
    proxy: d.kwProxy,
    outFile: join(d.dir, `push-${scenario}.jsonl`),
    label,
    timeoutMs: RUN_TIMEOUT_MS,
  });
  const serverHwmMiB = peakRssMiB(d.server.child.pid);
  if (prep) preparer.checkAfter(label, prep);
  const differences = compareTrees(d.src, join(d.kwDest, d.set));
  const sentBytes = r.events
    .filter((e) => e.event === "file-done")
    .reduce((n, e) => n + (typeof e.sentBytes === "number" ? e.sentBytes : 0), 0);
  logRun(
    label,
    timed,
    `${fmt(r.wallS, 2)} s (exit ${r.exitCode}); ${fmtWire(r.wire)}; sentBytes ${fmtInt(sentBytes)}; peak RSS ` +
      `client ${fmt(r.client.hwmMiB, 0)} MiB, server ${fmt(serverHwmMiB, 0)} MiB` +
      `${hwmReset ? "" : " (since its start: VmHWM could not be reset)"}; CPU client ${fmt(r.cpu.clientS, 2)} s, ` +
      `server ${fmt(r.cpu.serverS, 2)} s; mirror ${copyState(differences)}`,
  );
  keep(
    {
      tool: "keepwatch",
      scenario,
      round,
      exitCode: r.exitCode,
      differences,
      wallS: r.wallS,
      wire: r.wire,
      wireBytes: r.wire.total,
      clientHwmMiB: r.client.hwmMiB,
      serverHwmMiB,
      detail: { phases: r.phases, cpu: r.cpu, sentBytes, serverHwmReset: hwmReset },
    },
    prep,
  );
}

async function rsyncPush(d: Destinations, peers: Peers, scenario: ScenarioId, round: number, timed: boolean) {
  if (!peers.rsync) return;
  const label = `rsync ${scenario} r${round}`;
  const prep = timed ? await preparer.prepare(label) : undefined;
  const r = await runRsync(
    d.src,
    d.rsyncModule,
    peers.rsync.proxy,
    peers.rsync.daemon,
    label,
    RUN_TIMEOUT_MS,
  );
  if (prep) preparer.checkAfter(label, prep);
  const differences = compareTrees(d.src, d.rsyncDest);
  logRun(
    label,
    timed,
    `${fmt(r.wallS, 2)} s (exit ${r.exitCode}); ${fmtWire(r.wire)}; --stats sent ${fmtInt(r.stats.totalSent)} + ` +
      `received ${fmtInt(r.stats.totalReceived)}, literal ${fmtInt(r.stats.literal)}, matched ` +
      `${fmtInt(r.stats.matched)}; CPU client ${fmt(r.cpu.clientS, 2)} s, daemon ${fmt(r.cpu.serverS, 2)} s; ` +
      `copy ${copyState(differences)}`,
  );
  keep(
    {
      tool: "rsync",
      scenario,
      round,
      exitCode: r.exitCode,
      differences,
      wallS: r.wallS,
      wire: r.wire,
      wireBytes: r.wire.total,
      detail: { stats: r.stats, cpu: r.cpu },
    },
    prep,
  );
}

async function resticBackup(
  d: Destinations,
  peers: Peers,
  scenario: ScenarioId,
  round: number,
  timed: boolean,
) {
  if (!peers.restic) return;
  const label = `restic ${scenario} r${round}`;
  const prep = timed ? await preparer.prepare(label) : undefined;
  const r = await runRestic(d.resticRepo, d.src, peers.restic.env, label, RUN_TIMEOUT_MS);
  if (prep) preparer.checkAfter(label, prep);
  const s = r.summary;
  logRun(
    label,
    timed,
    `${fmt(r.wallS, 2)} s (exit ${r.exitCode}); ` +
      (s
        ? `files new ${s.files_new}, changed ${s.files_changed}, unmodified ${s.files_unmodified}; ` +
          `added ${fmtInt(s.data_added ?? Number.NaN)} B`
        : "no summary") +
      `; CPU ${fmt(r.cpuS, 2)} s`,
  );
  keep(
    {
      tool: "restic",
      scenario,
      round,
      exitCode: r.exitCode,
      differences: s ? [] : ["restic printed no summary"],
      wallS: r.wallS,
      detail: { summary: s, cpuS: r.cpuS },
    },
    prep,
  );
}

/** The three tools, alternately, on the same SRC. */
async function allTools(d: Destinations, peers: Peers, scenario: ScenarioId, round: number, timed: boolean) {
  await keepwatchPush(d, scenario, round, timed);
  await rsyncPush(d, peers, scenario, round, timed);
  await resticBackup(d, peers, scenario, round, timed);
}

/** `count` files of the small tree, spread evenly over it (offset picks which). */
function spreadFiles(count: number, offset: number): string[] {
  const step = Math.floor(SIZES.smallFiles / count);
  return Array.from({ length: count }, (_, i) => smallFilePath(i * step + (offset % step)));
}

/** New random contents for `paths` under `root`, of the sizes they have now (made before any timing). */
function newContents(root: string, paths: string[], seed: string): Buffer[] {
  const stream = new ByteStream(seed);
  return paths.map((p) => stream.next(statSync(join(root, p)).size));
}

/** Rewrites `paths` under `root` with new random bytes of the same sizes. */
function rewriteFiles(root: string, paths: string[], seed: string): void {
  const data = newContents(root, paths, seed);
  paths.forEach((p, i) => {
    writeFileSync(join(root, p), data[i] as Buffer);
  });
}

/** Applies an edit scenario's change to SRC (untimed). Returns what it did. */
function applyChange(src: string, scenario: ScenarioId, round: number): string {
  switch (scenario) {
    case "big-flip":
      return flipBigFile(src, BIG);
    case "big-insert":
      return insertIntoBigFile(src, BIG, INSERT_BYTES, `insert-${round}`);
    case "small-edit": {
      const paths = spreadFiles(CHANGED_FILES, 37);
      rewriteFiles(src, paths, `small-edit-${round}`);
      return `rewrote ${paths.length} files with new bytes of the same sizes (${paths[0]}, …)`;
    }
    default:
      throw new Error(`${scenario} changes nothing`);
  }
}

// ---------------------------------------------------------------- push groups

async function keepwatchServer(dir: string): Promise<{ server: KwServer; proxy: CountingProxy }> {
  const server = await startKwServer(
    join(dir, "kw-dest"),
    join(dir, "kw-server.jsonl"),
    join(dir, "kw-config"),
  );
  return { server, proxy: await CountingProxy.start(server.port) };
}

/** One round of a group of push scenarios: fresh destinations, then its scenarios in order. */
async function pushGroup(group: Group, source: string, work: string, peers: Peers, round: number) {
  const ids = SCENARIO_IDS.filter((id) => groupOf(id) === group);
  const edits = ids.slice(1).filter(selected);
  if (!selected(ids[0] as ScenarioId) && edits.length === 0) return;
  const dir = join(work, `${group}-r${round}`);
  mkdirSync(dir);
  const set = group;
  // Edits change SRC: they get a copy of the data set of their own.
  const src = edits.length > 0 ? join(dir, set) : source;
  console.log(`\n${group}, run ${round}/${OPTIONS.runs}: fresh destinations in ${dir}`);
  if (edits.length > 0) {
    const t0 = performance.now();
    copyTree(source, src);
    console.log(`  SRC: a copy of the data set (${fmt((performance.now() - t0) / 1000, 1)} s, untimed)`);
  }
  const { server, proxy } = await keepwatchServer(dir);
  const module = `${group}-r${round}`;
  const d: Destinations = {
    dir,
    src,
    set,
    server,
    kwProxy: proxy,
    kwDest: join(dir, "kw-dest"),
    stateDir: join(dir, "kw-state"),
    rsyncModule: module,
    rsyncDest: peers.rsync?.modules.get(module) ?? "",
    resticRepo: join(dir, "restic-repo"),
  };
  try {
    if (peers.restic) resticInit(d.resticRepo, peers.restic.env);
    for (const id of ids) {
      const isInitial = id === ids[0];
      if (!isInitial && !selected(id)) continue;
      if (!isInitial) console.log(`  ${id}: ${applyChange(src, id, round)}`);
      else if (!selected(id)) console.log(`  setup (untimed): initial backups; load average ${loadLine()}`);
      await allTools(d, peers, id, round, selected(id));
    }
  } finally {
    await stop(server.child);
    await proxy.close();
  }
}

// ---------------------------------------------------------------- the watching client

interface Watch {
  src: string;
  mirror: string;
  server: KwServer;
  proxy: CountingProxy;
  client: Child;
  lines: EventLines;
}

/** What both watching-client scenarios record: the mirror checked for `paths`, the peaks as of now. */
function watchRecord(w: Watch, scenario: ScenarioId, round: number, prep: Prep, paths: string[]) {
  const differences = paths.filter((p) => {
    try {
      return !sameContent(join(w.src, p), join(w.mirror, p));
    } catch {
      return true;
    }
  });
  return {
    tool: "keepwatch" as const,
    scenario,
    round,
    prep,
    exitCode: 0,
    differences: differences.map((p) => `${p} differs in the mirror`),
    clientHwmMiB: peakRssMiB(w.client.pid),
    serverHwmMiB: peakRssMiB(w.server.child.pid),
  };
}

/** watch-10: 10 files rewritten at once; last write → last acknowledgement. */
async function watchBurst(w: Watch, round: number): Promise<void> {
  const label = `keepwatch watch-10 r${round}`;
  const prep = await preparer.prepare(label);
  const resets = resetPeakRss(w.client.pid) && resetPeakRss(w.server.child.pid);
  const paths = spreadFiles(CHANGED_FILES, 1059);
  const data = newContents(w.src, paths, `watch-10-${round}`);
  const before = w.proxy.counts();
  const acks = paths.map((p) => w.lines.waitForPut(p, ACK_TIMEOUT_MS));
  const tFirst = performance.now();
  paths.forEach((p, i) => {
    writeFileSync(join(w.src, p), data[i] as Buffer);
  });
  const tLast = performance.now();
  const times = await Promise.all(acks);
  // The connection stays open: its bytes so far, without waiting for it to close.
  const wire = await wireSince(w.proxy, before, 0);
  const acked = times.filter((t): t is number => t !== null);
  const missed = times.length - acked.length;
  const ackS = missed === 0 ? (Math.max(...acked) - tLast) / 1000 : Number.NaN;
  preparer.checkAfter(label, prep);
  const record: RunRecord = {
    ...watchRecord(w, "watch-10", round, prep, paths),
    ackS,
    missedAcks: missed,
    wire,
    wireBytes: wire.total,
    detail: {
      writesS: (tLast - tFirst) / 1000,
      perFileAckS: times.map((t) => (t === null ? null : (t - tLast) / 1000)),
      hwmReset: resets,
    },
  };
  records.push(record);
  logRun(
    label,
    true,
    `${acked.length}/${paths.length} acknowledged, the last ${fmt(ackS * 1000, 0)} ms after the last write ` +
      `(the ${paths.length} writes took ${fmt((tLast - tFirst) * 1000, 0)} µs); ${fmtWire(wire)}; peak RSS client ` +
      `${fmt(record.clientHwmMiB ?? Number.NaN, 0)} MiB, server ${fmt(record.serverHwmMiB ?? Number.NaN, 0)} MiB; ` +
      `mirror ${copyState(record.differences)}`,
  );
}

/** watch-latency: files rewritten one after another, each once the previous one is acknowledged. */
async function watchLatency(w: Watch, round: number): Promise<void> {
  const label = `keepwatch watch-latency r${round}`;
  const prep = await preparer.prepare(label);
  const resets = resetPeakRss(w.client.pid) && resetPeakRss(w.server.child.pid);
  const paths = spreadFiles(SIZES.latencyEdits, 113);
  const data = newContents(w.src, paths, `watch-latency-${round}`);
  const latencies: number[] = [];
  let missed = 0;
  for (const [i, path] of paths.entries()) {
    const acked = w.lines.waitForPut(path, ACK_TIMEOUT_MS);
    const t0 = performance.now();
    writeFileSync(join(w.src, path), data[i] as Buffer);
    const t1 = await acked;
    if (t1 === null) {
      missed++;
      console.log(`    warning: no acknowledgement of ${path} within ${ACK_TIMEOUT_MS} ms`);
    } else latencies.push(t1 - t0);
    await sleep(EDIT_GAP_MS);
  }
  preparer.checkAfter(label, prep);
  const record: RunRecord = {
    ...watchRecord(w, "watch-latency", round, prep, paths),
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    latenciesMs: latencies,
    missedAcks: missed,
    detail: { hwmReset: resets, maxMs: Math.max(...latencies), minMs: Math.min(...latencies) },
  };
  records.push(record);
  logRun(
    label,
    true,
    `${latencies.length}/${paths.length} acknowledged: p50 ${fmt(record.p50Ms ?? Number.NaN, 1)} ms, ` +
      `p99 ${fmt(record.p99Ms ?? Number.NaN, 1)} ms, min ${fmt(Math.min(...latencies), 1)} ms, max ` +
      `${fmt(Math.max(...latencies), 1)} ms; peak RSS client ${fmt(record.clientHwmMiB ?? Number.NaN, 0)} MiB, ` +
      `server ${fmt(record.serverHwmMiB ?? Number.NaN, 0)} MiB; mirror ${copyState(record.differences)}`,
  );
}

/** Peak RSS of the watching client and its server over their initial sync, per round. */
const initialSyncs: { round: number; seconds: number; clientHwmMiB: number; serverHwmMiB: number }[] = [];

async function watchGroup(source: string, work: string, round: number): Promise<void> {
  if (!selected("watch-10") && !selected("watch-latency")) return;
  const dir = join(work, `watch-r${round}`);
  mkdirSync(dir);
  const src = join(dir, "small");
  console.log(`\nwatch, run ${round}/${OPTIONS.runs}: fresh destinations in ${dir}`);
  copyTree(source, src);
  ensureCliCompiled();
  const { server, proxy } = await keepwatchServer(dir);
  const connection = kwConnection(server, proxy.port);
  const t0 = performance.now();
  const client = startCli(
    ["client", src, ...connection.args, "--json", "--state-dir", join(dir, "kw-state")],
    { env: connection.env },
  );
  const lines = new EventLines(client);
  try {
    const idle = await lines.waitFor((e) => e.event === "idle", IDLE_TIMEOUT_MS);
    if (idle === null) throw new Error(`the watching client never reported idle: ${client.stderr()}`);
    const sync = {
      round,
      seconds: (idle - t0) / 1000,
      clientHwmMiB: peakRssMiB(client.pid),
      serverHwmMiB: peakRssMiB(server.child.pid),
    };
    initialSyncs.push(sync);
    console.log(
      `  setup (untimed): client started and idle after its initial sync in ${fmt(sync.seconds, 2)} s; peak RSS ` +
        `so far client ${fmt(sync.clientHwmMiB, 0)} MiB, server ${fmt(sync.serverHwmMiB, 0)} MiB`,
    );
    const w: Watch = { src, mirror: join(dir, "kw-dest", "small"), server, proxy, client, lines };
    if (selected("watch-10")) await watchBurst(w, round);
    if (selected("watch-latency")) await watchLatency(w, round);
  } finally {
    lines.close();
    await stop(client);
    await stop(server.child);
    await proxy.close();
  }
}

// ---------------------------------------------------------------- results

type Figures = Partial<Record<Metric | "clientHwmMiB" | "serverHwmMiB", Summary>>;

function figuresOf(tool: Tool, scenario: ScenarioId): Figures | null {
  const runs = records.filter((r) => r.tool === tool && r.scenario === scenario);
  if (runs.length === 0) return null;
  const figures: Figures = {};
  for (const key of [
    "wallS",
    "wireBytes",
    "ackS",
    "p50Ms",
    "p99Ms",
    "clientHwmMiB",
    "serverHwmMiB",
  ] as const) {
    const values = runs.map((r) => r[key]).filter((v): v is number => typeof v === "number");
    if (values.length > 0) figures[key] = summarize(values);
  }
  return figures;
}

interface TargetResult extends Target {
  value: number;
  pass: boolean | null;
  /** why there is no verdict */
  note?: string;
}

function evaluate(
  target: Target,
  kw: Figures | null,
  peer: Figures | null,
  missing: Set<Peer>,
): TargetResult {
  const mine = kw?.[target.metric]?.median ?? Number.NaN;
  if (target.peer && missing.has(target.peer))
    return { ...target, value: Number.NaN, pass: null, note: `${target.peer} missing` };
  const value = target.peer ? mine / (peer?.[target.metric]?.median ?? Number.NaN) : mine;
  return Number.isFinite(value)
    ? { ...target, value, pass: value <= target.max }
    : { ...target, value, pass: null, note: "no figure" };
}

function verdict(t: TargetResult): string {
  const what = t.peer ? `${t.metric === "wallS" ? "time" : "bytes"} ${t.text}` : t.text;
  return `${what}: ${t.pass === null ? `n/a (${t.note})` : t.pass ? "pass" : "MISS"}`;
}

function cell(s: Summary | undefined, format: (v: number) => string): string {
  if (!s) return "—";
  return s.min === s.max ? format(s.median) : `${format(s.median)} (${format(s.min)}–${format(s.max)})`;
}

const secs = (v: number) => `${fmt(v, 2)} s`;
const ms = (v: number) => `${fmt(v, 1)} ms`;
const bytes = (v: number) => (v < 10_000 ? `${fmtInt(v)} B` : humanBytes(v));

function ratio(a: Summary | undefined, b: Summary | undefined): string {
  return a && b ? fmt(a.median / b.median, 2) : "—";
}

function report(missing: Set<Peer>) {
  const scenarios = SCENARIO_IDS.filter(selected).map((id) => {
    const kw = figuresOf("keepwatch", id);
    const rsync = figuresOf("rsync", id);
    const restic = figuresOf("restic", id);
    const targets = (TARGETS[id] ?? []).map((t) =>
      evaluate(t, kw, t.peer === "restic" ? restic : rsync, missing),
    );
    const rss = (["clientHwmMiB", "serverHwmMiB"] as const).map((key) => {
      const s = kw?.[key];
      const pass = s ? s.max <= RSS_LIMIT_MIB : null;
      return { process: key === "clientHwmMiB" ? "client" : "server", max: s?.max ?? Number.NaN, pass };
    });
    return { id, label: LABELS[id], figures: { keepwatch: kw, rsync, restic }, targets, rss };
  });

  const peerCell = (peer: Peer, s: Summary | undefined, format: (v: number) => string, applies = true) =>
    !applies ? "—" : missing.has(peer) ? "missing" : cell(s, format);
  const ratioCell = (peer: Peer, a: Summary | undefined, b: Summary | undefined, applies = true) =>
    !applies ? "—" : missing.has(peer) ? "missing" : ratio(a, b);
  const rows: string[][] = [];
  for (const s of scenarios) {
    const { keepwatch: kw, rsync, restic } = s.figures;
    const verdicts = (metric: Metric) =>
      s.targets
        .filter((t) => t.metric === metric)
        .map(verdict)
        .join("; ");
    if (groupOf(s.id) !== "watch") {
      rows.push([
        s.label,
        "wall time",
        cell(kw?.wallS, secs),
        peerCell("rsync", rsync?.wallS, secs),
        peerCell("restic", restic?.wallS, secs),
        ratioCell("rsync", kw?.wallS, rsync?.wallS),
        ratioCell("restic", kw?.wallS, restic?.wallS),
        verdicts("wallS") || "(for information)",
      ]);
      rows.push([
        "",
        "bytes on the wire",
        cell(kw?.wireBytes, bytes),
        peerCell("rsync", rsync?.wireBytes, bytes),
        "— (local repo)",
        ratioCell("rsync", kw?.wireBytes, rsync?.wireBytes),
        "—",
        verdicts("wireBytes") || "(for information)",
      ]);
    } else if (s.id === "watch-10") {
      rows.push([
        s.label,
        "last write → all acked",
        cell(kw?.ackS, secs),
        "—",
        "—",
        "—",
        "—",
        verdicts("ackS"),
      ]);
      rows.push([
        "",
        "bytes on the wire",
        cell(kw?.wireBytes, bytes),
        "—",
        "—",
        "—",
        "—",
        "(for information)",
      ]);
    } else {
      rows.push([s.label, "write → ack, p50", cell(kw?.p50Ms, ms), "—", "—", "—", "—", verdicts("p50Ms")]);
      rows.push(["", "write → ack, p99", cell(kw?.p99Ms, ms), "—", "—", "—", "—", verdicts("p99Ms")]);
    }
    const rssCell = `${cell(kw?.clientHwmMiB, (v) => fmt(v, 0))} / ${cell(kw?.serverHwmMiB, (v) => fmt(v, 0))} MiB`;
    const rssOk = s.rss.every((r) => r.pass === true);
    const rssNa = s.rss.some((r) => r.pass === null);
    rows.push([
      "",
      "peak RSS client / server",
      rssCell,
      "",
      "",
      "",
      "",
      `≤ ${RSS_LIMIT_MIB} MiB each (every run): ${rssNa ? "n/a" : rssOk ? "pass" : "MISS"}`,
    ]);
  }
  if (initialSyncs.length > 0) {
    const client = summarize(initialSyncs.map((s) => s.clientHwmMiB));
    const server = summarize(initialSyncs.map((s) => s.serverHwmMiB));
    const pass = client.max <= RSS_LIMIT_MIB && server.max <= RSS_LIMIT_MIB;
    rows.push([
      `watching client: initial sync of ${fmtInt(SIZES.smallFiles)} files (setup)`,
      "peak RSS client / server",
      `${cell(client, (v) => fmt(v, 0))} / ${cell(server, (v) => fmt(v, 0))} MiB`,
      "",
      "",
      "",
      "",
      `≤ ${RSS_LIMIT_MIB} MiB each: ${pass ? "pass" : "MISS"}`,
    ]);
  }
  return { scenarios, rows };
}

// ---------------------------------------------------------------- main

function dataSets() {
  const need = (group: Group) => SCENARIO_IDS.some((id) => selected(id) && groupOf(id) === group);
  const sets: { big?: string; small?: string; mixed?: string } = {};
  const info: Record<string, unknown> = {};
  const make = (
    name: "big" | "small" | "mixed",
    params: Record<string, unknown>,
    generate: (dir: string) => Record<string, unknown>,
  ) => {
    const t0 = performance.now();
    const made = cachedDataSet(DATA_ROOT, name, { ...params, generator: 1 }, generate);
    const took = fmt((performance.now() - t0) / 1000, 1);
    const t1 = performance.now();
    readTree(made.dir);
    console.log(
      `  ${name}: ${made.dir} (${made.reused ? "reused" : `generated in ${took} s`}; ${JSON.stringify(made.info)}; ` +
        `read once into the page cache in ${fmt((performance.now() - t1) / 1000, 1)} s)`,
    );
    sets[name] = made.dir;
    info[name] = { dir: made.dir, reused: made.reused, ...made.info };
  };
  if (need("big"))
    make("big", { bytes: SIZES.bigBytes, seed: "bench-big" }, (dir) => {
      writeBigFile(join(dir, BIG), SIZES.bigBytes, "bench-big");
      return { files: 1, bytes: SIZES.bigBytes };
    });
  if (need("small") || need("watch"))
    make("small", { files: SIZES.smallFiles, seed: "bench-small" }, (dir) => ({
      files: SIZES.smallFiles,
      bytes: writeSmallTree(dir, SIZES.smallFiles, "bench-small"),
    }));
  if (need("mixed"))
    make("mixed", { bytes: SIZES.mixedBytes, seed: "bench-mixed" }, (dir) => ({
      ...writeMixedTree(dir, SIZES.mixedBytes, "bench-mixed"),
    }));
  syncDisks();
  return { sets, info };
}

/** Free space needed in /tmp: per run a copy of SRC and up to three copies at the destinations. */
function neededBytes(): number {
  const small = SIZES.smallFiles * 9 * 1024;
  let perRun = 0;
  if (SCENARIO_IDS.some((id) => selected(id) && groupOf(id) === "big")) perRun += 6 * SIZES.bigBytes;
  if (SCENARIO_IDS.some((id) => selected(id) && groupOf(id) === "small")) perRun += 5 * small;
  if (selected("mixed-initial")) perRun += 4 * SIZES.mixedBytes;
  if (selected("watch-10") || selected("watch-latency")) perRun += 3 * small;
  return OPTIONS.runs * perRun + 1 * GiB;
}

async function main(): Promise<void> {
  const started = new Date();
  console.log(
    `keepwatch vs rsync vs restic${OPTIONS.quick ? " (--quick: reduced sizes; the targets are set for the full sizes)" : ""}`,
  );
  console.log(machineLine());
  const git = gitDescribe();
  console.log(
    `keepwatch: run as node ${[...cliNodeOptions(), "dist/cli/main.js"].join(" ")} (built from the working tree); ${codeLine(git)}`,
  );
  const versions: Record<Tool, string> = {
    keepwatch: `git ${git.head}`,
    rsync: "missing",
    restic: "missing",
  };
  const missing = new Set<Peer>();
  for (const peer of PEERS) {
    const path = findTool(peer);
    if (path) versions[peer] = firstLine(peer, peer === "rsync" ? ["--version"] : ["version"]);
    else missing.add(peer);
    console.log(`${peer}: ${path ? `${path}, ${versions[peer]}` : "missing"}`);
  }
  const installHint = `apt-get install ${[...missing].join(" ")}`;
  if (missing.size > 0) {
    console.log(
      `${[...missing].join(" and ")} ${missing.size > 1 ? "are" : "is"} not installed (this script installs nothing): ` +
        `${missing.size > 1 ? "their" : "its"} columns read "missing"; keepwatch is measured all the same. ` +
        `Install with: ${installHint}${missing.size === 1 ? " (both peers: apt-get install rsync restic)" : ""}`,
    );
  }
  console.log(
    `scenarios: ${SCENARIO_IDS.filter(selected).join(", ")}; ${OPTIONS.runs} timed run(s) per tool and scenario`,
  );

  checkFreeSpace("/tmp", neededBytes());

  console.log(`\ndata sets (in ${DATA_ROOT}, kept for later runs):`);
  const data = dataSets();

  const work = mkdtempSync("/tmp/kw-bench-");
  console.log(`run folder: ${work}${OPTIONS.keep ? " (kept: --keep)" : " (removed after all timed runs)"}`);
  onInterrupt(() => {
    if (!OPTIONS.keep) rmSync(work, { recursive: true, force: true });
  });

  const peers: Peers = { rsync: null, restic: null };
  try {
    const cli = measureCliStartup();
    const cliStartup = cli.wallS;
    const startupRssMiB = cli.rssMiB;
    console.log(
      `keepwatch CLI start-up alone (--version, 3 runs): ${fmt(cliStartup.median, 2)} s (${fmt(cliStartup.min, 2)}–` +
        `${fmt(cliStartup.max, 2)})${Number.isFinite(startupRssMiB) ? `, max RSS ${fmt(startupRssMiB, 0)} MiB (/usr/bin/time)` : ""}`,
    );

    const pushGroups = (["big", "small", "mixed"] as const).filter((g) =>
      SCENARIO_IDS.some((id) => selected(id) && groupOf(id) === g),
    );
    if (!missing.has("rsync") && pushGroups.length > 0) {
      const modules = new Map<string, string>();
      for (const g of pushGroups)
        for (let r = 1; r <= OPTIONS.runs; r++) modules.set(`${g}-r${r}`, join(work, "rsync", `${g}-r${r}`));
      const daemon = await startRsyncDaemon(work, modules);
      const proxy = await CountingProxy.start(daemon.port);
      peers.rsync = { daemon, proxy, modules };
      console.log(
        `rsync daemon on ${HOST}:${daemon.port} (config ${daemon.configFile}); counting proxy ${HOST}:${proxy.port}`,
      );
    }
    if (!missing.has("restic")) peers.restic = { env: resticEnv(join(work, "restic-cache")) };

    const t0 = performance.now();
    for (const group of pushGroups) {
      const source = data.sets[group] as string;
      for (let round = 1; round <= OPTIONS.runs; round++) await pushGroup(group, source, work, peers, round);
    }
    if (data.sets.small && (selected("watch-10") || selected("watch-latency"))) {
      for (let round = 1; round <= OPTIONS.runs; round++) await watchGroup(data.sets.small, work, round);
    }
    const runsS = (performance.now() - t0) / 1000;
    console.log(`\nall runs took ${fmt(runsS, 0)} s`);

    const { scenarios, rows } = report(missing);
    console.log(
      `\nresults: median of ${OPTIONS.runs} timed run(s) per tool (min–max); loopback, through counting proxies; page cache warm` +
        `${OPTIONS.quick ? "; --quick sizes, targets set for the full sizes" : ""}`,
    );
    printTable(
      ["scenario", "measure", "keepwatch", "rsync", "restic", "kw/rsync", "kw/restic", "target: result"],
      rows,
    );
    const failures = records.filter(failed);
    const contended = records.filter((r) => !r.prep.quiet).length;
    const changed = records.filter((r) => r.prep.sourceChanged).length;
    console.log(
      `notes: keepwatch's wall times include Node start-up (${fmt(cliStartup.median, 2)} s alone), its peak ` +
        `RSS what Node and its modules take before any work (${fmt(startupRssMiB, 0)} MiB for --version). ` +
        "Wall time is spawn → exit; for keepwatch, exit comes once the server acknowledged everything. Bytes: TCP " +
        "payload both ways through the proxy (IP/TCP headers excluded). Peak RSS: VmHWM, of the push while it ran " +
        "(sampled every 50 ms) and of the server (and watching client) over the scenario (reset with clear_refs " +
        `before it, read before the next). restic needs no network: its bytes column reads "—".`,
    );
    for (const r of failures)
      console.log(
        `warning: ${r.tool} ${r.scenario} r${r.round} failed (exit ${r.exitCode}` +
          `${r.missedAcks ? `, ${r.missedAcks} not acknowledged` : ""}${r.differences.length ? `, ${r.differences.length} difference(s)` : ""})`,
      );
    if (contended > 0)
      console.log(`warning: ${contended} run(s) started while other work kept the machine busy`);
    if (changed > 0) console.log(`warning: the sources changed before or during ${changed} run(s)`);
    if (missing.size > 0) console.log(`missing: ${[...missing].join(", ")} — install with: ${installHint}`);

    const results = {
      date: started.toISOString(),
      git,
      sourceFingerprint: preparer.firstSourceFingerprint,
      options: { ...OPTIONS, only: [...OPTIONS.only] },
      sizes: SIZES,
      machine: machineInfo(),
      versions,
      missing: [...missing],
      installHint: missing.size > 0 ? installHint : undefined,
      dataSets: data.info,
      method: {
        prep: preparer.describe(),
        keepwatch:
          "server: keepwatch server DEST 127.0.0.1 --port 0 --json (fresh DEST and KEEPWATCH_CONFIG_DIR per run); " +
          "push: keepwatch push SRC 127.0.0.1 --port PROXY --fingerprint FP --json --state-dir STATE with " +
          "KEEPWATCH_SECRET set to the server's local-access secret (the client looks that file up by the port it " +
          "connects to, here the proxy's); watching client: keepwatch client SRC … --json, ack = its file-done " +
          "(op put) line for the path arriving in the bench process",
        rsync:
          "rsync -a --delete --stats SRC/ rsync://127.0.0.1:PROXY/MODULE/ to `rsync --daemon --no-detach` (use chroot = no)",
        restic:
          "restic -r REPO backup -q --json SRC (RESTIC_PASSWORD and RESTIC_CACHE_DIR set; init untimed)",
      },
      cliStartupS: cliStartup,
      cliStartupRssMiB: startupRssMiB,
      runsSeconds: runsS,
      scenarios,
      watchingClientInitialSync: initialSyncs,
      failedRuns: failures.length,
      contendedRuns: contended,
      sourceChangedRuns: changed,
      runs: records,
      setups,
    };
    mkdirSync(dirname(OUT), { recursive: true });
    writeFileSync(OUT, `${JSON.stringify(results, null, 2)}\n`);
    console.log(`\nJSON: ${OUT}`);
  } finally {
    if (peers.rsync) {
      await stop(peers.rsync.daemon.child);
      await peers.rsync.proxy.close();
    }
    killAll();
    if (!OPTIONS.keep) removeRunFolder(work);
  }
}

main().catch((error) => {
  killAll();
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
