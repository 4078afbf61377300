// Child processes of the benchmarks: starting them (keepwatch's CLI as built from the working
// tree, or any command), stopping them, waiting with a time limit, and reading what the kernel knows of them
// (peak resident set, CPU time) from /proc.

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import {
  CLK_TCK,
  HOST,
  killAll,
  live,
  ROOT,
  raceTimeout,
  type Summary,
  sleep,
  sourceFingerprint,
  summarize,
} from "./lib.js";

/**
 * keepwatch's CLI as it is installed: the build in dist/ (made by ensureBuilt whenever the
 * sources changed), not the sources through tsx, whose compiler adds ~0.5 s and ~33 MiB to
 * every process.
 */
export const CLI_MAIN = join(ROOT, "dist", "cli", "main.js");

let builtFor = "";

/** Build dist/ (`npm run build`) unless it was built from the sources as they are now. */
export function ensureBuilt(): void {
  const now = sourceFingerprint();
  if (now === builtFor) return;
  const build = spawnSync("npm", ["run", "--silent", "build"], { cwd: ROOT, encoding: "utf8" });
  if (build.status !== 0) throw new Error(`npm run build failed:\n${build.stdout}${build.stderr}`);
  builtFor = now;
}

export interface Child {
  proc: ChildProcess;
  pid: number;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout: () => string;
  stderr: () => string;
}

export interface StartOptions {
  /** "pipe": collected (and readable from proc.stdout); a number: a file descriptor. */
  stdout?: "pipe" | number;
  env?: NodeJS.ProcessEnv;
}

/** Spawns `command` in the repository's root; stderr (and a piped stdout) are collected. */
export function startProcess(command: string, commandArgs: string[], options: StartOptions = {}): Child {
  const proc = spawn(command, commandArgs, {
    cwd: ROOT,
    stdio: ["ignore", options.stdout ?? "pipe", "pipe"],
    ...(options.env ? { env: options.env } : {}),
  });
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

/**
 * The Node options the executable's first line gives (`#!/usr/bin/env -S node OPTIONS`): an
 * installed `keepwatch` runs with them, so the benchmarks do too.
 */
export function cliNodeOptions(): string[] {
  const first = readFileSync(CLI_MAIN, "utf8").split("\n", 1)[0] ?? "";
  const match = /^#!\/usr\/bin\/env(?: -S)? node(.*)$/.exec(first);
  if (!match) throw new Error(`${CLI_MAIN} does not start with a node shebang: ${first}`);
  return (match[1] as string).split(" ").filter((option) => option !== "");
}

/** `node OPTIONS dist/cli/main.js ARGS`, as the installed executable runs (built first if needed). */
export function startCli(cliArgs: string[], options: StartOptions = {}): Child {
  ensureBuilt();
  return startProcess(process.execPath, [...cliNodeOptions(), CLI_MAIN, ...cliArgs], options);
}

/**
 * The CLI's start-up alone: `--version` timed `runs` times, and its peak RSS once under
 * /usr/bin/time (NaN without it): what Node and keepwatch's modules cost before any work, a
 * part of every wall time and peak RSS the benchmarks report.
 */
export function measureCliStartup(runs = 3): { wallS: Summary; rssMiB: number } {
  ensureBuilt();
  const command = [process.execPath, ...cliNodeOptions(), CLI_MAIN, "--version"];
  const wallS: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    spawnSync(command[0] as string, command.slice(1), { cwd: ROOT });
    wallS.push((performance.now() - t0) / 1000);
  }
  let rssMiB = Number.NaN;
  if (existsSync("/usr/bin/time")) {
    const r = spawnSync("/usr/bin/time", ["-f", "%M", ...command], { cwd: ROOT, encoding: "utf8" });
    if (r.status === 0) rssMiB = Number(r.stderr.trim().split("\n").pop()) / 1024;
  }
  return { wallS: summarize(wallS), rssMiB };
}

/** On SIGINT or SIGTERM: end every child process, run `cleanup`, exit 130 or 143. */
export function onInterrupt(cleanup: () => void): void {
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      killAll();
      cleanup();
      process.exit(signal === "SIGINT" ? 130 : 143);
    });
  }
}

export function hasExited(child: Child): boolean {
  return child.proc.exitCode !== null || child.proc.signalCode !== null;
}

/** SIGTERM, then SIGKILL if the process is still there 15 s later. */
export async function stop(child: Child): Promise<void> {
  if (hasExited(child)) return;
  child.proc.kill("SIGTERM");
  if ((await raceTimeout(child.exit, 15_000, "timeout" as const)) === "timeout") {
    console.log(`  warning: pid ${child.pid} did not stop within 15 s of SIGTERM; killing it`);
    child.proc.kill("SIGKILL");
    await child.exit;
  }
}

/** Waits for the exit code; kills the process (and returns null) after `timeoutMs`. */
export async function waitExit(child: Child, label: string, timeoutMs: number): Promise<number | null> {
  const r = await raceTimeout(child.exit, timeoutMs, "timeout" as const);
  if (r === "timeout") {
    console.log(`    warning: ${label} still running after ${timeoutMs / 1000} s; killing it`);
    child.proc.kill("SIGKILL");
    await child.exit;
    return null;
  }
  return r.code;
}

/** A TCP port free on the loopback address right now. */
export async function freePort(): Promise<number> {
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

export function canConnect(port: number): Promise<boolean> {
  return new Promise((r) => {
    const socket = connect({ port, host: HOST });
    socket.once("connect", () => {
      socket.destroy();
      r(true);
    });
    socket.once("error", () => r(false));
  });
}

/**
 * CPU seconds (user + sys) from /proc/<pid>/stat: the process's own (all its threads) and that of
 * its children it has reaped. The bench's own `children` figure grows by exactly a measured
 * client once it has exited (servers and daemons are not reaped until the end).
 */
export function cpuOf(pid: number | "self"): { own: number; children: number } {
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

/** VmHWM (peak resident set) of a running process in MiB; NaN once it has exited. */
export function peakRssMiB(pid: number): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m?.[1] ? Number(m[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/**
 * Resets VmHWM to the current resident set (`echo 5 > /proc/PID/clear_refs`, Linux ≥ 4.0), so that
 * a long-lived server's peak can be read per scenario. False when the kernel refused.
 */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** Polls /proc/<pid>/status (VmHWM) and /proc/<pid>/stat (utime+stime) every `intervalMs`. */
export class Sampler {
  hwmKiB = 0;
  userTicks = 0;
  sysTicks = 0;
  samples = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly pid: number,
    intervalMs = 50,
  ) {
    this.read();
    this.timer = setInterval(() => this.read(), intervalMs);
  }

  /** Keeps the last values read; a process that has exited (or is a zombie) changes nothing. */
  read(): void {
    try {
      const status = readFileSync(`/proc/${this.pid}/status`, "utf8");
      const hwm = /^VmHWM:\s+(\d+) kB/m.exec(status);
      const stat = readFileSync(`/proc/${this.pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (hwm?.[1]) {
        this.hwmKiB = Number(hwm[1]);
        // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        this.userTicks = Number(fields[11]);
        this.sysTicks = Number(fields[12]);
        this.samples++;
      }
    } catch {
      // gone
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }

  get hwmMiB(): number {
    return this.hwmKiB / 1024;
  }

  get userS(): number {
    return this.userTicks / CLK_TCK;
  }

  get sysS(): number {
    return this.sysTicks / CLK_TCK;
  }

  get cpuS(): number {
    return this.userS + this.sysS;
  }
}

/** Polls `ready` every 20 ms until it is true; throws if `child` exits first or `timeoutMs` passes. */
export async function waitUntil(
  child: Child,
  ready: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await ready())) {
    if (hasExited(child) || performance.now() > deadline) {
      await stop(child);
      throw new Error(`${what}: ${child.stderr()}`);
    }
    await sleep(20);
  }
}
