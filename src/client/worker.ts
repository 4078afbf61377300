// Everything a client does over one live connection: turns "look at this path" into
// operations (by comparing disk and state), runs them with at most `window` in flight
// and never two on overlapping paths, and records each acknowledgement in the state.

import { lstat } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode, KeepwatchError, RemoteError } from "../errors.js";
import { PathLocks } from "../protocol/path-locks.js";
import type { Reporter } from "../ui/events.js";
import { Fifo } from "./fifo.js";
import type { ServerLink } from "./link.js";
import { diskEntry, isUnchanged, type Operation, type ScanResult, scan } from "./scanner.js";
import type { ClientState } from "./state.js";
import { ChunkedTransfer, type FileTransfer } from "./transfer.js";

export interface WorkerHooks {
  /**
   * Look at `path` again later: `soon` when it changed while it was read, otherwise
   * (the server refused it for now, e.g. a full disk) after the retry interval.
   */
  retryLater(path: string, reason: string, soon: boolean): void;
  /** A problem with one path that will not go away by itself; reported once by the caller. */
  problem(path: string, reason: string): void;
}

export interface WorkerTotals {
  files: number;
  bytes: number;
  /** Content bytes that travelled (the rest of `bytes` was reused from the server). */
  sentBytes: number;
  failures: number;
}

export class Worker {
  private readonly transfer: FileTransfer;
  private readonly locks = new PathLocks();
  private readonly queue = new Fifo<Operation>();
  private running = 0;
  private reconciling = 0;
  private idleWaiters: (() => void)[] = [];
  readonly totals: WorkerTotals = { files: 0, bytes: 0, sentBytes: 0, failures: 0 };

  constructor(
    private readonly root: string,
    readonly link: ServerLink,
    private readonly state: ClientState,
    private readonly reporter: Reporter,
    private readonly hooks: WorkerHooks,
  ) {
    this.transfer = new ChunkedTransfer(root, link, reporter, state);
  }

  get isIdle(): boolean {
    return this.queue.length === 0 && this.running === 0 && this.reconciling === 0;
  }

  /** Resolves when nothing is queued, running or being compared. */
  whenIdle(): Promise<void> {
    if (this.isIdle || this.link.isLost) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Compare all of SRC with the state and queue what differs. */
  async fullScan(force = false): Promise<ScanResult> {
    this.reporter.emit({ kind: "scan-start", root: this.root });
    const result = await this.reconcile("", force);
    const changed = result.operations.filter((op) => op.op === "put");
    this.reporter.emit({
      kind: "scan-done",
      files: result.files,
      bytes: result.bytes,
      changedFiles: changed.length,
      changedBytes: changed.reduce((sum, op) => sum + (op.op === "put" ? op.size : 0), 0),
    });
    return result;
  }

  /**
   * Look at `path` (and below it) once every operation already running there is
   * answered, so that the comparison sees the state those operations recorded.
   */
  async reconcile(path: string, force = false): Promise<ScanResult> {
    this.reconciling++;
    try {
      const release = await this.locks.acquire(path);
      let result: ScanResult;
      try {
        result = await scan(this.root, path, this.state, force);
      } finally {
        release();
      }
      for (const problem of result.problems) this.hooks.problem(problem.path, problem.reason);
      this.enqueue(result.operations);
      return result;
    } finally {
      this.reconciling--;
      this.checkIdle();
    }
  }

  private enqueue(operations: Operation[]): void {
    if (operations.length === 0) return;
    const puts = operations.filter((op) => op.op === "put");
    if (puts.length > 0) {
      this.reporter.emit({
        kind: "queued",
        files: puts.length,
        bytes: puts.reduce((sum, op) => sum + (op.op === "put" ? op.size : 0), 0),
      });
    }
    this.queue.pushAll(operations);
    this.pump();
  }

  private pump(): void {
    while (!this.link.isLost && this.running < this.link.welcome.window && this.queue.length > 0) {
      const op = this.queue.shift() as Operation;
      this.running++;
      void this.execute(op).finally(() => {
        this.running--;
        this.pump();
        this.checkIdle();
      });
    }
    if (this.link.isLost) this.queue.clear();
  }

  private checkIdle(): void {
    if (!this.isIdle && !this.link.isLost) return;
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  private async execute(op: Operation): Promise<void> {
    const release = await this.locks.acquire(op.path);
    try {
      if (this.link.isLost) return;
      if (op.op === "put") await this.put(op.path, op.force);
      else if (op.op === "mkdir") await this.mkdir(op.path);
      else await this.delete(op.path);
    } catch (error) {
      this.onFailure(op, error);
    } finally {
      release();
    }
  }

  private async put(path: string, force: boolean): Promise<void> {
    const outcome = await this.transfer.put(path, (entry) => {
      if (!force && isUnchanged(entry, this.state.get(path))) return true;
      // From here on the server may hold the file even if its answer never arrives.
      this.state.markSent(path);
      return false;
    });
    if (outcome.status === "stored") {
      const { entry, sha256, chunks, marks, sentBytes } = outcome;
      const { size, mtimeMs, mode, ino, ctimeMs } = entry;
      this.state.recordFile(path, { size, mtimeMs, mode, ino, ctimeMs, sha256, chunks, marks });
      this.totals.files++;
      this.totals.bytes += size;
      this.totals.sentBytes += sentBytes;
      this.reporter.emit({ kind: "file-done", path, op: "put", size, sentBytes });
    } else if (outcome.status === "changed") {
      this.hooks.retryLater(path, "it changed while it was read", true);
    }
  }

  private async mkdir(path: string): Promise<void> {
    const st = await lstatOrNull(join(this.root, path));
    const entry = st ? diskEntry(path, st) : null;
    // Gone or no longer a folder: the event that changed it brings the right operation.
    if (entry?.kind !== "dir" || isUnchanged(entry, this.state.get(path))) return;
    this.state.markSent(path);
    await this.transfer.mkdir(path, entry.mode);
    this.state.recordFolder(path, entry.mode);
    this.reporter.emit({ kind: "file-done", path, op: "mkdir", size: 0 });
  }

  private async delete(path: string): Promise<void> {
    // Something new stands there again: its own event sends it, and the server replaces.
    if (await lstatOrNull(join(this.root, path))) return;
    await this.transfer.delete(path);
    this.state.removeTree(path);
    this.reporter.emit({ kind: "file-done", path, op: "delete", size: 0 });
  }

  private onFailure(op: Operation, error: unknown): void {
    if (this.link.isLost) return; // the whole connection failed; a rescan follows
    this.totals.failures++;
    if (error instanceof RemoteError) {
      // Refusals that depend on the server's condition may pass later; others will not.
      // KW_CHUNK_MISSING: a chunk the server counted as stored when it answered NEED was
      // lost since (a pack write that failed on a full disk); sent again, it asks for it.
      const transient = ["KW_DISK_FULL", "KW_SERVER_IO", "KW_CHUNK_MISSING"].includes(error.code);
      if (transient) this.hooks.retryLater(op.path, error.message, false);
      else this.hooks.problem(op.path, error.message);
      return;
    }
    if (error instanceof KeepwatchError) {
      this.hooks.problem(op.path, error.message);
      return;
    }
    const code = errnoCode(error);
    this.hooks.problem(op.path, `it cannot be read (${code ?? String(error)})`);
  }
}

async function lstatOrNull(path: string) {
  try {
    return await lstat(path);
  } catch (error) {
    const code = errnoCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") return null;
    throw error;
  }
}
