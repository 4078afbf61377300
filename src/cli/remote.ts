// What `ls`, `history` and `restore` share: HOST and --port, a set-qualified PATH
// (`SET[/path/inside]`, as the mirror shows it), the --at TIME, one connection to the
// server for a set (or for none, to list the sets), and how their results are printed.

import type { Command } from "commander";
import { defaultClientName, ServerLink } from "../client/link.js";
import { errnoCode, KeepwatchError, RemoteError } from "../errors.js";
import { type Entry, TIME_NOW } from "../protocol/history-messages.js";
import { pathProblem, setNameProblem } from "../protocol/paths.js";
import { printable } from "../ui/index.js";
import {
  type ConnectionFlags,
  clientSecurity,
  DEFAULT_PORT,
  type Output,
  openOutput,
  parsePort,
  resolveHost,
  usageError,
  withConnectionOptions,
} from "./common.js";
import { formatLocalTime, parseTime, TIME_FORMS } from "./time.js";

export interface RemoteFlags extends ConnectionFlags {
  port: number;
  json?: boolean;
}

export const AT_HELP = `the moment to look at (default: now): ${TIME_FORMS}`;

/** Add [HOST] (after the command's own arguments), --port and --json. */
export function withRemoteOptions(command: Command): Command {
  return withConnectionOptions(command)
    .argument("[HOST]", "server address (localhost means 127.0.0.1)", "127.0.0.1")
    .option("-p, --port <port>", "server port", parsePort, DEFAULT_PORT)
    .option("--json", "print one JSON object per line");
}

/** A set and a path inside it; `path` is "" for the whole set. */
export interface SetPath {
  set: string;
  path: string;
}

/** `source/docs/a.txt` → set `source`, path `docs/a.txt`; `source` → the whole set. */
export function parseSetPath(text: string): SetPath {
  const trimmed = text.replace(/\/+$/, "");
  const slash = trimmed.indexOf("/");
  const set = slash < 0 ? trimmed : trimmed.slice(0, slash);
  const path = slash < 0 ? "" : trimmed.slice(slash + 1);
  const setProblem = setNameProblem(set);
  if (setProblem !== null) {
    throw usageError(
      `The PATH ${JSON.stringify(text)} does not start with a set name (${setProblem}); give SET or SET/path as the server's mirror shows it, for example source/test.txt.`,
    );
  }
  const problem = path === "" ? null : pathProblem(path);
  if (problem !== null) {
    throw usageError(
      `The PATH ${JSON.stringify(text)} is not valid because ${problem}; give SET or SET/path, for example source/test.txt.`,
    );
  }
  return { set, path };
}

/** The wire time for --at: -1 (the server's own now) when absent or "now". */
export function requestTime(at: string | undefined): number {
  return at === undefined || at.trim().toLowerCase() === "now" ? TIME_NOW : parseTime(at);
}

/** "now" or "at 2024-05-01T14:30:00.000+02:00", for sentences. */
export function describeTime(time: number): string {
  return time === TIME_NOW ? "now" : `at ${formatLocalTime(time)}`;
}

export function shownPath(target: SetPath): string {
  return target.path === "" ? target.set : `${target.set}/${target.path}`;
}

/**
 * Connect for `set` ("" binds the connection to no set, which may only list the sets),
 * run `body`, then say goodbye; on failure the connection is dropped at once.
 */
export async function withLink<T>(
  host: string | undefined,
  flags: RemoteFlags,
  set: string,
  body: (link: ServerLink) => Promise<T>,
): Promise<T> {
  const link = await ServerLink.connect({
    host: resolveHost(host),
    port: flags.port,
    set,
    clientName: defaultClientName(),
    // Notes go to stderr: stdout carries the command's data.
    security: await clientSecurity(flags, (note) =>
      process.stderr.write(
        note.kind === "pinned"
          ? `keepwatch: first connection to ${note.where}: its fingerprint ${note.fingerprint} is now pinned in ${note.file}.\n`
          : `keepwatch: warning: ${note.message}\n`,
      ),
    ),
  });
  let result: T;
  try {
    result = await body(link);
  } catch (error) {
    link.close();
    throw error;
  }
  await link.goodbye();
  return result;
}

/** The server's KW_NOT_FOUND, said with the path as the user typed it and the local time. */
export function explainNotFound(error: unknown, target: SetPath, time: number | null): unknown {
  if (!(error instanceof RemoteError) || error.code !== "KW_NOT_FOUND") return error;
  const where = JSON.stringify(shownPath(target));
  const sentence =
    time === null
      ? `Nothing was ever backed up at ${where}; give SET/path as the server's mirror shows it ("keepwatch ls" lists the sets).`
      : `Nothing was backed up at ${where} ${describeTime(time)}; check the path (SET/path as the server's mirror shows it; "keepwatch ls" lists the sets) and the time.`;
  return new KeepwatchError("KW_NOT_FOUND", sentence, { cause: error });
}

/** For commands that print data: JSON errors with --json, else plain sentences on stderr. */
export function dataOutput(flags: RemoteFlags): Output | null {
  // A reader that goes away (`| head`) ends the program quietly, not with a stack trace.
  process.stdout.on("error", (error) => {
    if (errnoCode(error) === "EPIPE") process.exit(0);
    throw error;
  });
  return flags.json ? openOutput({ json: true }, "client") : null;
}

/**
 * One line of output. When stdout is a pipe whose reader is slower than us, the returned
 * promise says when it can take more: a caller printing a listing entry by entry waits for
 * it, so that the listing is not gathered in memory (307 MiB for 191,667 entries in JSON
 * through `| cat`, against 76 MiB into a file).
 */
export function printLine(line: string): Promise<void> | undefined {
  if (process.stdout.write(`${line}\n`)) return undefined;
  // One wait shared by every caller until the drain: a listener each would pile up on
  // stdout for a caller that prints on without waiting.
  draining ??= new Promise((resolve) =>
    process.stdout.once("drain", () => {
      draining = null;
      resolve();
    }),
  );
  return draining;
}

let draining: Promise<void> | null = null;

/** `drwxr-xr-x`, `-rw-r--r--`: the type and permission bits as `ls -l` shows them. */
export function symbolicMode(kind: Entry["kind"], mode: number): string {
  const type = kind === "dir" ? "d" : "-";
  const triplet = (bits: number, special: boolean, char: string) =>
    `${bits & 4 ? "r" : "-"}${bits & 2 ? "w" : "-"}${bits & 1 ? (special ? char : "x") : special ? char.toUpperCase() : "-"}`;
  return (
    type +
    triplet((mode >> 6) & 7, (mode & 0o4000) !== 0, "s") +
    triplet((mode >> 3) & 7, (mode & 0o2000) !== 0, "s") +
    triplet(mode & 7, (mode & 0o1000) !== 0, "t")
  );
}

/** The JSON form of an entry of `set`, shared by `ls --set` and `history`. */
export function entryJson(set: string, entry: Entry): Record<string, unknown> {
  const deleted = entry.kind === "deleted";
  const mtimeKnown = !deleted && !(entry.kind === "dir" && entry.mtimeMs === 0);
  return {
    path: `${set}/${entry.path}`,
    set,
    kind: entry.kind,
    size: entry.size,
    mtime: mtimeKnown ? new Date(entry.mtimeMs).toISOString() : null,
    mtimeMs: mtimeKnown ? entry.mtimeMs : null,
    mode: deleted ? null : entry.mode,
    sha256: entry.kind === "file" ? entry.sha256.toString("hex") : null,
    versionId: entry.versionId,
    time: new Date(entry.time).toISOString(),
    timeMs: entry.time,
  };
}

/** An entry's mtime for a table: "-" for deletes and folders without one (MKDIR carries none). */
export function tableMtime(entry: Entry): string {
  if (entry.kind === "deleted" || (entry.kind === "dir" && entry.mtimeMs === 0)) return "-";
  return formatLocalTime(entry.mtimeMs);
}

/** A path for a table's last column: control characters escaped, folders ending in "/". */
export function tablePath(set: string, entry: Entry): string {
  return printable(`${set}/${entry.path}${entry.kind === "dir" ? "/" : ""}`);
}
