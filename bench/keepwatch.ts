// keepwatch as the benchmarks run it: a server on a fresh DEST with its own config folder, clients
// that reach it directly or through a counting proxy, one timed `push`, and the JSON event lines
// of a watching `client` awaited one by one.

import { closeSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface, type Interface } from "node:readline";
import { type CountingProxy, type Wire, wireSince } from "./counting-proxy.js";
import { HOST, type JsonEvent, parseLines } from "./lib.js";
import { type Child, cpuOf, Sampler, startCli, waitExit, waitUntil } from "./processes.js";

export interface KwServer {
  child: Child;
  port: number;
  /** its --json events */
  outFile: string;
  fingerprint: string;
  /**
   * The credential the server hands its own user (KEEPWATCH_CONFIG_DIR/servers/PORT.json). A client
   * looks that file up by the port it connects to, so one that connects through a proxy finds none:
   * the bench gives it the secret (KEEPWATCH_SECRET) and the fingerprint (--fingerprint) instead.
   */
  secret: string;
  configDir: string;
}

/**
 * `keepwatch server DEST 127.0.0.1 --port 0 --json` with stdout to `outFile` and a config folder of
 * its own (no trust state shared between runs); resolves once it has reported `listening`.
 */
export async function startKwServer(dest: string, outFile: string, configDir: string): Promise<KwServer> {
  mkdirSync(configDir, { recursive: true });
  const fd = openSync(outFile, "w");
  const child = startCli(["server", dest, HOST, "--port", "0", "--json"], {
    stdout: fd,
    env: { ...process.env, KEEPWATCH_CONFIG_DIR: configDir },
  });
  closeSync(fd);
  let listening: JsonEvent | undefined;
  await waitUntil(
    child,
    () => {
      listening = parseLines(readFileSync(outFile, "utf8")).find((e) => e.event === "listening");
      return listening !== undefined;
    },
    60_000,
    `the keepwatch server did not report listening:\n${readFileSync(outFile, "utf8")}`,
  );
  const port = Number(listening?.port);
  const fingerprint = String(listening?.fingerprint);
  const access = JSON.parse(readFileSync(join(configDir, "servers", `${port}.json`), "utf8")) as {
    secret: string;
  };
  return { child, port, outFile, fingerprint, secret: access.secret, configDir };
}

/** HOST, port and credentials of a `push` or `client` reaching `server` through `port` (a proxy's or its own). */
export function kwConnection(server: KwServer, port: number): { args: string[]; env: NodeJS.ProcessEnv } {
  return {
    args: [HOST, "--port", String(port), "--fingerprint", server.fingerprint],
    env: { ...process.env, KEEPWATCH_CONFIG_DIR: server.configDir, KEEPWATCH_SECRET: server.secret },
  };
}

/** Phases of a push from its own JSON event times (ms resolution). */
export interface PushPhases {
  /** spawn → `connected` (Node and tsx start-up, TLS, HELLO) */
  startupS: number;
  /**
   * `scan-start` → `scan-done`. The scan hands on its operations a folder at a time, so
   * in a tree of more than a queue's worth of them it ends near the last file.
   */
  scanS: number;
  /** `scan-done` → last `file-done` (what was still running or queued when the walk ended) */
  transferS: number;
  /** last `file-done` → process exit */
  exitS: number;
}

export function pushPhases(events: JsonEvent[], spawnedAt: number, exitedAt: number): PushPhases {
  const at = (name: string) => {
    const e = events.find((x) => x.event === name);
    return e ? Date.parse(e.time) : Number.NaN;
  };
  const dones = events.filter((e) => e.event === "file-done");
  const lastDone = dones.length > 0 ? Date.parse((dones[dones.length - 1] as JsonEvent).time) : Number.NaN;
  return {
    startupS: (at("connected") - spawnedAt) / 1000,
    scanS: (at("scan-done") - at("scan-start")) / 1000,
    transferS: (lastDone - at("scan-done")) / 1000,
    exitS: (exitedAt - lastDone) / 1000,
  };
}

export interface PushOptions {
  src: string;
  stateDir: string;
  server: KwServer;
  /** counts the bytes; the push connects to its port (else to the server's own) */
  proxy?: CountingProxy;
  /** the push's --json events go here */
  outFile: string;
  label: string;
  timeoutMs: number;
}

export interface PushResult {
  wallS: number;
  exitCode: number | null;
  stderr: string;
  events: JsonEvent[];
  phases: PushPhases;
  /** null without a proxy */
  wire: Wire | null;
  /** CPU seconds (user + sys) of the push (reaped), and of the server while the push ran */
  cpu: { clientS: number; serverS: number };
  /** the push's VmHWM and CPU split, as last sampled (every 50 ms) before it exited */
  client: { hwmMiB: number; userS: number; sysS: number; samples: number };
}

/**
 * One `keepwatch push SRC 127.0.0.1 --port PORT --json --state-dir STATE`, timed from spawn to exit
 * (Node and tsx start-up included); through a proxy, the bytes are counted until every proxied
 * connection has closed.
 */
export async function runPush(
  o: PushOptions & { proxy: CountingProxy },
): Promise<PushResult & { wire: Wire }>;
export async function runPush(o: PushOptions): Promise<PushResult>;
export async function runPush(o: PushOptions): Promise<PushResult> {
  const connection = kwConnection(o.server, o.proxy?.port ?? o.server.port);
  const fd = openSync(o.outFile, "w");
  const before = o.proxy?.counts();
  const cpuSelf0 = cpuOf("self").children;
  const cpuServer0 = cpuOf(o.server.child.pid).own;
  const spawnedAt = Date.now();
  const t0 = performance.now();
  const push = startCli(["push", o.src, ...connection.args, "--json", "--state-dir", o.stateDir], {
    stdout: fd,
    env: connection.env,
  });
  closeSync(fd);
  const sampler = new Sampler(push.pid);
  const exitCode = await waitExit(push, o.label, o.timeoutMs);
  const wallS = (performance.now() - t0) / 1000;
  const exitedAt = Date.now();
  sampler.stop();
  const wire = o.proxy && before ? await wireSince(o.proxy, before) : null;
  const cpu = {
    clientS: cpuOf("self").children - cpuSelf0,
    serverS: cpuOf(o.server.child.pid).own - cpuServer0,
  };
  if (exitCode !== 0)
    console.log(`    warning: ${o.label}: push exited with ${exitCode}: ${push.stderr().trim()}`);
  if (wire && !wire.drained)
    console.log(`    warning: ${o.label}: a proxied connection was still open 10 s after the exit`);
  const events = parseLines(readFileSync(o.outFile, "utf8"));
  return {
    wallS,
    exitCode,
    stderr: push.stderr(),
    events,
    phases: pushPhases(events, spawnedAt, exitedAt),
    wire,
    cpu,
    client: { hwmMiB: sampler.hwmMiB, userS: sampler.userS, sysS: sampler.sysS, samples: sampler.samples },
  };
}

/**
 * The JSON lines of a running client (stdout piped), matched as they arrive: `waitFor` resolves
 * with the performance.now() at which the first matching line reached this process.
 */
interface Waiter {
  match: (e: JsonEvent) => boolean;
  resolve: (t: number) => void;
}

export class EventLines {
  private readonly lines: Interface;
  private readonly waiters: Waiter[] = [];

  constructor(child: Child) {
    this.lines = createInterface({ input: child.proc.stdout as NodeJS.ReadableStream });
    this.lines.on("line", (line) => {
      const now = performance.now();
      let event: JsonEvent;
      try {
        event = JSON.parse(line) as JsonEvent;
      } catch {
        return;
      }
      for (let i = this.waiters.length - 1; i >= 0; i--) {
        const w = this.waiters[i] as Waiter;
        if (w.match(event)) {
          this.waiters.splice(i, 1);
          w.resolve(now);
        }
      }
    });
  }

  /** Register before causing the event; null after `timeoutMs`. */
  waitFor(match: (e: JsonEvent) => boolean, timeoutMs: number): Promise<number | null> {
    return new Promise((resolveWait) => {
      const waiter: Waiter = {
        match,
        resolve: (t: number) => {
          clearTimeout(timer);
          resolveWait(t);
        },
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        resolveWait(null);
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** The acknowledgement of a put of `path` (relative to SRC). */
  waitForPut(path: string, timeoutMs: number): Promise<number | null> {
    return this.waitFor((e) => e.event === "file-done" && e.op === "put" && e.path === path, timeoutMs);
  }

  close(): void {
    this.lines.close();
  }
}
