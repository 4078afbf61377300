// The front door of the UI: picks a printer for the command line's flags and the stream,
// and hands back the Reporter that producers emit on.

import type { ProgressEvent, Reporter } from "./events.js";
import { JsonPrinter } from "./json.js";
import { PlainPrinter, type Side } from "./plain.js";
import { TtyPrinter } from "./tty.js";

export type { Operation, ProgressEvent, ProgressEventKind, Reporter } from "./events.js";
export { EventHub } from "./events.js";
export { describeEvent, formatBytes, formatDuration, printable, type Side } from "./plain.js";
export { ProgressModel, type ProgressSnapshot, type ProgressState, type Totals } from "./progress.js";

export type PrinterMode = "tty" | "plain" | "json" | "quiet";

export interface Printer {
  reporter: Reporter;
  /** Stops bars, flushes pending output; events emitted afterwards are dropped. Idempotent. */
  close(): void;
}

export interface PrinterOptions {
  mode: PrinterMode;
  side: Side;
  /** stdout for tty, plain and json; stderr for quiet */
  stream?: NodeJS.WriteStream;
}

/** --json wins over --quiet; otherwise bars on a terminal and plain lines elsewhere. */
export function chooseMode(options: { json?: boolean; quiet?: boolean; isTTY: boolean }): PrinterMode {
  if (options.json) return "json";
  if (options.quiet) return "quiet";
  return options.isTTY ? "tty" : "plain";
}

export function createPrinter(options: PrinterOptions): Printer {
  const { side } = options;
  switch (options.mode) {
    case "json": {
      const stream = options.stream ?? process.stdout;
      // A real descriptor is written at the end of each turn of the event loop, and at
      // process.exit() (see TurnWriter).
      const fd = (stream as { fd?: unknown }).fd;
      return wrap(new JsonPrinter({ dest: typeof fd === "number" ? fd : stream }));
    }
    case "quiet":
      return wrap(
        new PlainPrinter({
          sink: options.stream ?? process.stderr,
          side,
          accept: (event: ProgressEvent) => event.kind === "warning" || event.kind === "error",
        }),
      );
    case "tty": {
      const stream = options.stream ?? process.stdout;
      // Bars on a pipe or file would be escape codes in a log; say it in lines instead.
      if (stream.isTTY !== true) return wrap(new PlainPrinter({ sink: stream, side }));
      return wrap(new TtyPrinter({ stream, side }));
    }
    case "plain":
      return wrap(new PlainPrinter({ sink: options.stream ?? process.stdout, side }));
  }
}

function wrap(printer: Reporter & { close(): void }): Printer {
  return { reporter: printer, close: () => printer.close() };
}
