// The backup client: `push` makes one pass and reports whether everything was
// acknowledged; `watch` makes a pass and then follows every change until stopped,
// reconnecting with backoff whenever the server goes away.

import { stat } from "node:fs/promises";
import { errnoCode, KeepwatchError } from "../errors.js";
import type { Reporter } from "../ui/events.js";
import { Debouncer } from "./debouncer.js";
import { defaultClientName, ServerLink } from "./link.js";
import type { ClientSecurity } from "./security.js";
import { ClientState } from "./state.js";
import { type WatchHandle, watchTree } from "./watcher.js";
import { Worker } from "./worker.js";

export interface BackupOptions {
  /** Absolute path of SRC. */
  root: string;
  set: string;
  host: string;
  port: number;
  stateDir: string;
  security: ClientSecurity;
  reporter: Reporter;
  /** A changed file is sent once it has been quiet this long (ms). */
  quietMs?: number;
  /** ...or at the latest this long after its first change (ms). */
  maxWaitMs?: number;
}

export interface PushSummary {
  files: number;
  bytes: number;
  /** Paths that could not be backed up, with the reason. */
  problems: { path: string; reason: string }[];
}

const PUSH_ATTEMPTS_FOR_CHANGING_FILES = 5;
const RETRY_INTERVAL_MS = 5_000;
const POLL_INTERVAL_MS = 10_000;
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 15_000;

export async function checkSource(root: string): Promise<void> {
  try {
    const st = await stat(root);
    if (!st.isDirectory()) {
      throw new KeepwatchError(
        "KW_SOURCE_NOT_DIR",
        `The source ${root} is not a folder; give the folder to back up.`,
      );
    }
  } catch (error) {
    if (error instanceof KeepwatchError) throw error;
    const code = errnoCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new KeepwatchError(
        "KW_SOURCE_MISSING",
        `The source folder ${root} does not exist; check the path.`,
      );
    }
    throw new KeepwatchError(
      "KW_SOURCE_UNREADABLE",
      `The source folder ${root} cannot be read (${code ?? String(error)}); check its permissions.`,
    );
  }
}

export class BackupClient {
  private state: ClientState | null = null;
  private stateStoreId = "";
  private readonly reported = new Set<string>();
  private readonly problems = new Map<string, string>();

  constructor(private readonly options: BackupOptions) {}

  private async connect(): Promise<Worker> {
    const { host, port, set, root, stateDir, reporter } = this.options;
    const link = await ServerLink.connect({
      host,
      port,
      set,
      clientName: defaultClientName(),
      security: this.options.security,
    });
    if (!this.state || this.stateStoreId !== link.welcome.storeId) {
      this.state?.close();
      this.state = ClientState.open(stateDir, link.welcome.storeId, set, root);
      this.stateStoreId = link.welcome.storeId;
    }
    reporter.emit({ kind: "connected", host, port, set });
    return new Worker(root, link, this.state, reporter, {
      retryLater: (path, reason, soon) => this.onRetry(path, reason, soon),
      problem: (path, reason) => this.onProblem(path, reason),
    });
  }

  private retryHandler: ((path: string, reason: string, soon: boolean) => void) | null = null;

  private onRetry(path: string, reason: string, soon: boolean): void {
    if (this.retryHandler) this.retryHandler(path, reason, soon);
    else this.problems.set(path, reason);
  }

  /** Report each problem once; push mode also lists them at the end. */
  private onProblem(path: string, reason: string): void {
    this.problems.set(path, reason);
    this.reportOnce(path, reason, false);
  }

  private reportOnce(path: string, reason: string, retry: boolean): void {
    const key = `${path}\0${reason}`;
    if (this.reported.has(key)) return;
    this.reported.add(key);
    this.options.reporter.emit({ kind: "file-skipped", path, reason, retry });
  }

  /** One pass: send everything that differs (all files with `force`), then say goodbye. */
  async push(force: boolean): Promise<PushSummary> {
    await checkSource(this.options.root);
    const worker = await this.connect();
    const pending = new Map<string, string>();
    this.retryHandler = (path, reason) => pending.set(path, reason);
    try {
      await worker.fullScan(force);
      await worker.whenIdle();
      for (let attempt = 1; attempt < PUSH_ATTEMPTS_FOR_CHANGING_FILES && pending.size > 0; attempt++) {
        const paths = [...pending.keys()];
        pending.clear();
        await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
        await Promise.all(paths.map((path) => worker.reconcile(path, force)));
        await worker.whenIdle();
      }
      if (worker.link.isLost) {
        throw new KeepwatchError(
          "KW_CONNECTION_LOST",
          "The connection to the server was lost before everything was acknowledged; run the push again.",
        );
      }
      for (const [path, reason] of pending) this.onProblem(path, reason);
      await worker.link.goodbye();
      return {
        files: worker.totals.files,
        bytes: worker.totals.bytes,
        problems: [...this.problems].map(([path, reason]) => ({ path, reason })),
      };
    } finally {
      worker.link.close();
      this.close();
    }
  }

  /** Back up now, then follow every change until `signal` aborts. */
  async watch(signal: AbortSignal): Promise<void> {
    const { root, reporter } = this.options;
    await checkSource(root);
    let worker: Worker | null = null;
    const retry = new Set<string>();
    const debouncer = new Debouncer({
      quietMs: this.options.quietMs ?? 30,
      maxWaitMs: this.options.maxWaitMs ?? 2000,
      onQuiet: (paths) => {
        if (!worker || worker.link.isLost) return; // the rescan after reconnecting covers them
        for (const path of collapse(paths)) void worker.reconcile(path).catch((e) => this.onTrouble(e));
      },
    });
    // A file that changed while read is looked at again once quiet; a server refusal (a
    // full disk) later, and the person hears of it once per path and reason.
    this.retryHandler = (path, reason, soon) => {
      if (soon) {
        debouncer.touch(path);
        return;
      }
      retry.add(path);
      this.reportOnce(path, reason, true);
    };
    let watch: WatchHandle | null = null;
    let pollTimer: NodeJS.Timeout | null = null;
    const rescan = () => {
      if (worker && !worker.link.isLost) void worker.fullScan().catch((e) => this.onTrouble(e));
    };
    const pollInstead = (message: string) => {
      if (pollTimer) return;
      reporter.emit({
        kind: "warning",
        message: `Watching is incomplete (${message}); the folder is rescanned every ${POLL_INTERVAL_MS / 1000} s instead.`,
      });
      pollTimer = setInterval(rescan, POLL_INTERVAL_MS);
      rescan();
    };
    try {
      watch = await watchTree(root, {
        onPaths: (paths) => {
          for (const path of paths) debouncer.touch(path);
        },
        onTrouble: pollInstead,
      });
    } catch (error) {
      pollInstead(error instanceof Error ? error.message : String(error));
    }
    const retryTimer = setInterval(() => {
      if (!worker || worker.link.isLost || retry.size === 0) return;
      const paths = [...retry];
      retry.clear();
      for (const path of collapse(paths)) void worker.reconcile(path).catch((e) => this.onTrouble(e));
    }, RETRY_INTERVAL_MS);
    const idleCheck = setInterval(() => this.reportIdle(worker, debouncer, retry), 50);

    let backoff = BACKOFF_FIRST_MS;
    try {
      while (!signal.aborted) {
        try {
          worker = await this.connect();
          backoff = BACKOFF_FIRST_MS;
          this.idleReported = false;
          await worker.fullScan();
        } catch (error) {
          if (error instanceof KeepwatchError && error.code === "KW_SOURCE_MISSING") throw error;
          if (error instanceof KeepwatchError && isFatalRefusal(error.code)) throw error;
          worker?.link.close();
          worker = null;
          const reason = error instanceof Error ? error.message : String(error);
          reporter.emit({ kind: "disconnected", reason, retryInMs: backoff });
          await sleep(backoff, signal);
          backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
          continue;
        }
        const current = worker;
        let onAbort = () => {};
        const lost = await new Promise<KeepwatchError | null>((resolve) => {
          onAbort = () => resolve(null);
          current.link.onLost((error) => resolve(error));
          signal.addEventListener("abort", onAbort, { once: true });
        });
        // One listener per connection would pile up over many reconnects.
        signal.removeEventListener("abort", onAbort);
        if (lost === null) break;
        if (isFatalRefusal(lost.code)) throw lost;
        worker = null;
        reporter.emit({ kind: "disconnected", reason: lost.message, retryInMs: backoff });
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    } finally {
      clearInterval(retryTimer);
      clearInterval(idleCheck);
      if (pollTimer) clearInterval(pollTimer);
      debouncer.stop();
      await watch?.close();
      if (worker && !worker.link.isLost) {
        // Let started transfers finish briefly, then leave cleanly.
        await Promise.race([worker.whenIdle(), sleep(3000)]);
        await worker.link.goodbye().catch(() => {});
      }
      worker?.link.close();
      this.close();
    }
  }

  private idleReported = false;

  private reportIdle(worker: Worker | null, debouncer: Debouncer, retry: Set<string>): void {
    if (!worker || worker.link.isLost) return;
    const idle = worker.isIdle && debouncer.size === 0 && retry.size === 0;
    if (idle && !this.idleReported) {
      this.idleReported = true;
      this.options.reporter.emit({ kind: "idle", files: worker.totals.files, bytes: worker.totals.bytes });
    } else if (!idle) {
      this.idleReported = false;
    }
  }

  private onTrouble(error: unknown): void {
    if (error instanceof KeepwatchError && error.code === "KW_SOURCE_MISSING") {
      this.options.reporter.emit({ kind: "error", code: error.code, message: error.message });
      return;
    }
    this.options.reporter.emit({
      kind: "warning",
      message: `A scan failed (${error instanceof Error ? error.message : String(error)}); it will be retried.`,
    });
  }

  private close(): void {
    this.state?.close();
    this.state = null;
  }
}

/** Errors after which retrying cannot help: the server refuses this client as it is. */
function isFatalRefusal(code: string): boolean {
  return [
    "KW_VERSION_MISMATCH",
    "KW_BAD_SET_NAME",
    "KW_NOT_KEEPWATCH",
    "KW_AUTH_FAILED",
    "KW_FORBIDDEN",
    "KW_FINGERPRINT_MISMATCH",
    "KW_TLS_FAILED",
  ].includes(code);
}

/** Drop paths that lie below another path in the list (the ancestor's scan covers them). */
function collapse(paths: string[]): string[] {
  const unique = new Set(paths);
  return [...unique].filter((path) => {
    for (let i = path.indexOf("/"); i >= 0; i = path.indexOf("/", i + 1)) {
      if (unique.has(path.slice(0, i))) return false;
    }
    return true;
  });
}

/** Wait `ms`, or less if `signal` aborts; the abort listener goes with the wait. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
