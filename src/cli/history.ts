// `keepwatch history PATH [HOST]`: every version the server recorded of PATH and of what
// lies below it, deletes included, oldest first, with commit time, kind, size, mtime,
// short SHA-256 and version id.

import type { Command } from "commander";
import { listEntries } from "../client/restorer.js";
import { TIME_NOW } from "../protocol/history-messages.js";
import { EXIT_CODES_HELP, runCommand } from "./common.js";
import {
  dataOutput,
  entryJson,
  explainNotFound,
  parseSetPath,
  printLine,
  type RemoteFlags,
  tableMtime,
  tablePath,
  withLink,
  withRemoteOptions,
} from "./remote.js";
import { formatLocalTime } from "./time.js";

const TIME_WIDTH = formatLocalTime(0).length;
/** Hex digits of the SHA-256 shown in the table (as many as git's short ids). */
const SHORT_SHA = 12;

export function registerHistory(program: Command): void {
  withRemoteOptions(
    program
      .command("history")
      .description("list every version of PATH and of what lies below it, deletes included, oldest first")
      .argument("<PATH>", "SET or SET/path as the server's mirror shows it, e.g. source/test.txt"),
  )
    .addHelpText(
      "after",
      `\nExamples:\n  keepwatch history source/test.txt localhost\n  keepwatch history source/docs --json\n${EXIT_CODES_HELP}`,
    )
    .action(async (pathArg: string, host: string | undefined, flags: RemoteFlags) => {
      const output = dataOutput(flags);
      await runCommand(output, async () => {
        const target = parseSetPath(pathArg);
        let header = false;
        await withLink(host, flags, target.set, (link) =>
          listEntries(link, { path: target.path, time: TIME_NOW, mode: 1 }, (entry) => {
            if (flags.json) return printLine(JSON.stringify(entryJson(target.set, entry)));
            if (!header) {
              printLine(row("TIME", "KIND", "SIZE", "MTIME", "SHA256", "VERSION", "PATH"));
              header = true;
            }
            return printLine(
              row(
                formatLocalTime(entry.time),
                entry.kind,
                entry.kind === "file" ? String(entry.size) : "-",
                tableMtime(entry),
                entry.kind === "file" ? entry.sha256.toString("hex").slice(0, SHORT_SHA) : "-",
                String(entry.versionId),
                tablePath(target.set, entry),
              ),
            );
          }),
        ).catch((error: unknown) => {
          throw explainNotFound(error, target, null);
        });
        return 0;
      });
    });
}

function row(
  time: string,
  kind: string,
  size: string,
  mtime: string,
  sha: string,
  version: string,
  path: string,
): string {
  return [
    time.padEnd(TIME_WIDTH),
    kind.padEnd(7),
    size.padStart(12),
    mtime.padEnd(TIME_WIDTH),
    sha.padEnd(SHORT_SHA),
    version.padStart(8),
    path,
  ].join("  ");
}
