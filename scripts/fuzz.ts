// `npm run fuzz`: the long protocol fuzzing run. Starts a real server on 127.0.0.1 in a
// temporary folder, runs the fuzzer (test/fuzz-lib.ts) seed after seed, and after each seed
// checks what test/fuzz.test.ts checks once: the server runs, nothing changed outside DEST,
// inside DEST only set folders and .keepwatch/ with no link, no temporary file left, memory
// bounded, no stack trace. Prints the failing seed and exits 1 on any finding.
//
// Usage: tsx scripts/fuzz.ts [--frames N | --minutes M] [--seed S] [--concurrency C] [--keep-going]

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import {
  checkDestination,
  type FuzzStats,
  formatFinding,
  formatStats,
  localToken,
  ownerCanEnter,
  peakRssBytes,
  putFiles,
  runFuzz,
  serverArgs,
  snapshotOutside,
  waitForEmptyTemp,
} from "../test/fuzz-lib.js";
import { formatStorm, runStorm, type StormStats } from "../test/fuzz-storm.js";

const REPO = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(REPO, "src", "cli", "main.ts");
const HOST = "127.0.0.1";
/** Frames per seed: a finding names its seed, so a seed should be quick to replay. */
/** Mutated path fields sent after each seed's mixed run (fuzz-storm.ts). */
const STORM_PER_SEED = 50_000;
const FRAMES_PER_SEED = 100_000;
/** See MAX_SERVER_RSS in test/fuzz.test.ts for the reasoning. */
const MAX_SERVER_RSS = 400 * 1024 * 1024;
const USAGE =
  "Usage: tsx scripts/fuzz.ts [--frames N | --minutes M] [--seed S] [--concurrency C] [--keep-going]\n" +
  "  --frames N       frames to deliver in all (default 2000000)\n" +
  "  --minutes M      run for M minutes instead\n" +
  "  --seed S         first seed (default: from the clock); seeds S, S+1, ... follow\n" +
  "  --concurrency C  connections at once (default 8)\n" +
  "  --keep-going     report every finding at the end instead of stopping at the first";

interface Server {
  child: ChildProcess;
  port: number;
  stderr: () => string;
  running: () => boolean;
}

function parse(): {
  frames: number;
  minutes: number | null;
  seed: number;
  concurrency: number;
  keepGoing: boolean;
} {
  const { values } = parseArgs({
    options: {
      frames: { type: "string" },
      minutes: { type: "string" },
      seed: { type: "string" },
      concurrency: { type: "string" },
      "keep-going": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const number = (text: string | undefined, name: string, fallback: number): number => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isFinite(value) || value < 0) {
      console.error(`--${name} must be a number, not ${JSON.stringify(text)}.\n${USAGE}`);
      process.exit(2);
    }
    return value;
  };
  if (values.frames !== undefined && values.minutes !== undefined) {
    console.error(`Give --frames or --minutes, not both.\n${USAGE}`);
    process.exit(2);
  }
  return {
    frames: number(values.frames, "frames", 2_000_000),
    minutes: values.minutes === undefined ? null : number(values.minutes, "minutes", 0),
    seed: Math.floor(number(values.seed, "seed", Date.now() % 0x7fff_ffff)),
    concurrency: Math.max(1, Math.floor(number(values.concurrency, "concurrency", 8))),
    keepGoing: values["keep-going"] ?? false,
  };
}

async function startServer(root: string): Promise<Server> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    KEEPWATCH_STATE_DIR: join(root, "state"),
    KEEPWATCH_CONFIG_DIR: join(root, "config"),
  };
  delete env.KEEPWATCH_SECRET;
  const help = spawnSync(process.execPath, ["--import", "tsx", CLI, "server", "--help"], {
    cwd: REPO,
    env,
    encoding: "utf8",
  });
  const args = serverArgs(help.stdout ?? "");
  const child = spawn(
    process.execPath,
    ["--import", "tsx", CLI, "server", join(root, "outer", "dest"), HOST, "--port", "0", "--json", ...args],
    { cwd: REPO, env, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  let exited = false;
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (text: string) => {
    // Keep the end only: a stack trace is what matters, and it comes last.
    stderr = (stderr + text).slice(-200_000);
  });
  child.on("exit", () => {
    exited = true;
  });
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`The server did not start listening:\n${stderr}`)),
      30_000,
    );
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`The server exited with code ${code} before listening:\n${stderr}`));
    });
    lines.on("line", (line) => {
      try {
        const event = JSON.parse(line) as { event?: string; port?: number };
        if (event.event === "listening" && typeof event.port === "number") {
          clearTimeout(timer);
          resolve(event.port);
        }
      } catch {
        // not an event
      }
    });
  });
  // Keep draining stdout so the server never blocks on a full pipe.
  lines.on("line", () => {});
  console.log(`server pid ${child.pid} on ${HOST}:${port} ${args.join(" ")}`);
  return { child, port, stderr: () => stderr, running: () => !exited };
}

async function stopServer(server: Server): Promise<void> {
  if (!server.running()) return;
  const exited = new Promise((resolve) => server.child.once("exit", resolve));
  server.child.kill("SIGTERM");
  const timer = setTimeout(() => server.child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

/** What is wrong after a seed, besides the fuzzer's own findings. */
async function checkInvariants(
  root: string,
  server: Server,
  token: Buffer,
  outsideBefore: string[],
): Promise<string[]> {
  const problems: string[] = [];
  const dest = join(root, "outer", "dest");
  if (!server.running()) {
    problems.push(`the server is no longer running; its stderr ends with:\n${server.stderr().slice(-4000)}`);
  } else {
    const data = Buffer.from(`still serving at ${new Date().toISOString()}\n`);
    const answer = await putFiles({
      port: server.port,
      token,
      set: "fz-after",
      files: [{ path: "after-seed.txt", data }],
    });
    if (answer !== "ACK") problems.push(`a well-behaved PUT was answered: ${answer}`);
  }
  const outside = await snapshotOutside(join(root, "outer"), "dest");
  if (outside.join("\n") !== outsideBefore.join("\n")) {
    problems.push(
      `something outside DEST changed:\nbefore:\n${outsideBefore.join("\n")}\nafter:\n${outside.join("\n")}`,
    );
  }
  problems.push(...(await checkDestination(dest, ownerCanEnter)));
  problems.push(...(await waitForEmptyTemp(dest)));
  const peak = server.child.pid === undefined ? null : await peakRssBytes(server.child.pid);
  if (peak !== null && peak > MAX_SERVER_RSS) {
    problems.push(`the server's peak RSS is ${mib(peak)}, over ${mib(MAX_SERVER_RSS)}`);
  }
  if (/^\s+at /m.test(server.stderr())) {
    problems.push(`the server printed a stack trace:\n${server.stderr().slice(-4000)}`);
  }
  return problems;
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

async function main(): Promise<number> {
  const options = parse();
  const root = await mkdtemp(join(tmpdir(), "keepwatch-fuzz-"));
  let server: Server | null = null;
  const cleanup = async () => {
    if (server) await stopServer(server);
    await ownerCanEnter(root).catch(() => {});
    await rm(root, { recursive: true, force: true, maxRetries: 3 });
  };
  process.once("SIGINT", () => {
    console.log("\ninterrupted; cleaning up");
    void cleanup().then(() => process.exit(130));
  });
  try {
    await mkdir(join(root, "outer", "sibling"), { recursive: true });
    await writeFile(join(root, "outer", "canary.txt"), "must not change\n");
    await writeFile(join(root, "outer", "sibling", "passwd"), "root:x:0:0::/root:/bin/sh\n");
    const outsideBefore = await snapshotOutside(join(root, "outer"), "dest");
    server = await startServer(root);
    const token = await localToken(join(root, "config"), server.port);
    const goal = options.minutes === null ? `${options.frames} frames` : `${options.minutes} minutes`;
    console.log(`fuzzing for ${goal} from seed ${options.seed}, ${options.concurrency} connections at once`);

    const started = Date.now();
    const deadline = options.minutes === null ? Number.POSITIVE_INFINITY : started + options.minutes * 60_000;
    const runs: FuzzStats[] = [];
    const storms: StormStats[] = [];
    const delivered = () => runs.reduce((sum, r) => sum + r.framesDelivered, 0);
    const failures: string[] = [];
    for (let seed = options.seed; ; seed++) {
      const left = options.minutes === null ? options.frames - delivered() : Number.POSITIVE_INFINITY;
      if (left <= 0 || Date.now() >= deadline) break;
      let lastPrint = Date.now();
      const stats = await runFuzz({
        port: server.port,
        token,
        seed,
        frames: Math.min(FRAMES_PER_SEED, left),
        concurrency: options.concurrency,
        stopOnFinding: !options.keepGoing,
        ...(Number.isFinite(deadline)
          ? { signal: AbortSignal.timeout(Math.max(1, deadline - Date.now())) }
          : {}),
        onConnection: (_report, now) => {
          if (Date.now() - lastPrint < 5000) return;
          lastPrint = Date.now();
          const seconds = Math.round((Date.now() - started) / 1000);
          console.log(
            `  … seed ${seed}: ${now.framesDelivered} frames, ${now.connections} connections; ${delivered() + now.framesDelivered} in all, ${seconds} s`,
          );
        },
      });
      runs.push(stats);
      // Then a storm of mutated path fields that keep their connections open (fuzz-storm.ts).
      const storm = await runStorm({
        port: server.port,
        token,
        seed,
        set: `fz-storm-${seed}`,
        frames: STORM_PER_SEED,
        ...(Number.isFinite(deadline)
          ? { signal: AbortSignal.timeout(Math.max(1, deadline - Date.now())) }
          : {}),
      });
      storms.push(storm);
      const peak = server.child.pid === undefined ? null : await peakRssBytes(server.child.pid);
      console.log(
        `seed ${seed}: ${formatStats(stats)}; storm: ${formatStorm(storm)}; server peak RSS ${peak === null ? "unknown" : mib(peak)}`,
      );
      const problems = [
        ...stats.findings.map(formatFinding),
        ...storm.findings.map((f) => `storm of seed ${seed}: ${f}`),
        ...(await checkInvariants(root, server, token, outsideBefore)),
      ];
      if (problems.length > 0) {
        failures.push(`seed ${seed}:\n${problems.join("\n\n")}`);
        console.log(`FAILED at seed ${seed}:\n${problems.join("\n\n")}`);
        if (!options.keepGoing || !server.running()) break;
      }
    }

    const elapsed = (Date.now() - started) / 1000;
    const total = delivered();
    const stormed = storms.reduce((sum, r) => sum + r.mutated, 0);
    const mutated = runs.reduce((sum, r) => sum + r.mutatedDelivered, 0) + stormed;
    const confirmed = runs.reduce((sum, r) => sum + r.framesConfirmed, 0);
    const connections = runs.reduce((sum, r) => sum + r.connections, 0);
    const peak = server.child.pid === undefined ? null : await peakRssBytes(server.child.pid);
    console.log(
      `\n${total} frames delivered in mixed runs and ${stormed} in storms (${mutated} mutated in all, ${confirmed} confirmed handled) over ${connections} connections ` +
        `and ${runs.length} seed(s) in ${elapsed.toFixed(1)} s: ${Math.round((total + stormed) / Math.max(elapsed, 0.001))} frames/s; ` +
        `server peak RSS ${peak === null ? "unknown" : mib(peak)}`,
    );
    if (failures.length > 0) {
      console.log(`\n${failures.length} seed(s) failed: ${failures.map((f) => f.split(":")[0]).join(", ")}`);
      return 1;
    }
    console.log("no finding");
    return 0;
  } finally {
    await cleanup();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    process.exit(1);
  },
);
