// What the commands that work on a DEST folder directly (verify, prune, rebuild-mirror)
// share: their output (lines, never bars: they report steps, not transfers), progress
// lines at a steady pace, and how they name a version for a person.

import type { Command } from "commander";
import { createPrinter, formatBytes } from "../ui/index.js";
import type { Output, OutputOptions } from "./common.js";
import { formatLocalTime } from "./time.js";

/** Add --json and --quiet. */
export function withLineOptions(command: Command): Command {
  return command
    .option("--json", "print one JSON object per event")
    .option("-q, --quiet", "print only warnings and errors");
}

/** JSON events, only warnings and errors, or plain timestamped lines. */
export function lineOutput(options: OutputOptions): Output {
  const mode = options.json ? "json" : options.quiet ? "quiet" : "plain";
  const printer = createPrinter({ mode, side: "server" });
  return { reporter: printer.reporter, close: () => printer.close(), json: mode === "json" };
}

/** Calls `fn` at most once per `everyMs` (the first call waits a full period). */
export function throttle<A extends unknown[]>(
  everyMs: number,
  fn: (...args: A) => void,
): (...args: A) => void {
  let last = Date.now();
  return (...args: A) => {
    const now = Date.now();
    if (now - last < everyMs) return;
    last = now;
    fn(...args);
  };
}

/** `source/docs/a.txt version 12 (backed up 2024-05-01T14:30:00.000+02:00)`. */
export function describeVersion(set: string, path: string, id: number, time: number): string {
  return `${set}/${path} version ${id} (backed up ${formatLocalTime(time)})`;
}

/** `3 chunks (1.2 MiB)`. */
export function chunksAndBytes(chunks: number, bytes: number): string {
  return `${chunks} chunk${chunks === 1 ? "" : "s"} (${formatBytes(bytes)})`;
}

export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}
