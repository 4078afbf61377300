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
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { CountingProxy, type Wire } from "./counting-proxy.js";
import { compareTrees, flipBigFile, insertIntoBigFile, writeBigFile } from "./data.js";
import { type KwServer, type PushPhases, runPush, startKwServer } from "./keepwatch.js";
import {
  CLK_TCK,
  checkFreeSpace,
  codeLine,
  fmt,
  fmtInt,
  fmtSummary,
  GiB,
  gitDescribe,
  HOST,
  humanBytes,
  killAll,
  MiB,
  machineInfo,
  machineLine,
  median,
  printTable,
  ROOT,
  removeRunFolder,
  type Summary,
  summarize,
  syncDisks,
} from "./lib.js";
import {
  findTool,
  firstLine,
  type RsyncDaemon,
  type RsyncStats,
  runRsync,
  startRsyncDaemon,
} from "./peers.js";
import { measureCliStartup, onInterrupt, stop } from "./processes.js";
import { type Prep, RunPreparer } from "./run-prep.js";

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
const prep = new RunPreparer({ noWait: NO_WAIT, indent: "    " });
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

/** A byte count in bytes, with min–max when the rounds differ. */
function fmtBytesSummary(s: Summary): string {
  const base = `${fmtInt(s.median)} B`;
  return s.min === s.max ? base : `${base} (${fmtInt(s.min)}–${fmtInt(s.max)})`;
}

// ---------------------------------------------------------------- rsync

/** Finds rsync, installing it with apt-get if absent. Returns a note for the output. */
function ensureRsync(): string {
  let path = findTool("rsync");
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
  path = findTool("rsync");
  if (!path) throw new Error("rsync is not installed and `apt-get install -y rsync` did not install it");
  return `${note} (${path})`;
}

// ---------------------------------------------------------------- one run of each tool

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
  phases: PushPhases;
  /** CPU seconds (user + sys) of the push, and of the server while the push ran */
  cpu: { clientS: number; serverS: number };
  verified: string[];
}

async function kwPush(
  work: string,
  src: string,
  stateDir: string,
  dest: string,
  server: KwServer,
  proxy: CountingProxy,
  scenario: ScenarioId | "initial",
  file: string,
  round: number,
  timed: boolean,
): Promise<KwRun> {
  const label = `keepwatch ${scenario} r${round}`;
  const runPrep = timed ? await prep.prepare(label) : undefined;
  const r = await runPush({
    src,
    stateDir,
    server,
    proxy,
    outFile: join(work, `push-${scenario}-r${round}.jsonl`),
    label,
    timeoutMs: RUN_TIMEOUT_MS,
  });
  if (runPrep) prep.checkAfter(label, runPrep);
  const dones = r.events.filter((e) => e.event === "file-done");
  const filePut = dones.find((e) => e.op === "put" && e.path === file);
  if (!filePut) console.log(`    warning: ${label}: no file-done (put) for ${file}`);
  const set = src.split("/").pop() as string;
  const verified = compareTrees(src, join(dest, set));
  if (verified.length > 0) console.log(`    warning: ${label}: the mirror differs: ${verified.join("; ")}`);
  const run: KwRun = {
    tool: "keepwatch",
    scenario,
    round,
    ...(runPrep ? { prep: runPrep } : {}),
    wallS: r.wallS,
    exitCode: r.exitCode,
    wire: r.wire,
    fileSentBytes: typeof filePut?.sentBytes === "number" ? filePut.sentBytes : Number.NaN,
    totalSentBytes: dones.reduce((n, e) => n + (typeof e.sentBytes === "number" ? e.sentBytes : 0), 0),
    fileDones: dones.map((e) => ({ path: e.path, op: e.op, size: e.size, sentBytes: e.sentBytes })),
    phases: r.phases,
    cpu: r.cpu,
    verified,
  };
  console.log(
    `    [${label}] ${fmt(r.wallS, 2)} s (exit ${r.exitCode}); wire ${fmtInt(r.wire.total)} B ` +
      `(up ${fmtInt(r.wire.up)}, down ${fmtInt(r.wire.down)}, ${r.wire.connections} connection(s)); ` +
      `sentBytes ${file} ${fmtInt(run.fileSentBytes)} (all files ${fmtInt(run.totalSentBytes)}); ` +
      `phases startup ${fmt(run.phases.startupS, 2)} s, scan ${fmt(run.phases.scanS, 2)} s, ` +
      `transfer ${fmt(run.phases.transferS, 2)} s, exit ${fmt(run.phases.exitS, 2)} s; ` +
      `CPU client ${fmt(r.cpu.clientS, 2)} s, server ${fmt(r.cpu.serverS, 2)} s; ` +
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
  daemon: RsyncDaemon,
  scenario: ScenarioId | "initial",
  round: number,
  timed: boolean,
): Promise<RsyncRun> {
  const label = `rsync ${scenario} r${round}`;
  const runPrep = timed ? await prep.prepare(label) : undefined;
  const r = await runRsync(src, module, proxy, daemon, label, RUN_TIMEOUT_MS);
  if (runPrep) prep.checkAfter(label, runPrep);
  const verified = compareTrees(src, dest);
  if (verified.length > 0) console.log(`    warning: ${label}: the copy differs: ${verified.join("; ")}`);
  console.log(
    `    [${label}] ${fmt(r.wallS, 2)} s (exit ${r.exitCode}); wire ${fmtInt(r.wire.total)} B ` +
      `(up ${fmtInt(r.wire.up)}, down ${fmtInt(r.wire.down)}); --stats sent ${fmtInt(r.stats.totalSent)} + ` +
      `received ${fmtInt(r.stats.totalReceived)}, literal ${fmtInt(r.stats.literal)}, matched ${fmtInt(r.stats.matched)}; ` +
      `CPU client ${fmt(r.cpu.clientS, 2)} s, daemon ${fmt(r.cpu.serverS, 2)} s; ` +
      `copy ${verified.length === 0 ? "matches SRC" : "DIFFERS"}`,
  );
  return {
    tool: "rsync",
    scenario,
    round,
    ...(runPrep ? { prep: runPrep } : {}),
    wallS: r.wallS,
    exitCode: r.exitCode,
    wire: r.wire,
    stats: r.stats,
    cpu: r.cpu,
    verified,
  };
}

/** Applies a scenario's change to SRC (untimed). */
function applyChange(src: string, scenario: ScenarioId, round: number): string {
  switch (scenario) {
    case "flip":
      return flipBigFile(src, BIG);
    case "insert":
      return insertIntoBigFile(src, BIG, INSERT_BYTES, `insert-${round}`);
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
  `${prep.quietBusy * 100}% busy for 1 s (at most ${prep.quietWaitS} s), a separate process touching and freeing ` +
  `${humanBytes(prep.warmupBytes)}, the load average printed. After each run the destination is compared with SRC byte ` +
  "for byte (untimed).";

async function main(): Promise<void> {
  const started = new Date();
  console.log(`keepwatch vs rsync: deltas${QUICK ? " (--quick: reduced sizes)" : ""}`);
  console.log(machineLine());
  const rsyncNote = ensureRsync();
  const rsyncVersion = firstLine("rsync", ["--version"]) || "rsync ?";
  console.log(`${rsyncNote}; ${rsyncVersion}`);

  console.log(spawnSync("df", ["-h", "/tmp"], { encoding: "utf8" }).stdout.trimEnd());
  // Per round: SRC, keepwatch's mirror and its chunk packs, rsync's copy plus its temporary file.
  const perRound = (config.bigBytes + 2 * config.midBytes) * 4 + config.bigBytes;
  checkFreeSpace("/tmp", config.bigBytes + config.midBytes + ROUNDS * perRound + 512 * MiB);

  const gitAtStart = gitDescribe();
  console.log(codeLine(gitAtStart));

  const work = mkdtempSync("/tmp/kw-delta-");
  console.log(`data folder: ${work}${KEEP ? " (kept: --keep)" : " (removed at the end)"}`);
  onInterrupt(() => {
    if (!KEEP) rmSync(work, { recursive: true, force: true });
  });

  let daemon: RsyncDaemon | undefined;
  let rsyncProxy: CountingProxy | undefined;
  try {
    const startup = measureCliStartup().wallS;
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
      const server = await startKwServer(
        kwDest,
        join(work, `server-r${round}.jsonl`),
        join(work, `kw-config-r${round}`),
      );
      const kwProxy = await CountingProxy.start(server.port);
      try {
        console.log("  setup (untimed): initial transfer");
        kwRuns.push(await kwPush(work, src, stateDir, kwDest, server, kwProxy, "initial", BIG, round, false));
        rsRuns.push(await rsyncRun(src, `r${round}`, rsDest, rsyncProxy, daemon, "initial", round, false));
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
              server,
              kwProxy,
              scenario.id,
              scenario.file,
              round,
              true,
            ),
          );
          rsRuns.push(await rsyncRun(src, `r${round}`, rsDest, rsyncProxy, daemon, scenario.id, round, true));
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
      sourceFingerprint: prep.firstSourceFingerprint,
      quick: QUICK,
      machine: machineInfo(),
      rsync: { version: rsyncVersion, note: rsyncNote },
      config: {
        ...config,
        noWait: NO_WAIT,
        insertBytes: INSERT_BYTES,
        rounds: ROUNDS,
        warmupBytes: prep.warmupBytes,
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
    if (!KEEP) removeRunFolder(work);
  }
}

main().catch((error) => {
  killAll();
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
