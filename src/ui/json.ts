// The --json printer: one JSON object per line per event, `{"time", "event", ...fields}`,
// for scripts and log collectors. Per-chunk file-progress is left out so output stays
// proportional to files, not bytes.

import { createRequire } from "node:module";
import type Pino from "pino";
import type { DestinationStream } from "pino";
import type { ProgressEvent, Reporter } from "./events.js";

// pino is loaded when a printer is made, not when this module is: only --json needs it, and
// it costs every other command about 20 ms to load.
const require = createRequire(import.meta.url);

export interface JsonPrinterOptions {
  /** a file descriptor (written synchronously, so no line is lost at exit) or a sink */
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
    this.destination =
      typeof options.dest === "number" ? pino.destination({ dest: options.dest, sync: true }) : options.dest;
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
    const flushSync = (this.destination as { flushSync?: () => void }).flushSync;
    flushSync?.call(this.destination);
  }
}
