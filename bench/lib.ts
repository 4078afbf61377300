// Helpers shared by the benchmark scripts (suite.ts, delta.ts, measure-foundation.ts): timing, summaries,
// formatting, machine state, source fingerprints and the set of child processes still running.

import { type ChildProcess, spawnSync } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync, statfsSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root folder. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** Every benchmark runs its servers and peers on the IPv4 loopback address. */
export const HOST = "127.0.0.1";
export const MiB = 2 ** 20;
export const GiB = 2 ** 30;

export const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Median; for an even count, the mean of the two middle values. */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

export function summarize(values: number[]): Summary {
  const s = [...values].sort((a, b) => a - b);
  return { median: median(s), min: s[0] ?? Number.NaN, max: s[s.length - 1] ?? Number.NaN, runs: values };
}

export function fmt(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : "n/a";
}

export function fmtSummary(s: Summary, digits: number, unit: string): string {
  return `${fmt(s.median, digits)} ${unit} (min–max ${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const rank = Math.max(1, Math.ceil((p / 100) * s.length));
  return s[rank - 1] as number;
}

/** Whole numbers with thousands separators. */
export function fmtInt(value: number): string {
  return Number.isFinite(value) ? Math.round(value).toLocaleString("en") : "n/a";
}

/** A byte count for people: whole units without decimals, else 1 or 2 of them. */
export function humanBytes(bytes: number): string {
  if (bytes >= GiB) return `${fmt(bytes / GiB, bytes % GiB === 0 ? 0 : 2)} GiB`;
  if (bytes >= MiB) return `${fmt(bytes / MiB, bytes % MiB === 0 ? 0 : 1)} MiB`;
  if (bytes >= 1024) return `${fmt(bytes / 1024, 1)} KiB`;
  return `${fmt(bytes, 0)} B`;
}

/** A Markdown table, columns padded to their widest cell. */
export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  console.log(line(header));
  console.log(line(widths.map((w) => "-".repeat(w))));
  for (const r of rows) console.log(line(r));
}

export function loadLine(): string {
  const [one, five, fifteen] = loadavg();
  return `${fmt(one ?? Number.NaN, 2)} ${fmt(five ?? Number.NaN, 2)} ${fmt(fifteen ?? Number.NaN, 2)}`;
}

/** The machine, for a benchmark's JSON. */
export function machineInfo(): { cpus: number; model: string | undefined; memBytes: number; node: string } {
  return { cpus: cpus().length, model: cpus()[0]?.model, memBytes: totalmem(), node: process.version };
}

/** The machine, in one line for a benchmark's output. */
export function machineLine(): string {
  const m = machineInfo();
  return `machine: ${m.cpus} vCPU (${m.model ?? "?"}), ${humanBytes(m.memBytes)} RAM, Node ${m.node}`;
}

/** Prints the free space of the file system holding `dir`; throws when it is under `needBytes`. */
export function checkFreeSpace(dir: string, needBytes: number): void {
  const fs = statfsSync(dir);
  const freeBytes = fs.bavail * fs.bsize;
  console.log(
    `disk: ${dir} has ${humanBytes(freeBytes)} free; this run needs about ${humanBytes(needBytes)}`,
  );
  if (freeBytes < needBytes) throw new Error(`not enough free space in ${dir}`);
}

/** Deletes a run's folder (after all timed runs: BENCHMARKING.md pitfall 2) and says how long it took. */
export function removeRunFolder(dir: string): void {
  const t = performance.now();
  rmSync(dir, { recursive: true, force: true });
  console.log(`removed ${dir} (${fmt((performance.now() - t) / 1000, 1)} s)`);
}

/** Deterministic, incompressible bytes: AES-128-CTR over zeros, keyed by a seed string. */
export class ByteStream {
  private readonly cipher;
  private zeros = Buffer.alloc(0);

  constructor(seed: string) {
    const key = createHash("sha256").update(seed).digest().subarray(0, 16);
    this.cipher = createCipheriv("aes-128-ctr", key, Buffer.alloc(16));
  }

  next(length: number): Buffer {
    if (this.zeros.length < length) this.zeros = Buffer.alloc(length);
    return this.cipher.update(this.zeros.subarray(0, length));
  }
}

/** Pitfall 1: touch and free `bytes` (~2 GiB) in a short separate process. Returns its duration (s). */
export function warmMemory(bytes: number): number {
  const code = `const n=${bytes / (256 * MiB)};const keep=[];for(let i=0;i<n;i++){const b=Buffer.allocUnsafeSlow(${256 * MiB});b.fill(i+1);keep.push(b)}`;
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ["-e", code], { stdio: "inherit" });
  if (r.status !== 0) throw new Error("the memory warm-up process failed");
  return (performance.now() - t0) / 1000;
}

/** Flush dirty pages so one run's write-back does not land in the next (this drops no caches). */
export function syncDisks(): void {
  spawnSync("sync");
}

/** CPU time of the whole machine from /proc/stat (all cores), in ticks. */
export function machineTicks(): { idle: number; total: number } {
  const first = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const nums = first.trim().split(/\s+/).slice(1).map(Number);
  const idle = (nums[3] ?? 0) + (nums[4] ?? 0);
  return { idle, total: nums.reduce((a, b) => a + b, 0) };
}

/** Fraction of all cores busy over the next `ms`. */
export async function busyOver(ms: number): Promise<number> {
  const a = machineTicks();
  await sleep(ms);
  const b = machineTicks();
  return b.total > a.total ? 1 - (b.idle - a.idle) / (b.total - a.total) : 0;
}

/**
 * Others edit src/ while the benchmarks run, and every run starts the CLI from the working tree: a
 * fingerprint of the non-test sources (plus package.json and the lock file) is taken before
 * and after each run so that figures from different code are flagged.
 */
export function sourceFingerprint(): string {
  const hash = createHash("sha256");
  const walk = (dir: string) => {
    const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts")) {
        hash.update(`${relative(ROOT, path)}\0`);
        hash.update(readFileSync(path));
      }
    }
  };
  walk(join(ROOT, "src"));
  for (const file of ["package.json", "package-lock.json"]) {
    if (existsSync(join(ROOT, file))) hash.update(readFileSync(join(ROOT, file)));
  }
  return hash.digest("hex").slice(0, 12);
}

export function gitDescribe(): { head: string; dirtySrcFiles: number } {
  const git = (gitArgs: string[]) => spawnSync("git", gitArgs, { cwd: ROOT, encoding: "utf8" }).stdout;
  const status = git(["status", "--porcelain", "--", "src", "package.json", "package-lock.json"]);
  return {
    head: git(["rev-parse", "--short", "HEAD"]).trim(),
    dirtySrcFiles: status.split("\n").filter((l) => l.trim()).length,
  };
}

/** The code a benchmark runs, in one line: HEAD, uncommitted files, the sources' fingerprint. */
export function codeLine(git: { head: string; dirtySrcFiles: number }): string {
  return (
    `code: git ${git.head}, ${git.dirtySrcFiles} uncommitted file(s) in src/ and package files; ` +
    `source fingerprint ${sourceFingerprint()} (runs started from the working tree)`
  );
}

/** Child processes still running; killAll ends them all. */
export const live = new Set<ChildProcess>();

export function killAll(): void {
  for (const proc of live) proc.kill("SIGKILL");
}

export interface JsonEvent {
  time: string;
  event: string;
  path?: string;
  op?: string;
  size?: number;
  sentBytes?: number;
  port?: number;
  [key: string]: unknown;
}

export function parseLines(text: string): JsonEvent[] {
  const events: JsonEvent[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      events.push(JSON.parse(line) as JsonEvent);
    } catch {
      // not JSON
    }
  }
  return events;
}

/** Resolves with `value` unless `promise` settles first; the timer never outlives the race. */
export async function raceTimeout<T, U>(promise: Promise<T>, ms: number, value: U): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<U>((r) => {
    timer = setTimeout(() => r(value), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
