// The --json printer: one JSON object per line per event, `{"time", "event", ...fields}`,
// for scripts and log collectors. Per-chunk file-progress is left out so output stays
// proportional to files, not bytes.

import { writeSync } from "node:fs";
import { createRequire } from "node:module";
import type Pino from "pino";
import type { DestinationStream } from "pino";
import type { ProgressEvent, Reporter } from "./events.js";

// pino is loaded when a printer is made, not when this module is: only --json needs it, and
// it costs every other command about 20 ms to load.
const require = createRequire(import.meta.url);

export interface JsonPrinterOptions {
  /** a file descriptor (see `TurnWriter`: no line is lost at exit) or a sink */
  dest: number | DestinationStream;
  /** milliseconds since the epoch; injected so tests control time */
  now?: () => number;
}

export class JsonPrinter implements Reporter {
  private readonly logger: Pino.Logger;
  private readonly destination: DestinationStream;
  private closed = false;

  constructor(options: JsonPrinterOptions) {
    const now = options.now ?? Date.now;
    const pino = require("pino") as typeof Pino;
    this.destination = typeof options.dest === "number" ? new TurnWriter(options.dest) : options.dest;
    this.logger = pino(
      {
        base: null,
        // pino opens each line with the level; with the level left out, the time must
        // come first and so without the leading comma pino's own timestamps carry.
        formatters: { level: () => ({}) },
        timestamp: () => `"time":"${new Date(now()).toISOString()}"`,
      },
      this.destination,
    );
  }

  emit(event: ProgressEvent): void {
    if (this.closed || event.kind === "file-progress") return;
    const { kind, ...fields } = event;
    this.logger.info({ event: kind, ...fields });
  }

  /** Stops printing and flushes whatever the destination still buffers. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const destination = this.destination;
    if (destination instanceof TurnWriter) destination.close();
    else (destination as { flushSync?: () => void }).flushSync?.call(destination);
  }
}

/** How long a write to a full non-blocking pipe waits before it tries again. */
const FULL_PIPE_WAIT_MS = 10;

/**
 * Writes the lines given to it during one turn of the event loop to `fd` in one write, at
 * the end of that turn (`setImmediate`), and whatever is left when the process exits. A
 * line so waits for no timer and no I/O, only for the callbacks already running; where a
 * server or client reports several files in one turn (a group commit acknowledges dozens),
 * they cost one system call instead of one each: 40,000 of them, 0.76 s of the server's
 * main thread, for the bench's 20,000 small files (docs/performance.md). A killed process
 * (SIGKILL) loses the lines of the turn it was in.
 *
 * A reader that went away (EPIPE) ends the output quietly, as pino's own destination does;
 * any other failure ends it with one sentence on stderr, and the backup goes on.
 */
export class TurnWriter implements DestinationStream {
  private lines: string[] = [];
  private scheduled = false;
  private stopped = false;
  private readonly onExit = () => this.flush();

  constructor(private readonly fd: number) {
    process.on("exit", this.onExit);
  }

  write(line: string): void {
    if (this.stopped) return;
    this.lines.push(line);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  /** Write out every line given so far, now. */
  flush(): void {
    this.scheduled = false;
    if (this.lines.length === 0 || this.stopped) return;
    const bytes = Buffer.from(this.lines.join(""));
    this.lines = [];
    let done = 0;
    while (done < bytes.length) {
      try {
        done += writeSync(this.fd, bytes, done);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "EAGAIN") {
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, FULL_PIPE_WAIT_MS);
          continue;
        }
        this.stop();
        if (code !== "EPIPE") {
          process.stderr.write(
            `keepwatch: writing the --json output failed (${(error as Error).message}), so no more of it is written while the backup goes on; free space where it goes, or send it elsewhere.\n`,
          );
        }
        return;
      }
    }
  }

  /** Flush, and write nothing more. */
  close(): void {
    this.flush();
    this.stop();
  }

  private stop(): void {
    this.stopped = true;
    this.lines = [];
    process.off("exit", this.onExit);
  }
}
