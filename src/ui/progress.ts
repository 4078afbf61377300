// The progress model: folds the event stream into totals, the files in flight, a transfer
// rate and an ETA that printers read. It knows nothing of terminals or of time except
// through the clock it is given.

import type { Operation, ProgressEvent } from "./events.js";

export interface Totals {
  files: number;
  bytes: number;
}

/**
 * offline: the client lost its server; scanning: the client walks its source folder;
 * busy: work is queued or in flight; idle: the client said everything is backed up;
 * waiting: nothing to do, but no idle confirmation either (the server, or a client starting).
 */
export type ProgressState = "offline" | "scanning" | "busy" | "idle" | "waiting";

export interface FileInFlight {
  path: string;
  /** bytes moved so far */
  bytes: number;
  size: number;
  startedAt: number;
  /** this file's average rate in bytes/s; null until it has run long enough to say */
  rate: number | null;
}

export interface ProgressSnapshot {
  state: ProgressState;
  /** work announced in the current batch, never less than what is done or in flight */
  queued: Totals;
  /** work finished in the current batch */
  done: Totals;
  /** the most recently started file still in flight */
  current: FileInFlight | null;
  /** files under way and the bytes of them moved so far */
  inFlight: Totals;
  /** bytes/s over the sliding window; null when too little time has passed to say */
  rate: number | null;
  /** seconds until the batch's remaining bytes are moved at `rate`; null when unknown */
  etaSeconds: number | null;
  lastDone: { path: string; op: Operation; size: number } | null;
  /** what the client's last `idle` event reported as backed up */
  backedUp: Totals | null;
  scanRoot: string | null;
  /** clock time at which the client retries its server (state offline) */
  retryAt: number | null;
  /** server: clients connected now */
  peers: number;
}

export interface ProgressModelOptions {
  /** milliseconds since the epoch; injected so tests control time */
  now?: () => number;
  /** how far back the rate looks */
  windowMs?: number;
}

interface Sample {
  t: number;
  moved: number;
}

/** Below this much elapsed time a rate is mostly noise, so none is given. */
const MIN_RATE_SPAN_MS = 500;
/** Samples closer together than this are merged, bounding memory at high event rates. */
const SAMPLE_BUCKET_MS = 100;

export class ProgressModel {
  private readonly now: () => number;
  private readonly windowMs: number;

  private queued: Totals = { files: 0, bytes: 0 };
  private done: Totals = { files: 0, bytes: 0 };
  /** insertion order is start order, so the last entry is the current file */
  private readonly inFlight = new Map<string, { bytes: number; size: number; startedAt: number }>();
  private lastDone: ProgressSnapshot["lastDone"] = null;
  private backedUp: Totals | null = null;
  private idle = false;
  private scanRoot: string | null = null;
  private retryAt: number | null = null;
  private peers = 0;

  /** bytes moved since the model was made; the rate is its slope */
  private moved = 0;
  private samples: Sample[] = [];

  constructor(options: ProgressModelOptions = {}) {
    this.now = options.now ?? Date.now;
    this.windowMs = options.windowMs ?? 5000;
  }

  /** Folds one event into the model. */
  apply(event: ProgressEvent): void {
    const now = this.now();
    switch (event.kind) {
      case "connected":
        this.retryAt = null;
        break;
      case "disconnected":
        // The transfers in flight died with the connection; the client sends them again.
        this.retryAt = now + event.retryInMs;
        this.inFlight.clear();
        break;
      case "peer-connected":
        this.peers += 1;
        break;
      case "peer-disconnected":
        this.peers = Math.max(0, this.peers - 1);
        // Files carry no peer, so only when the last client leaves is it certain that
        // nothing announced will still arrive.
        if (this.peers === 0) this.settle();
        break;
      case "scan-start":
        this.scanRoot = event.root;
        break;
      case "scan-done":
        this.scanRoot = null;
        break;
      case "queued":
        this.beginWork();
        this.queued.files += event.files;
        this.queued.bytes += event.bytes;
        break;
      case "file-start":
        this.beginWork();
        this.markActivity(now);
        this.inFlight.delete(event.path);
        this.inFlight.set(event.path, { bytes: 0, size: event.size, startedAt: now });
        break;
      case "file-progress": {
        const file = this.inFlight.get(event.path);
        if (file === undefined) break;
        // A smaller count means the transfer restarted; those bytes were already counted.
        if (event.bytes > file.bytes) this.addMoved(event.bytes - file.bytes, now);
        file.bytes = event.bytes;
        file.size = event.size;
        break;
      }
      case "file-done": {
        const file = this.inFlight.get(event.path);
        this.inFlight.delete(event.path);
        const moves = event.op === "put" || event.op === "restore";
        if (moves) {
          const rest = event.size - (file?.bytes ?? 0);
          if (rest > 0) this.addMoved(rest, now);
        }
        this.done.files += 1;
        this.done.bytes += moves ? event.size : 0;
        this.lastDone = { path: event.path, op: event.op, size: event.size };
        break;
      }
      case "file-skipped": {
        // Whether or not it is retried, it leaves this count; a retry announces it again
        // or is counted back in when its transfer starts.
        const file = this.inFlight.get(event.path);
        this.inFlight.delete(event.path);
        this.queued.files = Math.max(0, this.queued.files - 1);
        this.queued.bytes = Math.max(0, this.queued.bytes - (file?.size ?? 0));
        break;
      }
      case "idle":
        this.backedUp = { files: event.files, bytes: event.bytes };
        this.settle();
        this.idle = true;
        break;
      default:
        break;
    }
  }

  /** What printers show, computed at the clock's current time. */
  snapshot(): ProgressSnapshot {
    const now = this.now();
    let flightFiles = 0;
    let flightBytes = 0;
    let flightSizes = 0;
    let current: FileInFlight | null = null;
    for (const [path, file] of this.inFlight) {
      flightFiles += 1;
      flightBytes += file.bytes;
      flightSizes += file.size;
      current = { path, ...file, rate: ratePerSecond(file.bytes, now - file.startedAt) };
    }
    // Producers need not announce every file (a server may see transfers unannounced), so
    // the queue is at least what is already done or under way.
    const queued = {
      files: Math.max(this.queued.files, this.done.files + flightFiles),
      bytes: Math.max(this.queued.bytes, this.done.bytes + flightSizes),
    };
    const done = { ...this.done };
    const state = this.state(queued);
    const rate = this.rate(now);
    let etaSeconds: number | null = null;
    if (state === "busy" && rate !== null && rate > 0) {
      etaSeconds = Math.max(0, queued.bytes - done.bytes - flightBytes) / rate;
    }
    return {
      state,
      queued,
      done,
      current,
      inFlight: { files: flightFiles, bytes: flightBytes },
      rate,
      etaSeconds,
      lastDone: this.lastDone,
      backedUp: this.backedUp,
      scanRoot: this.scanRoot,
      retryAt: this.retryAt,
      peers: this.peers,
    };
  }

  private state(queued: Totals): ProgressState {
    if (this.retryAt !== null) return "offline";
    if (this.scanRoot !== null) return "scanning";
    if (this.inFlight.size > 0 || queued.files > this.done.files) return "busy";
    return this.idle ? "idle" : "waiting";
  }

  /** Ends the batch: nothing announced is still to come. */
  private settle(): void {
    this.inFlight.clear();
    this.queued = { ...this.done };
  }

  /** The first work after an idle starts a new batch, so bars count from zero again. */
  private beginWork(): void {
    if (!this.idle) return;
    this.idle = false;
    this.queued = { files: 0, bytes: 0 };
    this.done = { files: 0, bytes: 0 };
  }

  /**
   * After a pause longer than the window the old samples say nothing about the new
   * transfer, so the window restarts here rather than averaging over the pause.
   */
  private markActivity(now: number): void {
    const last = this.samples.at(-1);
    if (last === undefined || last.t < now - this.windowMs) this.samples = [{ t: now, moved: this.moved }];
  }

  private addMoved(bytes: number, now: number): void {
    this.markActivity(now);
    this.moved += bytes;
    const last = this.samples.at(-1);
    // The first sample is the window's anchor and must keep the count from before.
    if (last !== undefined && this.samples.length > 1 && now - last.t < SAMPLE_BUCKET_MS) {
      last.moved = this.moved;
    } else {
      this.samples.push({ t: now, moved: this.moved });
    }
    const cutoff = now - this.windowMs;
    let drop = 0;
    while (drop + 1 < this.samples.length && (this.samples[drop + 1]?.t ?? now) <= cutoff) drop += 1;
    if (drop > 0) this.samples.splice(0, drop);
  }

  /** Bytes/s from the newest sample at least a window old (or the oldest kept) to now. */
  private rate(now: number): number | null {
    const cutoff = now - this.windowMs;
    let anchor: Sample | undefined;
    for (const sample of this.samples) {
      if (anchor !== undefined && sample.t > cutoff) break;
      anchor = sample;
    }
    if (anchor === undefined) return null;
    return ratePerSecond(this.moved - anchor.moved, now - anchor.t);
  }
}

function ratePerSecond(bytes: number, elapsedMs: number): number | null {
  return elapsedMs < MIN_RATE_SPAN_MS ? null : (bytes * 1000) / elapsedMs;
}
