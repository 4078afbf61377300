// The tools keepwatch is measured against, run as the benchmarks run them: an rsync daemon on
// 127.0.0.1 with its own config and one writable module per destination, one timed rsync
// client run (through a counting proxy), and restic with a local repository.

import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type CountingProxy, type Wire, wireSince } from "./counting-proxy.js";
import { HOST, sleep } from "./lib.js";
import { type Child, canConnect, cpuOf, freePort, startProcess, waitExit, waitUntil } from "./processes.js";

/** The path of `name` on PATH, or null. */
export function findTool(name: string): string | null {
  const r = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : null;
}

/** The first line `command ARGS` prints, e.g. its version. */
export function firstLine(command: string, commandArgs: string[]): string {
  return spawnSync(command, commandArgs, { encoding: "utf8" }).stdout.split("\n")[0]?.trim() ?? "";
}

// ---------------------------------------------------------------- rsync

export interface RsyncDaemon {
  child: Child;
  port: number;
  configFile: string;
  modules: Map<string, string>;
}

/**
 * `rsync --daemon --no-detach` on 127.0.0.1, as the current user, with one writable module per
 * entry of `modules` (name → folder, created here). Its config, pid and log files go in `work`.
 */
export async function startRsyncDaemon(work: string, modules: Map<string, string>): Promise<RsyncDaemon> {
  const configFile = join(work, "rsyncd.conf");
  const lines = [
    "# written by keepwatch's bench",
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
  const child = startProcess("rsync", [
    "--daemon",
    "--no-detach",
    `--config=${configFile}`,
    "--port",
    String(port),
    "--address",
    HOST,
  ]);
  await waitUntil(child, () => canConnect(port), 15_000, "the rsync daemon did not start");
  return { child, port, configFile, modules };
}

export interface RsyncStats {
  totalSent: number;
  totalReceived: number;
  literal: number;
  matched: number;
  filesTransferred: number;
}

export function parseRsyncStats(text: string): RsyncStats {
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

export interface RsyncResult {
  wallS: number;
  exitCode: number | null;
  stderr: string;
  wire: Wire;
  stats: RsyncStats;
  /** CPU seconds (user + sys) of the rsync client, and of the daemon's per-connection processes */
  cpu: { clientS: number; serverS: number };
}

/**
 * `rsync -a --delete --stats SRC/ rsync://127.0.0.1:PROXY/MODULE/`, timed from spawn to exit. Over a
 * daemon connection rsync uses its delta algorithm (whole-file is its default only for local copies).
 */
export async function runRsync(
  src: string,
  module: string,
  proxy: CountingProxy,
  daemon: RsyncDaemon,
  label: string,
  timeoutMs: number,
): Promise<RsyncResult> {
  const before = proxy.counts();
  const cpuSelf0 = cpuOf("self").children;
  const cpuDaemon0 = cpuOf(daemon.child.pid).children;
  const t0 = performance.now();
  const child = startProcess("rsync", [
    "-a",
    "--delete",
    "--stats",
    `${src}/`,
    `rsync://${HOST}:${proxy.port}/${module}/`,
  ]);
  const exitCode = await waitExit(child, label, timeoutMs);
  const wallS = (performance.now() - t0) / 1000;
  const wire = await wireSince(proxy, before);
  const clientS = cpuOf("self").children - cpuSelf0;
  // The daemon reaps its per-connection process (and that one its own children) shortly after
  // the connection closes: wait until its children's CPU stops changing.
  let serverS = cpuOf(daemon.child.pid).children - cpuDaemon0;
  for (let i = 0; i < 20; i++) {
    await sleep(50);
    const now = cpuOf(daemon.child.pid).children - cpuDaemon0;
    if (now === serverS && now > 0) break;
    serverS = now;
  }
  if (exitCode !== 0)
    console.log(`    warning: ${label}: rsync exited with ${exitCode}: ${child.stderr().trim()}`);
  if (!wire.drained)
    console.log(`    warning: ${label}: a proxied connection was still open 10 s after the exit`);
  return {
    wallS,
    exitCode,
    stderr: child.stderr(),
    wire,
    stats: parseRsyncStats(child.stdout()),
    cpu: { clientS, serverS },
  };
}

// ---------------------------------------------------------------- restic

/** restic's environment: a fixed password (the repositories are throw-away) and a cache in `cacheDir`. */
export function resticEnv(cacheDir: string): NodeJS.ProcessEnv {
  return { ...process.env, RESTIC_PASSWORD: "keepwatch-bench", RESTIC_CACHE_DIR: cacheDir };
}

/** `restic -r REPO init` (untimed setup). */
export function resticInit(repo: string, env: NodeJS.ProcessEnv): void {
  const r = spawnSync("restic", ["-r", repo, "init"], { env, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`restic init ${repo} failed: ${r.stderr}`);
}

export interface ResticSummary {
  files_new?: number;
  files_changed?: number;
  files_unmodified?: number;
  data_added?: number;
  total_bytes_processed?: number;
  total_duration?: number;
  snapshot_id?: string;
}

export interface ResticResult {
  wallS: number;
  exitCode: number | null;
  stderr: string;
  summary: ResticSummary | null;
  /** CPU seconds (user + sys) of restic */
  cpuS: number;
}

/**
 * `restic -r REPO backup -q --json SRC`, timed from spawn to exit. A repository that already holds
 * a snapshot of SRC (same host and path) gives restic its parent: unchanged files are not read.
 */
export async function runRestic(
  repo: string,
  src: string,
  env: NodeJS.ProcessEnv,
  label: string,
  timeoutMs: number,
): Promise<ResticResult> {
  const cpuSelf0 = cpuOf("self").children;
  const t0 = performance.now();
  const child = startProcess("restic", ["-r", repo, "backup", "-q", "--json", src], { env });
  const exitCode = await waitExit(child, label, timeoutMs);
  const wallS = (performance.now() - t0) / 1000;
  const cpuS = cpuOf("self").children - cpuSelf0;
  if (exitCode !== 0)
    console.log(`    warning: ${label}: restic exited with ${exitCode}: ${child.stderr().trim()}`);
  let summary: ResticSummary | null = null;
  for (const line of child.stdout().split("\n")) {
    try {
      const value = JSON.parse(line) as ResticSummary & { message_type?: string };
      if (value.message_type === "summary") summary = value;
    } catch {
      // not JSON
    }
  }
  return { wallS, exitCode, stderr: child.stderr(), summary, cpuS };
}
