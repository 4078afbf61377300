// The plain printer: one timestamped line of text per meaningful event, for logs and pipes;
// also the wording of events that the TTY printer reuses for its lines above the bars.

import type { ProgressEvent, Reporter } from "./events.js";

/** Which end of the connection is printing (a restore is a client receiving); events read differently on each. */
export type Side = "client" | "server" | "restore";

/** Where lines go; a Node writable stream is one. */
export interface LineSink {
  write(chunk: string): unknown;
}

const UNITS = ["KiB", "MiB", "GiB", "TiB", "PiB"];

/** `12 B`, `1.5 KiB`, `3.0 GiB`: binary units, one decimal above bytes. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 1024) return `${Math.max(0, Math.round(bytes || 0))} B`;
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${UNITS[unit]}`;
}

/** `42s`, `3m05s`, `2h03m`, `4d07h`: short enough for a status line. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  const pad = (n: number) => String(n).padStart(2, "0");
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor(s / 3600) % 24)}h`;
}

function isControl(code: number): boolean {
  return code < 0x20 || (code >= 0x7f && code <= 0x9f);
}

/**
 * The text as is, or JSON-quoted when it holds control characters: a newline in a file
 * name must not split a log line, and an escape sequence must not reach the terminal.
 */
export function printable(text: string): string {
  let clean = true;
  for (let i = 0; i < text.length && clean; i++) clean = !isControl(text.charCodeAt(i));
  if (clean) return text;
  // JSON.stringify escapes C0 but leaves DEL and C1, which terminals also interpret.
  let quoted = "";
  for (const char of JSON.stringify(text)) {
    const code = char.charCodeAt(0);
    quoted += isControl(code) ? `\\u${code.toString(16).padStart(4, "0")}` : char;
  }
  return quoted;
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${printable(host)}]:${port}` : `${printable(host)}:${port}`;
}

/**
 * The sentence for one event, or null for events that only move bars (queued, file-start,
 * file-progress). The `idle` sentence is given; printers decide when it is worth a line.
 */
/** ", 97% reused" when some of a file's bytes did not have to travel. */
function reuse(event: { size: number; sentBytes?: number }): string {
  if (event.sentBytes === undefined || event.size === 0 || event.sentBytes >= event.size) return "";
  const percent = Math.floor(((event.size - event.sentBytes) / event.size) * 1000) / 10;
  return `, ${formatBytes(event.sentBytes)} sent, ${percent}% reused`;
}

export function describeEvent(event: ProgressEvent, side: Side): string | null {
  switch (event.kind) {
    case "listening":
      return (
        `listening on ${hostPort(event.host, event.port)}, mirroring into ${printable(event.dest)}, ` +
        (event.fingerprint === null
          ? "WITHOUT TLS (--insecure): anyone on the network can read and change what travels"
          : `TLS fingerprint ${event.fingerprint}`)
      );
    case "peer-connected":
      return `client ${printable(event.client)} (${printable(event.principal)}) connected from ${printable(event.peer)}, set ${printable(event.set)}`;
    case "peer-refused":
      return `refused a connection from ${printable(event.peer)}: ${printable(event.reason)} (${printable(event.code)})`;
    case "server-pinned":
      return `first connection to ${printable(event.where)}: its fingerprint ${event.fingerprint} is now pinned in ${printable(event.file)}`;
    case "peer-disconnected":
      return (
        `client at ${printable(event.peer)} (${event.set === "" ? "no set" : `set ${printable(event.set)}`}) disconnected` +
        (event.reason === undefined ? "" : `: ${printable(event.reason)}`)
      );
    case "connected":
      return `connected to ${hostPort(event.host, event.port)}, set ${printable(event.set)}`;
    case "disconnected":
      // The reason is a full sentence; the retry is a second one.
      return `disconnected: ${printable(event.reason)} Retrying in ${formatDuration(event.retryInMs / 1000)}.`;
    case "scan-start":
      return `scanning ${printable(event.root)}`;
    case "scan-done":
      return (
        `scanned ${plural(event.files, "file")} (${formatBytes(event.bytes)}), ` +
        `${event.changedFiles} changed (${formatBytes(event.changedBytes)})`
      );
    case "file-done": {
      const path = printable(event.path);
      const where = side === "server" && event.set !== undefined ? ` in set ${printable(event.set)}` : "";
      if (event.op === "delete") return `deleted ${path}${where}`;
      if (event.op === "mkdir") return `created directory ${path}${where}`;
      if (event.op === "restore") return `restored ${path} (${formatBytes(event.size)})`;
      return `${side === "server" ? "stored" : "sent"} ${path} (${formatBytes(event.size)}${reuse(event)})${where}`;
    }
    case "file-skipped":
      return `skipped ${printable(event.path)}: ${printable(event.reason)}${event.retry ? " (will retry)" : ""}`;
    case "idle":
      return `all changes backed up (${plural(event.files, "file")}, ${formatBytes(event.bytes)}); watching`;
    case "info":
      return printable(event.message);
    case "warning":
      return `warning: ${printable(event.message)}${event.code === undefined ? "" : ` (${printable(event.code)})`}`;
    case "error":
      return `error: ${printable(event.message)} (${printable(event.code)})`;
    case "queued":
    case "file-start":
    case "file-progress":
      return null;
  }
}

export interface PlainPrinterOptions {
  sink: LineSink;
  side: Side;
  /** milliseconds since the epoch, for the timestamp */
  now?: () => number;
  /** which events get a line; all describable ones when absent */
  accept?: (event: ProgressEvent) => boolean;
}

export class PlainPrinter implements Reporter {
  private readonly sink: LineSink;
  private readonly side: Side;
  private readonly now: () => number;
  private readonly accept: (event: ProgressEvent) => boolean;
  /** an idle line after an idle with nothing between says nothing new */
  private workSinceIdle = true;
  private closed = false;

  constructor(options: PlainPrinterOptions) {
    this.sink = options.sink;
    this.side = options.side;
    this.now = options.now ?? Date.now;
    this.accept = options.accept ?? (() => true);
  }

  emit(event: ProgressEvent): void {
    if (this.closed || !this.accept(event)) return;
    if (event.kind === "idle") {
      if (!this.workSinceIdle) return;
      this.workSinceIdle = false;
    } else if (event.kind === "file-done" || event.kind === "file-skipped") {
      this.workSinceIdle = true;
    }
    const text = describeEvent(event, this.side);
    if (text === null) return;
    this.sink.write(`${new Date(this.now()).toISOString()} ${text}\n`);
  }

  /** Stops printing; writes already made are left to the stream, which Node flushes. */
  close(): void {
    this.closed = true;
  }
}
