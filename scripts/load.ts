// Load: many watching clients against one server. Each client watches a folder of its own
// (its own set); a writer then creates FILES files in every folder, spread over a few
// seconds, and the time from each write to the client's acknowledgement (`file-done`) is
// measured. Afterwards every mirror must equal its source and every set's history must
// list every file. Prints the server's peak RSS and the p50/p99/max time to ack.
//
// Run: npm run load [-- --clients 50 --files 1000 --seconds 20]
// The CLI runs from dist/ (npm run build) when it is there, else through tsx.

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { compareTrees } from "../test/helpers.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const BUILT = join(REPO, "dist", "cli", "main.js");

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  const value = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} takes a positive number`);
  return value;
}

const CLIENTS = option("--clients", 50);
const FILES = option("--files", 1000);
const SECONDS = option("--seconds", 20);

interface Proc {
  child: ChildProcess;
  lines: string[];
  onLine?: (event: Record<string, unknown>) => void;
}

const children = new Set<ChildProcess>();

function cli(args: string[], env: NodeJS.ProcessEnv): Proc {
  const argv = existsSync(BUILT)
    ? [BUILT, ...args]
    : ["--import", "tsx", join(REPO, "src", "cli", "main.ts"), ...args];
  const child = spawn(process.execPath, argv, { cwd: REPO, env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.on("close", () => children.delete(child));
  const proc: Proc = { child, lines: [] };
  let partial = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (text: string) => {
    const parts = (partial + text).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      if (line.trim() === "") continue;
      proc.lines.push(line);
      try {
        proc.onLine?.(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not JSON
      }
    }
  });
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (text: string) => proc.lines.push(text));
  return proc;
}

async function until(what: string, check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

function peakRssMiB(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1]);
  return kb / 1024;
}

async function main(): Promise<number> {
  const root = mkdtempSync(join(tmpdir(), "kw-load-"));
  const cleanup = () => {
    for (const child of children) child.kill("SIGKILL");
    rmSync(root, { recursive: true, force: true });
  };
  process.on("SIGINT", () => {
    cleanup();
    process.exit(130);
  });
  try {
    const env = {
      ...process.env,
      KEEPWATCH_CONFIG_DIR: join(root, "config"),
      KEEPWATCH_STATE_DIR: join(root, "state"),
    };
    const dest = join(root, "dest");
    console.log(
      `load: ${CLIENTS} watching clients, ${FILES} files each written over ${SECONDS} s, one server (CLI from ${existsSync(BUILT) ? "dist/" : "tsx"})`,
    );
    const server = cli(["server", dest, "127.0.0.1", "--port", "0", "--json"], env);
    let port = 0;
    server.onLine = (e) => {
      if (e.event === "listening") port = Number(e.port);
    };
    await until("the server to listen", () => port > 0, 30_000);

    const written = new Map<string, number>();
    const latencies: number[] = [];
    const acked = new Set<string>();
    const sources: string[] = [];
    const clients: Proc[] = [];
    let idle = 0;
    const started = Date.now();
    for (let c = 0; c < CLIENTS; c++) {
      const src = join(root, "sources", `set${String(c).padStart(3, "0")}`);
      mkdirSync(src, { recursive: true });
      sources.push(src);
      const proc = cli(["client", src, "127.0.0.1", "--port", String(port), "--json"], env);
      let first = true;
      proc.onLine = (e) => {
        if (e.event === "idle" && first) {
          first = false;
          idle++;
        }
        if (e.event === "file-done" && typeof e.path === "string") {
          const key = `${c}/${e.path}`;
          const at = written.get(key);
          if (at !== undefined && !acked.has(key)) {
            acked.add(key);
            latencies.push(Date.parse(String(e.time)) - at);
          }
        }
      };
      clients.push(proc);
    }
    await until(`${CLIENTS} clients to be watching`, () => idle === CLIENTS, 300_000);
    console.log(`  ${CLIENTS} clients watching after ${((Date.now() - started) / 1000).toFixed(1)} s`);

    // Files of 1-16 KiB, in 10 folders per set, written round-robin over SECONDS.
    const total = CLIENTS * FILES;
    const t0 = Date.now();
    for (let i = 0; i < total; i++) {
      const c = i % CLIENTS;
      const n = Math.floor(i / CLIENTS);
      const rel = `d${n % 10}/f${n}.txt`;
      const path = join(sources[c] as string, rel);
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, Buffer.alloc(1024 + ((n * 7919) % 15360), `${c}:${n};`));
      written.set(`${c}/${rel}`, Date.now());
      const due = t0 + ((i + 1) / total) * SECONDS * 1000;
      const wait = due - Date.now();
      if (wait > 2) await new Promise((r) => setTimeout(r, wait));
    }
    console.log(`  ${total} files written in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    await until(`all ${total} files to be acknowledged`, () => acked.size >= total, 300_000);
    const lastAck = (Date.now() - t0) / 1000;

    const serverRss = peakRssMiB(server.child.pid);
    const clientRss = clients.map((p) => peakRssMiB(p.child.pid)).sort((a, b) => a - b);
    latencies.sort((a, b) => a - b);
    console.log(`  all acknowledged ${lastAck.toFixed(1)} s after the first write`);
    console.log(
      `  time to ack: p50 ${percentile(latencies, 50)} ms, p90 ${percentile(latencies, 90)} ms, p99 ${percentile(latencies, 99)} ms, max ${latencies[latencies.length - 1]} ms (${latencies.length} files)`,
    );
    console.log(
      `  peak RSS: server ${serverRss.toFixed(1)} MiB; clients median ${clientRss[Math.floor(clientRss.length / 2)]?.toFixed(1)} MiB, max ${clientRss[clientRss.length - 1]?.toFixed(1)} MiB`,
    );

    // Every mirror equals its source; every set's history lists every file.
    const problems: string[] = [];
    for (const src of sources) {
      const set = src.split("/").pop() as string;
      const diffs = await compareTrees(src, join(dest, set));
      if (diffs.length > 0) problems.push(`${set}: ${diffs.slice(0, 3).join("; ")}`);
    }
    for (const child of clients) child.child.kill("SIGTERM");
    await until(
      "the clients to stop",
      () => clients.every((p) => p.child.exitCode !== null || p.child.signalCode !== null),
      30_000,
    );
    const ls = spawnSync(
      process.execPath,
      [
        ...(existsSync(BUILT) ? [BUILT] : ["--import", "tsx", join(REPO, "src", "cli", "main.ts")]),
        "ls",
        "127.0.0.1",
        "--port",
        String(port),
        "--json",
      ],
      { cwd: REPO, env, encoding: "utf8" },
    );
    const sets = ls.stdout
      .trim()
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as { set: string; files: number });
    if (sets.length !== CLIENTS) problems.push(`the history lists ${sets.length} sets, not ${CLIENTS}`);
    for (const s of sets)
      if (s.files !== FILES) problems.push(`history of ${s.set}: ${s.files} files, not ${FILES}`);
    server.child.kill("SIGTERM");
    if (problems.length > 0) {
      console.log(`FAILED:\n${problems.slice(0, 20).join("\n")}`);
      return 1;
    }
    console.log(`  every mirror equals its source; the history of every set lists its ${FILES} files`);
    return 0;
  } finally {
    cleanup();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : String(error));
    for (const child of children) child.kill("SIGKILL");
    process.exit(1);
  },
);
