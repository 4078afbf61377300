// `keepwatch ls [HOST]`: the sets the server holds, or with --set the files of one set
// as they were at a moment (--at), each with its size, mtime, mode and version time.

import type { Command } from "commander";
import { listEntries } from "../client/restorer.js";
import type { Entry } from "../protocol/history-messages.js";
import { printable } from "../ui/index.js";
import { EXIT_CODES_HELP, runCommand, usageError } from "./common.js";
import {
  AT_HELP,
  dataOutput,
  describeTime,
  entryJson,
  explainNotFound,
  parseSetPath,
  printLine,
  type RemoteFlags,
  requestTime,
  symbolicMode,
  tableMtime,
  tablePath,
  withLink,
  withRemoteOptions,
} from "./remote.js";
import { formatLocalTime } from "./time.js";

interface LsFlags extends RemoteFlags {
  set?: string;
  path?: string;
  at?: string;
}

const TIME_WIDTH = formatLocalTime(0).length;

export function registerLs(program: Command): void {
  withRemoteOptions(
    program
      .command("ls")
      .description("list the backup sets on the server, or with --set the files of one set at a moment"),
  )
    .option("-s, --set <SET>", "list the files of this set instead of the sets")
    .option("--path <PATH>", "with --set: only this path inside the set and what lies below it")
    .option("--at <TIME>", AT_HELP)
    .addHelpText(
      "after",
      `\nExamples:\n  keepwatch ls localhost\n  keepwatch ls --set source --at "2h ago"\n  keepwatch ls --set source --path docs --at 2024-05-01T14:30\n${EXIT_CODES_HELP}`,
    )
    .action(async (host: string | undefined, flags: LsFlags) => {
      const output = dataOutput(flags);
      await runCommand(output, async () => {
        if (flags.path !== undefined && flags.set === undefined) {
          throw usageError(
            "--path needs --set: give the set whose files to list, for example --set source --path docs.",
          );
        }
        const time = requestTime(flags.at);
        if (flags.set === undefined) {
          await listSets(host, flags, time);
          return 0;
        }
        const target = parseSetPath(flags.path === undefined ? flags.set : `${flags.set}/${flags.path}`);
        if (target.set !== flags.set)
          throw usageError(
            `The set name ${JSON.stringify(flags.set)} contains "/"; give the path inside the set with --path.`,
          );
        let header = false;
        await withLink(host, flags, target.set, (link) =>
          listEntries(link, { path: target.path, time, mode: 0 }, (entry) => {
            if (flags.json) return printLine(JSON.stringify(entryJson(target.set, entry)));
            if (!header) {
              printLine(treeRow("MODE", "SIZE", "MTIME", "VERSION TIME", "PATH"));
              header = true;
            }
            return printLine(treeLine(target.set, entry));
          }),
        ).catch((error: unknown) => {
          throw explainNotFound(error, target, time);
        });
        return 0;
      });
    });
}

async function listSets(host: string | undefined, flags: LsFlags, time: number): Promise<void> {
  const sets: Entry[] = [];
  await withLink(host, flags, "", (link) =>
    listEntries(link, { path: "", time, mode: 0 }, (entry) => {
      sets.push(entry);
    }),
  );
  if (flags.json) {
    for (const entry of sets) {
      printLine(
        JSON.stringify({
          set: entry.path,
          files: entry.size,
          time: new Date(entry.time).toISOString(),
          timeMs: entry.time,
          versionId: entry.versionId,
        }),
      );
    }
    return;
  }
  if (sets.length === 0) {
    printLine(`The server held no backups ${describeTime(time)}.`);
    return;
  }
  const width = Math.max(3, ...sets.map((entry) => printable(entry.path).length));
  printLine(`${"SET".padEnd(width)}  ${"FILES".padStart(9)}  LAST CHANGE`);
  for (const entry of sets) {
    printLine(
      `${printable(entry.path).padEnd(width)}  ${String(entry.size).padStart(9)}  ${formatLocalTime(entry.time)}`,
    );
  }
}

function treeRow(mode: string, size: string, mtime: string, time: string, path: string): string {
  return `${mode.padEnd(10)}  ${size.padStart(12)}  ${mtime.padEnd(TIME_WIDTH)}  ${time.padEnd(TIME_WIDTH)}  ${path}`;
}

function treeLine(set: string, entry: Entry): string {
  return treeRow(
    symbolicMode(entry.kind, entry.mode),
    entry.kind === "file" ? String(entry.size) : "-",
    tableMtime(entry),
    formatLocalTime(entry.time),
    tablePath(set, entry),
  );
}
