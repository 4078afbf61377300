// The TTY printer: two live lines drawn with cli-progress (the whole batch, and the file
// under way) and, above them, one line per event a person should notice.

import cliProgress from "cli-progress";
import type { ProgressEvent, ProgressEventKind, Reporter } from "./events.js";
import { describeEvent, formatBytes, formatDuration, printable, type Side } from "./plain.js";
import { ProgressModel, type ProgressSnapshot } from "./progress.js";

/** Events that get a line above the bars; the rest only move the bars. */
const LOGGED: ReadonlySet<ProgressEventKind> = new Set<ProgressEventKind>([
  "listening",
  "connected",
  "disconnected",
  "peer-connected",
  "peer-disconnected",
  "peer-refused",
  "server-pinned",
  "warning",
  "error",
  "info",
  "file-skipped",
  "scan-done",
]);

/** Erase from the cursor to the end of the screen (ANSI ED). */
const ERASE_BELOW = "\x1b[J";

/** Narrower than this, a bar says too little to be worth its room. */
const MIN_BAR = 8;
const MAX_BAR = 30;
/** The fewest columns a cut file name keeps before the byte counts give way. */
const MIN_NAME = 16;

export interface TtyPrinterOptions {
  /** a terminal; `columns` is read on every redraw, so resizing just works */
  stream: NodeJS.WritableStream & { columns?: number };
  side: Side;
  /** milliseconds since the epoch; injected so tests control time */
  now?: () => number;
  /** redraws per second */
  fps?: number;
}

export class TtyPrinter implements Reporter {
  private readonly side: Side;
  private readonly now: () => number;
  private readonly model: ProgressModel;
  private readonly bars: cliProgress.MultiBar;
  private closed = false;

  constructor(options: TtyPrinterOptions) {
    this.side = options.side;
    this.now = options.now ?? Date.now;
    this.model = new ProgressModel({ now: this.now });
    this.bars = new cliProgress.MultiBar({
      stream: options.stream,
      fps: options.fps ?? 10,
      // Lines logged above the bars shift them down; an unchanged bar would otherwise
      // not be drawn again at its new place.
      forceRedraw: true,
      // Turning off wrapping or the cursor changes terminal modes that only stop() restores,
      // so a crash would leave the terminal broken; lines are fitted to the width instead.
      // The CLI, not this printer, owns SIGINT.
      linewrap: true,
      hideCursor: false,
      gracefulExit: false,
    });
    // The redraw timer must not keep a finished process alive: sockets and watchers decide
    // that. cli-progress keeps the timer private and rearms it on every frame.
    const unref = () => (this.bars as unknown as { timer?: NodeJS.Timeout | null }).timer?.unref();
    this.bars.on("start", unref);
    this.bars.on("update-post", unref);
    // The bars read the model when they draw, so events cost nothing until the next frame.
    const batch: cliProgress.GenericFormatter = (_o, p) => this.batchLine(this.model.snapshot(), p.maxWidth);
    const file: cliProgress.GenericFormatter = (_o, p) => this.fileLine(this.model.snapshot(), p.maxWidth);
    this.bars.create(1, 0, {}, { format: batch });
    this.bars.create(1, 0, {}, { format: file });
  }

  emit(event: ProgressEvent): void {
    if (this.closed) return;
    this.model.apply(event);
    if (!LOGGED.has(event.kind)) return;
    const text = describeEvent(event, this.side);
    if (text === null) return;
    const clock = new Date(this.now()).toTimeString().slice(0, 8);
    // MultiBar writes logged lines over the old bars; erasing below first keeps a short
    // line from leaving the tail of a bar behind it.
    this.bars.log(`${ERASE_BELOW}${clock} ${text}\n`);
  }

  /** Draws a last frame (with any lines still pending) and leaves it on screen. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.bars.update();
    this.bars.stop();
  }

  private batchLine(s: ProgressSnapshot, width: number): string {
    const doneBytes = s.done.bytes + s.inFlight.bytes;
    const counts = `${s.done.files}/${s.queued.files} files`;
    switch (s.state) {
      case "offline": {
        const wait = s.retryAt === null ? "" : ` in ${formatDuration((s.retryAt - this.now()) / 1000)}`;
        const pending = s.queued.files > s.done.files ? ` · sent ${counts}` : "";
        return fit(`✗ disconnected · retrying${wait}${pending}`, width);
      }
      case "scanning":
        return fit(`… scanning ${printable(s.scanRoot ?? "")} · ${files(s.queued.files)} queued`, width);
      case "idle": {
        const total =
          s.backedUp === null ? "" : ` · ${files(s.backedUp.files)}, ${formatBytes(s.backedUp.bytes)}`;
        return fit(`✓ all backed up${total} · watching for changes`, width);
      }
      case "waiting": {
        if (this.side === "restore" && s.done.files > 0) {
          return fit(`✓ restored ${files(s.done.files)}, ${formatBytes(s.done.bytes)}`, width);
        }
        if (this.side !== "server") return fit("… starting", width);
        const peers = s.peers === 0 ? "waiting for clients" : `${clients(s.peers)} connected · up to date`;
        const got =
          s.done.files === 0 ? "" : ` · received ${files(s.done.files)}, ${formatBytes(s.done.bytes)}`;
        return fit(`${peers}${got}`, width);
      }
      case "busy": {
        const verb = { client: "sending", server: "receiving", restore: "restoring" }[this.side];
        const bytes = `${formatBytes(doneBytes)}/${formatBytes(s.queued.bytes)}`;
        // A batch of deletions moves no bytes; its files still show progress.
        const fraction =
          s.queued.bytes > 0 ? doneBytes / s.queued.bytes : s.done.files / (s.queued.files || 1);
        const eta = s.etaSeconds === null ? "–" : formatDuration(s.etaSeconds);
        const tail = ` ${percent(fraction)} · ${formatRate(s.rate)} · ETA ${eta}`;
        // Narrow terminals lose the bar first, then the byte counts.
        return firstThatFits(width, [
          withBar(`${verb} ${counts} · ${bytes} `, fraction, tail, width),
          `${verb} ${counts} · ${bytes}${tail}`,
          `${verb} ${s.done.files}/${s.queued.files} ·${tail}`,
        ]);
      }
    }
  }

  private fileLine(s: ProgressSnapshot, width: number): string {
    const file = s.current;
    if (file === null) {
      if (s.lastDone === null || s.state === "scanning") return "";
      return fit(`  last: ${describeEvent({ kind: "file-done", ...s.lastDone }, this.side)}`, width);
    }
    const prefix = "  ↳ ";
    const sizes = `${formatBytes(file.bytes)}/${formatBytes(file.size)}`;
    const fraction = file.size > 0 ? file.bytes / file.size : 1;
    const tail = ` ${percent(fraction)} · ${formatRate(file.rate)}`;
    const name = printable(file.path);
    const nameWidth = displayWidth(name);
    // The name matters most: the bar only gets what the whole name leaves, and the sizes
    // go before the name is cut below a readable stub.
    const room = width - 1 - displayWidth(`${prefix} ${sizes} []${tail}`);
    if (room - nameWidth >= MIN_BAR) {
      const bar = drawBar(fraction, Math.min(MAX_BAR, room - nameWidth));
      return `${prefix}${name} ${sizes} ${bar}${tail}`;
    }
    const withSizes = width - 1 - displayWidth(`${prefix} ${sizes}${tail}`);
    if (withSizes >= Math.min(nameWidth, MIN_NAME)) {
      return `${prefix}${truncateStart(name, withSizes)} ${sizes}${tail}`;
    }
    return fit(`${prefix}${truncateStart(name, width - 1 - displayWidth(`${prefix}${tail}`))}${tail}`, width);
  }
}

function files(count: number): string {
  return `${count} file${count === 1 ? "" : "s"}`;
}

function clients(count: number): string {
  return `${count} client${count === 1 ? "" : "s"}`;
}

function percent(fraction: number): string {
  return `${Math.floor(Math.min(1, Math.max(0, fraction)) * 100)}%`;
}

function formatRate(rate: number | null): string {
  return rate === null ? "–/s" : `${formatBytes(rate)}/s`;
}

/** `head[████░░░░]tail`, the bar taking what room the terminal leaves; null if too little. */
function withBar(head: string, fraction: number, tail: string, width: number): string | null {
  const size = Math.min(MAX_BAR, width - 1 - displayWidth(`${head}[]${tail}`));
  return size < MIN_BAR ? null : `${head}${drawBar(fraction, size)}${tail}`;
}

/** The first candidate that fits, else the last one cut to fit. */
function firstThatFits(width: number, candidates: (string | null)[]): string {
  let last = "";
  for (const candidate of candidates) {
    if (candidate === null) continue;
    if (displayWidth(candidate) <= width - 1) return candidate;
    last = candidate;
  }
  return fit(last, width);
}

function drawBar(fraction: number, size: number): string {
  const filled = Math.round(Math.min(1, Math.max(0, fraction)) * size);
  return `[${"█".repeat(filled)}${"░".repeat(size - filled)}]`;
}

/**
 * Columns a string takes in a terminal, close enough for laying out one line: East Asian
 * wide characters and most emoji take two, combining marks none.
 */
export function displayWidth(text: string): number {
  let width = 0;
  for (const char of text) width += charWidth(char.codePointAt(0) ?? 0);
  return width;
}

function charWidth(cp: number): number {
  if (cp < 0x300) return 1;
  if ((cp >= 0x300 && cp <= 0x36f) || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0xfe00 && cp <= 0xfe0f)) {
    return 0;
  }
  if (
    (cp >= 0x1100 && cp <= 0x115f) ||
    (cp >= 0x2e80 && cp <= 0xa4cf) ||
    (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0xfe30 && cp <= 0xfe4f) ||
    (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) ||
    (cp >= 0x1f300 && cp <= 0x1faff) ||
    (cp >= 0x20000 && cp <= 0x3fffd)
  ) {
    return 2;
  }
  return 1;
}

/**
 * Cut to one column less than the terminal: writing the last column leaves some terminals
 * about to wrap, which would put the next bar a line too low.
 */
function fit(text: string, width: number): string {
  return truncateEnd(text, width - 1);
}

function truncateEnd(text: string, max: number): string {
  if (displayWidth(text) <= max) return text;
  let out = "";
  let used = 0;
  for (const char of text) {
    const w = charWidth(char.codePointAt(0) ?? 0);
    if (used + w > max - 1) break;
    out += char;
    used += w;
  }
  return max > 0 ? `${out}…` : "";
}

/** Keeps the end of a path, where the file's own name is. */
function truncateStart(text: string, max: number): string {
  if (displayWidth(text) <= max) return text;
  const chars = Array.from(text);
  let out = "";
  let used = 0;
  for (let i = chars.length - 1; i >= 0; i--) {
    const char = chars[i] ?? "";
    const w = charWidth(char.codePointAt(0) ?? 0);
    if (used + w > max - 1) break;
    out = char + out;
    used += w;
  }
  return max > 0 ? `…${out}` : "";
}
