// The cost of TLS: wall time and throughput of an initial push of one incompressible file
// (1 GiB by default) to a fresh server over loopback, with TLS (the default) and with
// --insecure on both sides, alternating, 3 runs each (BENCHMARKING.md: memory warmed before
// each run, fresh destination and client state every run, load average printed).
//
// Run: npx tsx bench/tls.ts [--mib N] [--runs N]
// Results: printed, and written as JSON to bench/out/tls.json.

import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  ByteStream,
  fmt,
  fmtSummary,
  killAll,
  live,
  loadLine,
  parseLines,
  raceTimeout,
  summarize,
  syncDisks,
  warmMemory,
} from "./lib.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const CLI = join(REPO, "src", "cli", "main.ts");
const MiB = 1024 * 1024;

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  const value = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} takes a positive whole number`);
  return value;
}

const sizeMiB = option("--mib", 1024);
const runs = option("--runs", 3);

function start(args: string[], env: NodeJS.ProcessEnv): { child: ChildProcess; out: () => string } {
  const child = spawn(process.execPath, ["--import", "tsx", CLI, ...args], {
    cwd: REPO,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  live.add(child);
  child.on("close", () => live.delete(child));
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  return { child, out: () => out };
}

async function waitForPort(out: () => string, child: ChildProcess): Promise<number> {
  for (let i = 0; i < 600; i++) {
    const listening = parseLines(out()).find((e) => e.event === "listening");
    if (listening && typeof listening.port === "number") return listening.port;
    if (child.exitCode !== null) throw new Error(`the server exited:\n${out()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the server did not start:\n${out()}`);
}

async function oneRun(root: string, src: string, tls: boolean, index: number): Promise<number> {
  const work = join(root, `run-${index}-${tls ? "tls" : "plain"}`);
  mkdirSync(work);
  const env = {
    ...process.env,
    KEEPWATCH_CONFIG_DIR: join(work, "config"),
    KEEPWATCH_STATE_DIR: join(work, "state"),
  };
  const insecure = tls ? [] : ["--insecure"];
  const server = start(
    ["server", join(work, "dest"), "127.0.0.1", "--port", "0", "--json", ...insecure],
    env,
  );
  try {
    const port = await waitForPort(server.out, server.child);
    warmMemory(2 * 1024 * MiB);
    syncDisks();
    console.log(`  ${tls ? "TLS     " : "insecure"} run ${index + 1}: load ${loadLine()}`);
    const t0 = performance.now();
    const push = start(["push", src, "127.0.0.1", "--port", String(port), "--quiet", ...insecure], env);
    const code = await new Promise<number | null>((r) => push.child.on("close", (c) => r(c)));
    const seconds = (performance.now() - t0) / 1000;
    if (code !== 0) throw new Error(`push exited with ${code}:\n${push.out()}`);
    return seconds;
  } finally {
    server.child.kill("SIGTERM");
    await raceTimeout(new Promise((r) => server.child.on("close", r)), 10_000, null);
    rmSync(work, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), "kw-tls-bench-"));
  process.on("exit", () => {
    killAll();
    rmSync(root, { recursive: true, force: true });
  });
  const src = join(root, "source");
  mkdirSync(src);
  const stream = new ByteStream("tls-bench");
  const fd = openSync(join(src, "big.bin"), "w");
  for (let i = 0; i < sizeMiB; i++) writeSync(fd, stream.next(MiB));
  closeSync(fd);
  console.log(
    `TLS cost: initial push of one ${sizeMiB} MiB incompressible file, ${runs} runs each, alternating`,
  );
  const times: Record<"tls" | "insecure", number[]> = { tls: [], insecure: [] };
  for (let i = 0; i < runs; i++) {
    for (const tls of i % 2 === 0 ? [true, false] : [false, true]) {
      times[tls ? "tls" : "insecure"].push(await oneRun(root, src, tls, i));
    }
  }
  const withTls = summarize(times.tls);
  const plain = summarize(times.insecure);
  const rate = (s: number) => sizeMiB / s;
  console.log(`\nTLS 1.3 (default): ${fmtSummary(withTls, 2, "s")}, ${fmt(rate(withTls.median), 0)} MiB/s`);
  console.log(`--insecure:        ${fmtSummary(plain, 2, "s")}, ${fmt(rate(plain.median), 0)} MiB/s`);
  console.log(`TLS / plain wall time: ${fmt(withTls.median / plain.median, 3)}`);
  mkdirSync(join(REPO, "bench", "out"), { recursive: true });
  writeFileSync(
    join(REPO, "bench", "out", "tls.json"),
    `${JSON.stringify({ sizeMiB, runs, tls: withTls, insecure: plain }, null, 2)}\n`,
  );
}

await main();
