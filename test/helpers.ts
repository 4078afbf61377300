// End-to-end test support: starts the real keepwatch CLI as child processes on loopback,
// keeps everything they print for failure messages, waits on conditions with deadlines,
// compares folder trees, and cleans up after every test, also after a failure.

import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { lstat, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { ClientSecurity } from "../src/client/security.js";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const CLI = join(REPO, "src", "cli", "main.ts");
/** The only address these tests ever use. */
export const LOOPBACK = "127.0.0.1";

/** How long a process gets to exit after SIGTERM before it is killed. */
const STOP_GRACE_MS = 3000;
const DEFAULT_WAIT_MS = 15_000;
const POLL_MS = 25;

/** One line of `--json` output. */
export interface KwEvent {
  time: string;
  event: string;
  [field: string]: unknown;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

type Awaitable<T> = T | Promise<T>;

/** A running (or finished) keepwatch process whose output is kept. */
export class KwProcess {
  readonly child: ChildProcess;
  stdout = "";
  stderr = "";
  /** Every stdout line that parsed as a `--json` event, in order. */
  readonly events: KwEvent[] = [];
  /** Stdout lines that were not JSON events (none are expected with --json). */
  readonly otherLines: string[] = [];
  exitStatus: ExitStatus | null = null;
  readonly closed: Promise<ExitStatus>;
  private partial = "";

  constructor(
    readonly label: string,
    readonly args: string[],
    env: NodeJS.ProcessEnv,
  ) {
    this.child = spawn(process.execPath, ["--import", "tsx", CLI, ...args], {
      cwd: REPO,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.stdout?.setEncoding("utf8");
    this.child.stderr?.setEncoding("utf8");
    this.child.stdout?.on("data", (text: string) => this.onStdout(text));
    this.child.stderr?.on("data", (text: string) => {
      this.stderr += text;
    });
    this.closed = new Promise((resolvePromise) => {
      this.child.on("error", (error) => {
        this.stderr += `\n[spawn failed: ${error.message}]`;
        this.exitStatus ??= { code: null, signal: null };
        resolvePromise(this.exitStatus);
      });
      this.child.on("close", (code, signal) => {
        if (this.partial !== "") this.onLine(this.partial);
        this.partial = "";
        this.exitStatus = { code, signal };
        resolvePromise(this.exitStatus);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitStatus === null;
  }

  /** Events of `kind`, from index `since` of `events` on. */
  eventsOf(kind: string, since = 0): KwEvent[] {
    return this.events.slice(since).filter((e) => e.event === kind);
  }

  /** Send `signal`; if the process is still there after `graceMs`, SIGKILL it. */
  async stop(signal: NodeJS.Signals = "SIGTERM", graceMs = STOP_GRACE_MS): Promise<ExitStatus> {
    if (!this.running) return this.closed;
    this.child.kill(signal);
    if (signal === "SIGKILL") return this.closed;
    const timer = setTimeout(() => {
      if (this.running) this.child.kill("SIGKILL");
    }, graceMs);
    const status = await this.closed;
    clearTimeout(timer);
    return status;
  }

  /** The last lines of stdout and stderr, for failure messages. */
  describe(lines = 15): string {
    const state = this.running
      ? "running"
      : `exited with code ${this.exitStatus?.code} signal ${this.exitStatus?.signal}`;
    return [
      `--- ${this.label} (pid ${this.pid}, ${state}): keepwatch ${this.args.map((a) => JSON.stringify(a)).join(" ")}`,
      `    stdout (last ${lines} lines):`,
      indent(lastLines(this.stdout, lines)),
      `    stderr (last ${lines} lines):`,
      indent(lastLines(this.stderr, lines)),
    ].join("\n");
  }

  private onStdout(text: string): void {
    this.stdout += text;
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop() ?? "";
    for (const line of parts) this.onLine(line);
  }

  private onLine(line: string): void {
    if (line === "") return;
    try {
      const parsed: unknown = JSON.parse(line);
      if (isEvent(parsed)) {
        this.events.push(parsed);
        return;
      }
    } catch {
      // not JSON: kept below
    }
    this.otherLines.push(line);
  }
}

function isEvent(value: unknown): value is KwEvent {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as KwEvent).time === "string" &&
    typeof (value as KwEvent).event === "string"
  );
}

function lastLines(text: string, n: number): string {
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines.length === 0 ? "(nothing)" : lines.slice(-n).join("\n");
}

function indent(text: string): string {
  return text
    .split("\n")
    .map((line) => `      ${line}`)
    .join("\n");
}

/** What a process run to completion left behind. */
export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  events: KwEvent[];
  /** Stdout lines that were not JSON events. */
  otherLines: string[];
  elapsedMs: number;
  proc: KwProcess;
}

export interface ServerHandle {
  proc: KwProcess;
  port: number;
  /** The DEST folder given on the command line. */
  dest: string;
  readonly events: KwEvent[];
  /** SIGTERM (or the given signal), then SIGKILL after a grace period. */
  kill(signal?: NodeJS.Signals): Promise<ExitStatus>;
}

export interface ClientHandle {
  proc: KwProcess;
  readonly events: KwEvent[];
  kill(signal?: NodeJS.Signals): Promise<ExitStatus>;
}

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
  /** Processes that must keep running while we wait; the wait fails as soon as one exits. */
  alive?: KwProcess[];
}

/** Anything with node:test's `after` shape: a TestContext or `{ after }` from node:test. */
export interface CleanupHost {
  after(fn: () => Promise<void>): void;
}

/**
 * A test's own world: a temporary folder (with a state folder inside), the keepwatch
 * processes it started, and what must be undone at the end.
 */
export class Sandbox {
  readonly processes: KwProcess[] = [];
  private readonly cleanups: (() => Awaitable<void>)[] = [];
  private cleaned = false;

  private constructor(readonly root: string) {}

  /**
   * Make a sandbox and register its cleanup with `host.after` (a test's `t`). A suite
   * registers `after(() => box.cleanup())` in its own body instead: `after` called
   * inside a `before` hook would run as soon as that hook ends.
   */
  static async create(host: CleanupHost | null): Promise<Sandbox> {
    const root = await mkdtemp(join(tmpdir(), "keepwatch-e2e-"));
    const sandbox = new Sandbox(root);
    host?.after(() => sandbox.cleanup());
    return sandbox;
  }

  /** The client state folder every process of this sandbox gets by default. */
  get stateDir(): string {
    return join(this.root, "state");
  }

  /** The user config folder (known servers, local-access files) of this sandbox's processes. */
  get configDir(): string {
    return join(this.root, "config");
  }

  /** What an in-process ServerLink needs to connect as this sandbox's user. */
  security(extra: Partial<ClientSecurity> = {}): ClientSecurity {
    return { insecure: false, secret: null, configDir: this.configDir, ...extra };
  }

  path(...parts: string[]): string {
    return join(this.root, ...parts);
  }

  /** Run `fn` at cleanup, before the folder is removed (e.g. to undo `chattr +i`). */
  onCleanup(fn: () => Awaitable<void>): void {
    this.cleanups.push(fn);
  }

  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      KEEPWATCH_STATE_DIR: this.stateDir,
      KEEPWATCH_CONFIG_DIR: this.configDir,
      ...extra,
    };
    // A secret in the runner's own environment must not leak into the tests.
    if (!("KEEPWATCH_SECRET" in extra)) delete env.KEEPWATCH_SECRET;
    // The runner's own marker would make a child think it is a test file.
    delete env.NODE_TEST_CONTEXT;
    delete env.KEEPWATCH_DEBUG;
    return env;
  }

  spawn(label: string, args: string[], env?: NodeJS.ProcessEnv): KwProcess {
    const proc = new KwProcess(`${label}#${this.processes.length + 1}`, args, env ?? this.env());
    this.processes.push(proc);
    return proc;
  }

  /** Run the CLI to completion; kills it and throws if it takes longer than `timeoutMs`. */
  async run(
    label: string,
    args: string[],
    options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
  ): Promise<RunResult> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    const started = Date.now();
    const proc = this.spawn(label, args, options.env);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      void proc.stop("SIGTERM");
    }, timeoutMs);
    const status = await proc.closed;
    clearTimeout(timer);
    if (timedOut) {
      throw new Error(
        `${proc.label} did not finish within ${timeoutMs} ms and was killed.\n${this.report()}`,
      );
    }
    return {
      code: status.code,
      signal: status.signal,
      stdout: proc.stdout,
      stderr: proc.stderr,
      events: proc.events,
      otherLines: proc.otherLines,
      elapsedMs: Date.now() - started,
      proc,
    };
  }

  /**
   * Start `keepwatch server DEST 127.0.0.1 --json` (port 0 unless given) and wait for its
   * `listening` event.
   */
  async startServer(dest: string, options: { port?: number; args?: string[] } = {}): Promise<ServerHandle> {
    const proc = this.spawn("server", [
      "server",
      dest,
      LOOPBACK,
      "--port",
      String(options.port ?? 0),
      "--json",
      ...(options.args ?? []),
    ]);
    const listening = await this.waitForEvent(proc, "listening", { alive: [proc] });
    const port = listening.port;
    if (typeof port !== "number" || port <= 0) {
      throw new Error(`The server's listening event has no usable port: ${JSON.stringify(listening)}`);
    }
    return {
      proc,
      port,
      dest,
      get events() {
        return proc.events;
      },
      kill: (signal) => proc.stop(signal),
    };
  }

  /**
   * Start `keepwatch client SRC 127.0.0.1 --port P --json` and, unless told otherwise,
   * wait for its first `idle` event.
   */
  async startClient(
    src: string,
    port: number,
    options: { args?: string[]; waitIdle?: boolean; timeoutMs?: number } = {},
  ): Promise<ClientHandle> {
    const proc = this.spawn("client", [
      "client",
      src,
      LOOPBACK,
      "--port",
      String(port),
      "--json",
      ...(options.args ?? []),
    ]);
    if (options.waitIdle ?? true) {
      await this.waitForEvent(proc, "idle", { alive: [proc], timeoutMs: options.timeoutMs ?? 20_000 });
    }
    return {
      proc,
      get events() {
        return proc.events;
      },
      kill: (signal) => proc.stop(signal),
    };
  }

  /** `keepwatch push SRC 127.0.0.1 --port P --json [args]`, run to completion. */
  async push(
    src: string,
    port: number,
    args: string[] = [],
    options: { json?: boolean } = {},
  ): Promise<RunResult> {
    const json = options.json ?? true;
    return this.run("push", [
      "push",
      src,
      LOOPBACK,
      "--port",
      String(port),
      ...(json ? ["--json"] : []),
      ...args,
    ]);
  }

  /**
   * Poll `check` until it returns true. Any other return value (or a thrown error) is the
   * state observed so far; the last one goes into the error thrown at the deadline, with
   * the recent output of every process of this sandbox.
   */
  async waitUntil(
    what: string,
    check: () => Awaitable<true | string>,
    options: WaitOptions = {},
  ): Promise<void> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_MS;
    const deadline = Date.now() + timeoutMs;
    let observed = "(not checked yet)";
    for (;;) {
      try {
        const result = await check();
        if (result === true) return;
        observed = result;
      } catch (error) {
        observed = `the check threw: ${error instanceof Error ? error.message : String(error)}`;
      }
      const dead = options.alive?.find((p) => !p.running);
      if (dead) {
        // Its last output may still be in the pipe: give the close a moment.
        await dead.closed;
        throw new Error(
          `${dead.label} exited while waiting for ${what}.\nLast observed: ${observed}\n${this.report()}`,
        );
      }
      if (Date.now() >= deadline) {
        throw new Error(
          `Timed out after ${timeoutMs} ms waiting for ${what}.\nLast observed: ${observed}\n${this.report()}`,
        );
      }
      await sleep(options.intervalMs ?? POLL_MS);
    }
  }

  /** Wait for an event of `kind` at index `since` or later that `match` accepts; returns it. */
  async waitForEvent(
    proc: KwProcess,
    kind: string,
    options: WaitOptions & { since?: number; match?: (event: KwEvent) => boolean } = {},
  ): Promise<KwEvent> {
    let found: KwEvent | undefined;
    const since = options.since ?? 0;
    await this.waitUntil(
      `a "${kind}" event from ${proc.label}${since > 0 ? ` after its event #${since}` : ""}`,
      () => {
        found = proc.events.slice(since).find((e) => e.event === kind && (options.match?.(e) ?? true));
        if (found) return true;
        const recent = proc.events.slice(Math.max(since, proc.events.length - 5));
        return `${proc.events.length - since} event(s) since #${since}; the latest: ${recent.map((e) => JSON.stringify(e)).join(" | ") || "none"}`;
      },
      options,
    );
    return found as KwEvent;
  }

  /** Wait until the mirror equals the source (see `treeDifferences`). */
  async waitForMirror(
    src: string,
    mirror: string,
    options: WaitOptions & TreeCompareOptions = {},
  ): Promise<void> {
    await this.waitUntil(
      `the mirror ${mirror} to equal the source ${src}`,
      async () => {
        const diffs = await compareTrees(src, mirror, options);
        return diffs.length === 0 ? true : `differences:\n${diffs.map((d) => `  ${d}`).join("\n")}`;
      },
      options,
    );
  }

  /** The recent output of every process this sandbox started. */
  report(): string {
    if (this.processes.length === 0) return "(no processes were started)";
    return this.processes.map((p) => p.describe()).join("\n");
  }

  /** Kill every process, run the cleanup hooks, remove the folder. Safe to call twice. */
  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    await Promise.allSettled(this.processes.map((p) => p.stop("SIGTERM")));
    for (const fn of this.cleanups.reverse()) {
      try {
        await fn();
      } catch {
        // keep going: the folder must still be removed
      }
    }
    await rm(this.root, { recursive: true, force: true, maxRetries: 3 });
  }
}

/** Whether anything (a file, a folder, a link to something) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolvePromise) => setTimeout(resolvePromise, ms));
}

/** A port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolvePromise, reject) => {
    server.once("error", reject);
    server.listen(0, LOOPBACK, () => resolvePromise());
  });
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  await new Promise<void>((resolvePromise) => server.close(() => resolvePromise()));
  if (port === 0) throw new Error("could not find a free port");
  return port;
}

// ---------------------------------------------------------------------------------------
// Folder trees

export interface TreeEntry {
  kind: "file" | "dir" | "symlink" | "other";
  /** Permission bits (mode & 0o7777). */
  mode: number;
  size: number;
  mtimeMs: number;
  /** SHA-256 of a file's content; "" for other kinds. */
  sha256: string;
}

export interface TreeCompareOptions {
  /** Compare the permission bits of folders too (default true). */
  folderModes?: boolean;
}

/** Every entry below `root` (not `root` itself), keyed by its "/"-separated relative path. */
export async function readTree(root: string): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(rel === "" ? root : join(root, rel))).sort();
    for (const name of names) {
      const child = rel === "" ? name : `${rel}/${name}`;
      const abs = join(root, child);
      const st = await lstat(abs);
      const base = { mode: st.mode & 0o7777, size: st.size, mtimeMs: st.mtimeMs, sha256: "" };
      if (st.isDirectory()) {
        out.set(child, { ...base, kind: "dir", size: 0 });
        await walk(child);
      } else if (st.isFile()) {
        const sha256 = createHash("sha256")
          .update(await readFile(abs))
          .digest("hex");
        out.set(child, { ...base, kind: "file", sha256 });
      } else {
        out.set(child, { ...base, kind: st.isSymbolicLink() ? "symlink" : "other" });
      }
    }
  };
  await walk("");
  return out;
}

/**
 * How `actual` differs from `expected`: missing and extra paths, kinds, and for files the
 * bytes (SHA-256), size, permission bits and mtime to the millisecond (|Δ| < 1 ms: the
 * mtime crosses the wire as a float of milliseconds, so nanoseconds may round either way).
 * Folders: the set of paths (empty ones included) and, unless disabled, permission bits.
 */
export function treeDifferences(
  expected: Map<string, TreeEntry>,
  actual: Map<string, TreeEntry>,
  options: TreeCompareOptions = {},
): string[] {
  const diffs: string[] = [];
  const show = (path: string) => JSON.stringify(path);
  const octal = (mode: number) => `0o${mode.toString(8)}`;
  for (const [path, want] of expected) {
    const got = actual.get(path);
    if (!got) {
      diffs.push(`missing in mirror: ${show(path)} (${want.kind})`);
      continue;
    }
    if (got.kind !== want.kind) {
      diffs.push(`${show(path)} is a ${got.kind} in the mirror, a ${want.kind} in the source`);
      continue;
    }
    if (want.kind === "file") {
      if (got.size !== want.size) diffs.push(`${show(path)}: size ${got.size}, expected ${want.size}`);
      else if (got.sha256 !== want.sha256) diffs.push(`${show(path)}: content differs`);
      if (got.mode !== want.mode)
        diffs.push(`${show(path)}: mode ${octal(got.mode)}, expected ${octal(want.mode)}`);
      if (Math.abs(got.mtimeMs - want.mtimeMs) >= 1) {
        diffs.push(
          `${show(path)}: mtime ${new Date(got.mtimeMs).toISOString()} (${got.mtimeMs}), expected ${new Date(want.mtimeMs).toISOString()} (${want.mtimeMs})`,
        );
      }
    } else if (want.kind === "dir" && (options.folderModes ?? true) && got.mode !== want.mode) {
      diffs.push(`folder ${show(path)}: mode ${octal(got.mode)}, expected ${octal(want.mode)}`);
    }
  }
  for (const [path, got] of actual) {
    if (!expected.has(path)) diffs.push(`extra in mirror: ${show(path)} (${got.kind})`);
  }
  return diffs.length > 25 ? [...diffs.slice(0, 25), `... and ${diffs.length - 25} more`] : diffs;
}

/** Differences between the source tree and its mirror; an unreadable mirror is one too. */
export async function compareTrees(
  src: string,
  mirror: string,
  options: TreeCompareOptions = {},
): Promise<string[]> {
  const expected = await readTree(src);
  let actual: Map<string, TreeEntry>;
  try {
    actual = await readTree(mirror);
  } catch (error) {
    return [`the mirror cannot be read: ${error instanceof Error ? error.message : String(error)}`];
  }
  return treeDifferences(expected, actual, options);
}

/** Lines of stderr that look like a JavaScript stack trace. */
export function stackLines(stderr: string): string[] {
  return stderr.split("\n").filter((line) => /^\s+at /.test(line));
}

/** A plain TCP listener on 127.0.0.1 that is not keepwatch; counts who connects. */
export interface PlainListener {
  port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Bytes each connection sent, by connection order. */
  readonly received: Buffer[];
  close(): Promise<void>;
}

/**
 * Listen on a free loopback port; `onData` (optional) answers what a connection sends.
 * Register `close` for cleanup (Sandbox.onCleanup).
 */
export async function startPlainListener(
  onData?: (socket: Socket, data: Buffer) => void,
): Promise<PlainListener> {
  const received: Buffer[] = [];
  const sockets = new Set<Socket>();
  let connections = 0;
  const server = createServer((socket) => {
    const index = connections++;
    received[index] = Buffer.alloc(0);
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    socket.on("data", (data: Buffer) => {
      received[index] = Buffer.concat([received[index] ?? Buffer.alloc(0), data]);
      onData?.(socket, data);
    });
  });
  await new Promise<void>((resolvePromise, reject) => {
    server.once("error", reject);
    server.listen(0, LOOPBACK, () => resolvePromise());
  });
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    port,
    get connections() {
      return connections;
    },
    received,
    close: () =>
      new Promise<void>((resolvePromise) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolvePromise());
      }),
  };
}
