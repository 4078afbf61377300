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
import { diskEntry, isUnchanged, type Operation, type ScanSummary, scan } from "./scanner.js";
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

/**
 * A scan waits while this many operations are queued (not counting those running): enough
 * to keep the window full, and the client's memory then does not grow with the tree.
 */
export const QUEUE_LIMIT = 1024;

export class Worker {
  private readonly transfer: FileTransfer;
  private readonly locks = new PathLocks();
  private readonly queue = new Fifo<Operation>();
  private running = 0;
  private reconciling = 0;
  private idleWaiters: (() => void)[] = [];
  /** Scans waiting for the queue to shrink below QUEUE_LIMIT. */
  private roomWaiters: (() => void)[] = [];
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
  async fullScan(force = false): Promise<ScanSummary> {
    this.reporter.emit({ kind: "scan-start", root: this.root });
    const summary = await this.reconcile("", force);
    this.reporter.emit({ kind: "scan-done", ...summary });
    return summary;
  }

  /**
   * Look at `path` (and below it), each folder once every operation already running in
   * it is answered, so that the comparison sees the state those operations recorded. The
   * operations are queued folder by folder, and the scan waits while the queue is full.
   */
  async reconcile(path: string, force = false): Promise<ScanSummary> {
    this.reconciling++;
    try {
      return await scan(
        this.root,
        path,
        this.state,
        {
          operations: (ops) => this.enqueue(ops),
          problem: (problemPath, reason) => this.hooks.problem(problemPath, reason),
        },
        { force, lock: (folder) => this.locks.acquire(folder) },
      );
    } finally {
      this.reconciling--;
      this.checkIdle();
    }
  }

  /** Queue `operations`; resolves once there is room for more, or to false when the link is lost. */
  private async enqueue(operations: Operation[]): Promise<boolean> {
    let files = 0;
    let bytes = 0;
    for (const op of operations) {
      if (op.op !== "put") continue;
      files++;
      bytes += op.size;
    }
    if (files > 0) this.reporter.emit({ kind: "queued", files, bytes });
    this.queue.pushAll(operations);
    this.pump();
    while (this.queue.length >= QUEUE_LIMIT && !this.link.isLost) {
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    }
    return !this.link.isLost;
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
    if (this.queue.length < QUEUE_LIMIT || this.link.isLost) {
      for (const resolve of this.roomWaiters.splice(0)) resolve();
    }
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
    const outcome = await this.transfer.put(path, async (entry) => {
      if (!force && isUnchanged(entry, this.state.get(path))) return true;
      // From here on the server may hold the file even if its answer never arrives.
      await this.state.markSent(path);
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
    await this.state.markSent(path);
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
