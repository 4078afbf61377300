// Measures the three figures the foundation issue asks for, on this machine, over loopback:
//   1. peak RSS (VmHWM) of client and server while one 2 GiB incompressible file is pushed;
//   2. wall time of one initial push of 20,000 small files (1–16 KiB) plus one 1 GiB file;
//   3. latency from a small file's write to the watching client's `file-done` event.
// It follows /work/shared/BENCHMARKING.md: ~2 GiB of memory is touched and freed in a separate
// process before each timed run, every run gets a fresh destination and state folder, trees
// are deleted only after all timed runs, the load average is printed before each run, and each
// figure is measured 3 times, the figures interleaved (1 2 3 1 2 3 1 2 3).
//
// Run: npx tsx bench/measure-foundation.ts [--quick] [--keep]
//   --quick  smaller sizes (200 MiB, 2,000 files + 100 MiB, 20 edits) for a sanity check
//   --keep   leave the generated data in /tmp/kw-measure-*
// Results: printed, and written as JSON to bench/out/foundation.json.
// Takes about 8 minutes in full. Its clean-up deletes ~80,000 files; wait a few minutes before
// running it again (BENCHMARKING.md pitfall 2: file creation is slow right after mass deletion).

import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { countTree, writeBigFile, writeSmallTree } from "./data.js";
import {
  EventLines,
  type KwServer,
  kwConnection,
  type PushPhases,
  runPush,
  startKwServer,
} from "./keepwatch.js";
import {
  ByteStream,
  checkFreeSpace,
  codeLine,
  fmt,
  fmtSummary,
  GiB,
  gitDescribe,
  humanBytes,
  killAll,
  MiB,
  machineInfo,
  machineLine,
  median,
  parseLines,
  percentile,
  ROOT,
  removeRunFolder,
  sleep,
  summarize,
  syncDisks,
} from "./lib.js";
import { measureCliStartup, onInterrupt, Sampler, startCli, stop } from "./processes.js";
import { type Prep, RunPreparer } from "./run-prep.js";

const OUT = join(ROOT, "bench", "out", "foundation.json");

const args = new Set(process.argv.slice(2));
for (const arg of args) {
  if (arg !== "--quick" && arg !== "--keep") {
    console.error(`unknown argument ${arg}; use --quick and/or --keep`);
    process.exit(2);
  }
}
const QUICK = args.has("--quick");
const KEEP = args.has("--keep");

const config = QUICK
  ? { bigBytes: 200 * MiB, treeFiles: 2_000, treeBigBytes: 100 * MiB, edits: 20, isolatedEdits: 10 }
  : { bigBytes: 2 * GiB, treeFiles: 20_000, treeBigBytes: 1 * GiB, edits: 50, isolatedEdits: 20 };
const ROUNDS = 3;
const QUIET_MS = 30; // the client's default, passed explicitly so the figure states it
const EDIT_SPACING_MS = 100;
/** Over @parcel/watcher's 500 ms: it delivered at once only if its last delivery was older. */
const ISOLATED_SPACING_MS = 600;
const EDIT_TIMEOUT_MS = 15_000;
const SAMPLE_MS = 50;
const RUN_TIMEOUT_MS = 15 * 60_000;
const prep = new RunPreparer();

// ---------------------------------------------------------------- the server

interface Server {
  kw: KwServer;
  sampler: Sampler;
  /** VmHWM right after it reported `listening`: Node + tsx + keepwatch loaded, no work done. */
  idleHwmMiB: number;
}

/** A fresh server (its own config folder) with a sampler of its peak RSS and CPU. */
async function startServer(work: string, name: string): Promise<Server> {
  const kw = await startKwServer(
    join(work, `dest-${name}`),
    join(work, `server-${name}.jsonl`),
    join(work, `config-${name}`),
  );
  const sampler = new Sampler(kw.child.pid, SAMPLE_MS);
  return { kw, sampler, idleHwmMiB: sampler.hwmMiB };
}

// ---------------------------------------------------------------- figures 1 and 2: one push

interface PushRun extends Prep {
  round: number;
  wallS: number;
  exitCode: number | null;
  clientHwmMiB: number;
  serverHwmMiB: number;
  serverIdleHwmMiB: number;
  clientCpuS: number;
  serverCpuS: number;
  clientSysS: number;
  serverSysS: number;
  sampleCount: number;
  /** from the push's own JSON event times (ms resolution) */
  phases: PushPhases;
  /** first server file-start to last server file-done */
  serverActiveS: number;
  filesAcked: number;
  destFiles: number;
  destBytes: number;
  mibPerS: number;
}

async function timedPush(label: string, work: string, src: string, round: number): Promise<PushRun> {
  const dest = join(work, `dest-${label}-r${round}`);
  const runPrep = await prep.prepare(`${label} run ${round}`);
  const server = await startServer(work, `${label}-r${round}`);
  try {
    const r = await runPush({
      src,
      stateDir: join(work, `state-${label}-r${round}`),
      server: server.kw,
      outFile: join(work, `push-${label}-r${round}.jsonl`),
      label: `${label} run ${round}`,
      timeoutMs: RUN_TIMEOUT_MS,
    });
    server.sampler.read(); // the server's peak and CPU, read before stopping it
    server.sampler.stop();

    const dones = r.events.filter((e) => e.event === "file-done");
    const serverEvents = parseLines(readFileSync(server.kw.outFile, "utf8"));
    const serverStarts = serverEvents.filter((e) => e.event === "file-start").map((e) => Date.parse(e.time));
    const serverDones = serverEvents.filter((e) => e.event === "file-done").map((e) => Date.parse(e.time));
    const serverActiveS =
      serverStarts.length > 0 && serverDones.length > 0
        ? (Math.max(...serverDones) - Math.min(...serverStarts)) / 1000
        : Number.NaN;
    const srcTree = countTree(src);
    const set = src.split("/").pop() as string;
    const destTree = existsSync(join(dest, set)) ? countTree(join(dest, set)) : { files: 0, bytes: 0 };
    if (destTree.files !== srcTree.files || destTree.bytes !== srcTree.bytes) {
      console.log(
        `  warning: the mirror holds ${destTree.files} files / ${destTree.bytes} bytes, the source ${srcTree.files} / ${srcTree.bytes}`,
      );
    }
    prep.checkAfter(`${label} run ${round}`, runPrep);
    const run: PushRun = {
      round,
      ...runPrep,
      wallS: r.wallS,
      exitCode: r.exitCode,
      clientHwmMiB: r.client.hwmMiB,
      serverHwmMiB: server.sampler.hwmMiB,
      serverIdleHwmMiB: server.idleHwmMiB,
      clientCpuS: r.client.userS + r.client.sysS,
      serverCpuS: server.sampler.cpuS,
      clientSysS: r.client.sysS,
      serverSysS: server.sampler.sysS,
      sampleCount: r.client.samples,
      phases: r.phases,
      serverActiveS,
      filesAcked: dones.filter((e) => e.op === "put").length,
      destFiles: destTree.files,
      destBytes: destTree.bytes,
      mibPerS: srcTree.bytes / MiB / r.wallS,
    };
    console.log(
      `  [${label} run ${round}] push ${fmt(r.wallS, 2)} s (exit ${r.exitCode}), ${fmt(run.mibPerS, 0)} MiB/s; ` +
        `peak RSS client ${fmt(run.clientHwmMiB, 0)} MiB, server ${fmt(run.serverHwmMiB, 0)} MiB ` +
        `(server idle ${fmt(run.serverIdleHwmMiB, 0)} MiB); CPU (user+sys) client ${fmt(run.clientCpuS, 2)} s (sys ${fmt(run.clientSysS, 2)}), ` +
        `server ${fmt(run.serverCpuS, 2)} s (sys ${fmt(run.serverSysS, 2)}); ` +
        `phases: startup ${fmt(run.phases.startupS, 2)} s, scan ${fmt(run.phases.scanS, 2)} s, ` +
        `transfer ${fmt(run.phases.transferS, 2)} s, exit ${fmt(run.phases.exitS, 2)} s; ${run.filesAcked} files acknowledged`,
    );
    return run;
  } finally {
    server.sampler.stop();
    await stop(server.kw.child);
  }
}

// ---------------------------------------------------------------- figure 3: change latency

interface EditSeries {
  spacingMs: number;
  /** write → the client's `file-done` line arriving in the bench process */
  latenciesMs: number[];
  /** write → the client's `file-start` line for the path (detection + quiet time + compare) */
  toStartMs: number[];
  /** write → the server's `file-done` (ms resolution, from the server's JSON file) */
  serverCommitMs: number[];
  missed: number;
  medianMs: number;
  p90Ms: number;
  maxMs: number;
  minMs: number;
}

interface LatencyRun extends Prep {
  round: number;
  /** the figure asked for: edits spaced EDIT_SPACING_MS apart */
  burst: EditSeries;
  /** the same, with edits spaced ISOLATED_SPACING_MS apart */
  isolated: EditSeries;
  clientHwmMiB: number;
}

async function latencyRun(work: string, src: string, round: number): Promise<LatencyRun> {
  const runPrep = await prep.prepare(`latency run ${round}`);
  const server = await startServer(work, `latency-r${round}`);
  const connection = kwConnection(server.kw, server.kw.port);
  const client = startCli(
    [
      "client",
      src,
      ...connection.args,
      "--json",
      "--state-dir",
      join(work, `state-latency-r${round}`),
      "--quiet-ms",
      String(QUIET_MS),
    ],
    { env: connection.env },
  );
  const sampler = new Sampler(client.pid, SAMPLE_MS);
  const lines = new EventLines(client);
  const waitFor = lines.waitFor.bind(lines);

  const content = new ByteStream(`latency-${round}`);
  const writes: { path: string; epochMs: number; series: string }[] = [];
  const series = async (prefix: string, count: number, spacingMs: number): Promise<EditSeries> => {
    const latencies: number[] = [];
    const toStart: number[] = [];
    let missed = 0;
    for (let i = 0; i < count; i++) {
      const name = `${prefix}-${String(i).padStart(3, "0")}.txt`;
      const data = content.next(512);
      const started = waitFor((e) => e.event === "file-start" && e.path === name, EDIT_TIMEOUT_MS);
      const acked = lines.waitForPut(name, EDIT_TIMEOUT_MS);
      const epochMs = Date.now();
      const t0 = performance.now();
      writeFileSync(join(src, name), data);
      writes.push({ path: name, epochMs, series: prefix });
      const t1 = await acked;
      const ts = await started;
      if (t1 === null) {
        missed++;
        console.log(`  warning: no file-done for ${name} within ${EDIT_TIMEOUT_MS} ms`);
      } else {
        latencies.push(t1 - t0);
        if (ts !== null) toStart.push(ts - t0);
      }
      const elapsed = performance.now() - t0;
      await sleep(Math.max(10, spacingMs - elapsed));
    }
    return {
      spacingMs,
      latenciesMs: latencies,
      toStartMs: toStart,
      serverCommitMs: [],
      missed,
      medianMs: median(latencies),
      p90Ms: percentile(latencies, 90),
      maxMs: Math.max(...latencies),
      minMs: Math.min(...latencies),
    };
  };

  try {
    if ((await waitFor((e) => e.event === "idle", 60_000)) === null) {
      throw new Error(`the client never reported idle: ${client.stderr()}`);
    }
    const burst = await series("edit", config.edits, EDIT_SPACING_MS);
    await sleep(ISOLATED_SPACING_MS);
    const isolated = await series("lone", config.isolatedEdits, ISOLATED_SPACING_MS);
    sampler.read();
    await stop(client);
    sampler.stop();
    server.sampler.stop();
    await stop(server.kw.child);
    const serverDone = new Map<string, number>();
    for (const e of parseLines(readFileSync(server.kw.outFile, "utf8"))) {
      if (e.event === "file-done" && e.path && !serverDone.has(e.path))
        serverDone.set(e.path, Date.parse(e.time));
    }
    for (const [prefix, result] of [
      ["edit", burst],
      ["lone", isolated],
    ] as const) {
      result.serverCommitMs = writes
        .filter((w) => w.series === prefix)
        .flatMap((w) => {
          const t = serverDone.get(w.path);
          return t === undefined ? [] : [t - w.epochMs];
        });
    }
    prep.checkAfter(`latency run ${round}`, runPrep);
    const run: LatencyRun = { round, ...runPrep, burst, isolated, clientHwmMiB: sampler.hwmMiB };
    for (const [label, r] of [
      [`spaced ${EDIT_SPACING_MS} ms`, burst],
      [`spaced ${ISOLATED_SPACING_MS} ms`, isolated],
    ] as const) {
      console.log(
        `  [latency run ${round}] ${label}: ${r.latenciesMs.length}/${r.latenciesMs.length + r.missed} acknowledged: ` +
          `median ${fmt(r.medianMs, 1)} ms, p90 ${fmt(r.p90Ms, 1)} ms, max ${fmt(r.maxMs, 1)} ms, min ${fmt(r.minMs, 1)} ms; ` +
          `write→client file-start median ${fmt(median(r.toStartMs), 1)} ms, write→server commit median ${fmt(median(r.serverCommitMs), 0)} ms`,
      );
    }
    return run;
  } finally {
    lines.close();
    sampler.stop();
    server.sampler.stop();
    await stop(client);
    await stop(server.kw.child);
  }
}

function latencySummary(series: EditSeries[]) {
  const all = series.flatMap((r) => r.latenciesMs);
  return {
    spacingMs: series[0]?.spacingMs,
    medianMs: summarize(series.map((r) => r.medianMs)),
    p90Ms: summarize(series.map((r) => r.p90Ms)),
    maxMs: summarize(series.map((r) => r.maxMs)),
    pooled: {
      n: all.length,
      medianMs: median(all),
      p90Ms: percentile(all, 90),
      maxMs: Math.max(...all),
      minMs: Math.min(...all),
    },
    toStartMedianMs: median(series.flatMap((r) => r.toStartMs)),
    serverCommitMedianMs: median(series.flatMap((r) => r.serverCommitMs)),
    missed: series.reduce((n, r) => n + r.missed, 0),
  };
}

// ---------------------------------------------------------------- main

const METHODS = {
  rss:
    `One folder holding one ${humanBytes(config.bigBytes)} file of AES-128-CTR keystream (incompressible, deterministic, ` +
    "page cache warm). A fresh `keepwatch server DEST 127.0.0.1 --port 0 --json` (stdout to a file), then " +
    "`keepwatch push SRC 127.0.0.1 --port P --json --state-dir FRESH` (stdout to a file), both run as " +
    "`node --import tsx src/cli/main.ts`. A sampler in the bench process reads /proc/<pid>/status VmHWM (peak " +
    `resident set) and /proc/<pid>/stat utime+stime of each every ${SAMPLE_MS} ms; for the push until it exits (last ` +
    "value read kept), for the server once more after the push exited and before SIGTERM. Wall time: spawn of the " +
    "push to its exit (performance.now()), Node and tsx start-up included; throughput = file size / that wall time.",
  tree:
    `${config.treeFiles.toLocaleString("en")} files of 1–16 KiB (uniform sizes, AES-CTR content) in ` +
    `${config.treeFiles / 100} folders of 100 (d<k>/e<j>/), plus one ${humanBytes(config.treeBigBytes)} file, page ` +
    "cache warm. One initial push to a fresh server DEST with a fresh --state-dir; wall time = spawn of the push to its " +
    "exit. Phases come from the push's own JSON event times (ms resolution): start-up = spawn→`connected`, scan = " +
    "`scan-start`→`scan-done`, transfer = `scan-done`→last `file-done`, exit = last `file-done`→process exit. " +
    "CPU seconds of each process from /proc/<pid>/stat, sampled as for figure 1; server active = its first " +
    "`file-start` to its last `file-done`.",
  latency:
    `A fresh server and \`keepwatch client SRC 127.0.0.1 --port P --json --state-dir FRESH --quiet-ms ${QUIET_MS}\` ` +
    "(the default) on a folder of 10 files of 1 KiB; after the client's first `idle` event, " +
    `${config.edits} times: write a new 512-byte file edit-NNN.txt (writeFileSync), time taken with performance.now() ` +
    "just before the write, and again when the client's stdout line `file-done` (op put) for that path arrives in the " +
    `bench process (read as lines); the next write starts ${EDIT_SPACING_MS} ms after the previous one (at least 10 ms ` +
    "after its acknowledgement). Per run: median, p90 (nearest rank), max; the table gives the median of the 3 runs' " +
    "values with min–max, and all edits pooled. Also noted: write → the client's `file-start` line for the path " +
    "(detection + quiet time + comparison), and write → the server's `file-done` (Date.now() vs the server's JSON " +
    `time, 1 ms resolution). Then, with the same client, ${config.isolatedEdits} more edits (lone-NNN.txt) spaced ` +
    `${ISOLATED_SPACING_MS} ms apart, to show whether the spacing matters (with @parcel/watcher, the client's ` +
    "watcher until commit a4f70c1, it did: events were held 50 ms unless the previous delivery was over 500 ms old).",
};

async function main(): Promise<void> {
  const started = new Date();
  console.log(`keepwatch foundation measurements${QUICK ? " (--quick: reduced sizes)" : ""}`);
  console.log(machineLine());
  checkFreeSpace(
    "/tmp",
    config.bigBytes * (1 + ROUNDS) +
      (config.treeBigBytes + config.treeFiles * 9 * 1024) * (1 + ROUNDS) +
      512 * MiB,
  );

  const gitAtStart = gitDescribe();
  console.log(codeLine(gitAtStart));

  const work = mkdtempSync("/tmp/kw-measure-");
  console.log(`data folder: ${work}${KEEP ? " (kept: --keep)" : " (removed at the end)"}`);
  onInterrupt(() => {
    if (!KEEP) rmSync(work, { recursive: true, force: true });
  });

  try {
    // Start-up cost of the CLI alone, for reading the wall times below.
    const cli = measureCliStartup();
    const startup = cli.wallS;
    const startupRssKiB = cli.rssMiB * 1024;
    console.log(
      `CLI start-up (\`node --import tsx src/cli/main.ts --version\`, 3 runs): ${fmtSummary(startup, 2, "s")}` +
        (Number.isFinite(cli.rssMiB) ? `, max RSS ${fmt(cli.rssMiB, 0)} MiB (/usr/bin/time)` : ""),
    );

    // Generate all data before any timed run.
    console.log("\ngenerating data…");
    let t0 = performance.now();
    const bigSrc = join(work, "big");
    mkdirSync(bigSrc);
    writeBigFile(join(bigSrc, "big.bin"), config.bigBytes, "keepwatch-big");
    const treeSrc = join(work, "tree");
    mkdirSync(treeSrc);
    const smallBytes = writeSmallTree(treeSrc, config.treeFiles, "keepwatch-tree");
    writeBigFile(join(treeSrc, "big-1.bin"), config.treeBigBytes, "keepwatch-tree-big");
    const latencySrcs: string[] = [];
    for (let r = 1; r <= ROUNDS; r++) {
      const dir = join(work, `watch-r${r}`);
      mkdirSync(dir);
      const stream = new ByteStream(`watch-${r}`);
      for (let i = 0; i < 10; i++) writeFileSync(join(dir, `seed-${i}.txt`), stream.next(1024));
      latencySrcs.push(dir);
    }
    syncDisks();
    console.log(
      `  ${humanBytes(config.bigBytes)} file; tree of ${config.treeFiles} small files (${humanBytes(smallBytes)}) + ` +
        `${humanBytes(config.treeBigBytes)}; ${ROUNDS} watch folders; ${fmt((performance.now() - t0) / 1000, 1)} s incl. sync`,
    );
    console.log("  all sources are in the page cache (warm) for every run; caches are not dropped.");

    console.log(`\nmethod 1 (peak RSS): ${METHODS.rss}`);
    console.log(`method 2 (tree push): ${METHODS.tree}`);
    console.log(`method 3 (latency): ${METHODS.latency}`);
    console.log(
      `common: ${prep.describe()} ` +
        "Each run has its own fresh DEST, state folder and config folder; nothing is deleted until all runs are done; " +
        `runs are interleaved 1 2 3 × ${ROUNDS}.`,
    );

    const rssRuns: PushRun[] = [];
    const treeRuns: PushRun[] = [];
    const latencyRuns: LatencyRun[] = [];
    t0 = performance.now();
    for (let round = 1; round <= ROUNDS; round++) {
      console.log(`\nround ${round}/${ROUNDS}`);
      rssRuns.push(await timedPush("big", work, bigSrc, round));
      treeRuns.push(await timedPush("tree", work, treeSrc, round));
      latencyRuns.push(await latencyRun(work, latencySrcs[round - 1] as string, round));
    }
    console.log(`\nall timed runs took ${fmt((performance.now() - t0) / 1000, 0)} s`);

    // ------------------------------------------------------------ results
    const s = (runs: PushRun[], pick: (r: PushRun) => number) => summarize(runs.map(pick));
    const results = {
      date: started.toISOString(),
      git: gitAtStart,
      sourceFingerprint: prep.firstSourceFingerprint,
      quick: QUICK,
      machine: machineInfo(),
      config: {
        ...config,
        rounds: ROUNDS,
        quietMs: QUIET_MS,
        sampleMs: SAMPLE_MS,
        warmupBytes: prep.warmupBytes,
      },
      methods: METHODS,
      cliStartup: { wallS: startup, maxRssMiB: startupRssKiB / 1024 },
      peakRss: {
        fileBytes: config.bigBytes,
        clientHwmMiB: s(rssRuns, (r) => r.clientHwmMiB),
        serverHwmMiB: s(rssRuns, (r) => r.serverHwmMiB),
        serverIdleHwmMiB: s(rssRuns, (r) => r.serverIdleHwmMiB),
        pushWallS: s(rssRuns, (r) => r.wallS),
        mibPerS: s(rssRuns, (r) => r.mibPerS),
        transferS: s(rssRuns, (r) => r.phases.transferS),
        transferMibPerS: s(rssRuns, (r) => config.bigBytes / MiB / r.phases.transferS),
        clientCpuS: s(rssRuns, (r) => r.clientCpuS),
        serverCpuS: s(rssRuns, (r) => r.serverCpuS),
        clientSysS: s(rssRuns, (r) => r.clientSysS),
        serverSysS: s(rssRuns, (r) => r.serverSysS),
        runs: rssRuns,
      },
      tree: {
        files: config.treeFiles + 1,
        bytes: smallBytes + config.treeBigBytes,
        pushWallS: s(treeRuns, (r) => r.wallS),
        startupS: s(treeRuns, (r) => r.phases.startupS),
        scanS: s(treeRuns, (r) => r.phases.scanS),
        transferS: s(treeRuns, (r) => r.phases.transferS),
        exitS: s(treeRuns, (r) => r.phases.exitS),
        serverActiveS: s(treeRuns, (r) => r.serverActiveS),
        clientCpuS: s(treeRuns, (r) => r.clientCpuS),
        serverCpuS: s(treeRuns, (r) => r.serverCpuS),
        clientSysS: s(treeRuns, (r) => r.clientSysS),
        serverSysS: s(treeRuns, (r) => r.serverSysS),
        clientHwmMiB: s(treeRuns, (r) => r.clientHwmMiB),
        serverHwmMiB: s(treeRuns, (r) => r.serverHwmMiB),
        runs: treeRuns,
      },
      latency: {
        quietMs: QUIET_MS,
        burst: latencySummary(latencyRuns.map((r) => r.burst)),
        isolated: latencySummary(latencyRuns.map((r) => r.isolated)),
        clientHwmMiB: summarize(latencyRuns.map((r) => r.clientHwmMiB)),
        runs: latencyRuns,
      },
      contendedRuns: [...rssRuns, ...treeRuns, ...latencyRuns].filter((r) => !r.quiet).length,
      sourceChangedRuns: [...rssRuns, ...treeRuns, ...latencyRuns].filter((r) => r.sourceChanged).length,
    };
    const burst = results.latency.burst;
    const isolated = results.latency.isolated;

    const rows: [string, string][] = [
      [
        `1. peak RSS, client (push of ${humanBytes(config.bigBytes)})`,
        fmtSummary(results.peakRss.clientHwmMiB, 0, "MiB"),
      ],
      ["1. peak RSS, server", fmtSummary(results.peakRss.serverHwmMiB, 0, "MiB")],
      ["   server VmHWM when idle after start", fmtSummary(results.peakRss.serverIdleHwmMiB, 0, "MiB")],
      ["1. push wall time", fmtSummary(results.peakRss.pushWallS, 2, "s")],
      ["1. throughput (size / wall)", fmtSummary(results.peakRss.mibPerS, 0, "MiB/s")],
      [
        "   transfer phase (scan-done → ack) and its rate",
        `${fmtSummary(results.peakRss.transferS, 2, "s")}; ${fmt(results.peakRss.transferMibPerS.median, 0)} MiB/s`,
      ],
      [
        "1. CPU user+sys (of it sys): client / server",
        `${fmt(results.peakRss.clientCpuS.median, 2)} (${fmt(results.peakRss.clientSysS.median, 2)}) s / ` +
          `${fmt(results.peakRss.serverCpuS.median, 2)} (${fmt(results.peakRss.serverSysS.median, 2)}) s`,
      ],
      [
        `2. push of ${config.treeFiles.toLocaleString("en")} files + ${humanBytes(config.treeBigBytes)}, wall`,
        fmtSummary(results.tree.pushWallS, 2, "s"),
      ],
      ["   start-up (spawn → connected)", fmtSummary(results.tree.startupS, 2, "s")],
      ["   scan", fmtSummary(results.tree.scanS, 2, "s")],
      ["   transfer (scan-done → last ack)", fmtSummary(results.tree.transferS, 2, "s")],
      ["   exit (last ack → exit)", fmtSummary(results.tree.exitS, 2, "s")],
      ["   server active (first start → last done)", fmtSummary(results.tree.serverActiveS, 2, "s")],
      ["   CPU user+sys, client", fmtSummary(results.tree.clientCpuS, 2, "s")],
      ["   CPU user+sys, server", fmtSummary(results.tree.serverCpuS, 2, "s")],
      [
        "   of it sys: client / server",
        `${fmt(results.tree.clientSysS.median, 2)} s / ${fmt(results.tree.serverSysS.median, 2)} s`,
      ],
      [
        "   peak RSS client / server",
        `${fmt(results.tree.clientHwmMiB.median, 0)} MiB / ${fmt(results.tree.serverHwmMiB.median, 0)} MiB`,
      ],
      [
        `3. write → file-done, median (--quiet-ms ${QUIET_MS}, ${config.edits} edits ${EDIT_SPACING_MS} ms apart)`,
        fmtSummary(burst.medianMs, 1, "ms"),
      ],
      ["3. p90", fmtSummary(burst.p90Ms, 1, "ms")],
      ["3. max", fmtSummary(burst.maxMs, 1, "ms")],
      [
        `   all ${burst.pooled.n} edits pooled: median / p90 / max / min`,
        `${fmt(burst.pooled.medianMs, 1)} / ${fmt(burst.pooled.p90Ms, 1)} / ${fmt(burst.pooled.maxMs, 1)} / ${fmt(burst.pooled.minMs, 1)} ms`,
      ],
      ["   write → client file-start, median (pooled)", `${fmt(burst.toStartMedianMs, 1)} ms`],
      ["   write → server commit, median (pooled, ms clock)", `${fmt(burst.serverCommitMedianMs, 0)} ms`],
      [
        `   same with ${config.isolatedEdits} edits ${ISOLATED_SPACING_MS} ms apart: median / p90 / max`,
        `${fmt(isolated.medianMs.median, 1)} / ${fmt(isolated.p90Ms.median, 1)} / ${fmt(isolated.maxMs.median, 1)} ms ` +
          `(pooled ${fmt(isolated.pooled.medianMs, 1)} / ${fmt(isolated.pooled.p90Ms, 1)} / ${fmt(isolated.pooled.maxMs, 1)})`,
      ],
      ["   watching client peak RSS", fmtSummary(results.latency.clientHwmMiB, 0, "MiB")],
      ["CLI start-up alone (--version)", fmtSummary(startup, 2, "s")],
    ];
    const width = Math.max(...rows.map(([k]) => k.length));
    console.log(
      `\nresults: median of ${ROUNDS} runs (min–max); loopback; page cache warm${QUICK ? "; --quick" : ""}`,
    );
    console.log(`| ${"figure".padEnd(width)} | value |`);
    console.log(`| ${"-".repeat(width)} | --- |`);
    for (const [k, v] of rows) console.log(`| ${k.padEnd(width)} | ${v} |`);
    const missed = burst.missed + isolated.missed;
    if (missed > 0) console.log(`warning: ${missed} edits were never acknowledged`);
    if (results.sourceChangedRuns > 0) {
      console.log(
        `warning: the sources changed before or during ${results.sourceChangedRuns} run(s): the figures mix code versions`,
      );
    }
    if (results.contendedRuns > 0) {
      console.log(`warning: ${results.contendedRuns} run(s) started while other work kept the machine busy`);
    }

    mkdirSync(dirname(OUT), { recursive: true });
    writeFileSync(OUT, `${JSON.stringify(results, null, 2)}\n`);
    console.log(`\nJSON: ${OUT}`);
  } finally {
    killAll();
    if (!KEEP) removeRunFolder(work);
  }
}

main().catch((error) => {
  killAll();
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
