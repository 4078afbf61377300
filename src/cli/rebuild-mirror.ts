// `keepwatch rebuild-mirror DEST [--set NAME]`: make DEST/<set>/ the history's latest state
// again, byte for byte, with modes and mtimes, removing what the history does not have.

import type { Command } from "commander";
import { ExitCode } from "../errors.js";
import { rebuildMirror } from "../server/rebuild-mirror.js";
import { formatBytes } from "../ui/index.js";
import { openOutput, runCommand } from "./common.js";
import { plural, withLineOptions } from "./maintenance.js";

interface RebuildFlags {
  set?: string;
  json?: boolean;
  quiet?: boolean;
}

const HELP = `
Examples:
  keepwatch rebuild-mirror data/dest
  keepwatch rebuild-mirror /srv/backup --set docs

Every file of the latest state is written again unless it already matches (size,
permission bits, mtime and SHA-256), each atomically (a temporary file, checked against
its SHA-256, then renamed into place); folders get their permission bits; files, folders
and links in DEST/<set>/ that the history does not have are removed. Folders in DEST
that are not sets of the history are left alone. No server may serve DEST meanwhile.

Exit codes:
  0  the mirror equals the history's latest state
  1  some files could not be rebuilt from damaged history (listed; run keepwatch verify), or an unexpected error
  2  usage error (unknown option, missing DEST)
  3  DEST holds no keepwatch history or cannot be used, or a server or prune is using it`;

export function registerRebuildMirror(program: Command): void {
  withLineOptions(
    program
      .command("rebuild-mirror")
      .description("rebuild the plain-file mirror DEST/<set>/ from the history's latest versions")
      .argument("<DEST>", "the folder a keepwatch server keeps its mirror and history in")
      .option("--set <NAME>", "only this set (default: every set)"),
  )
    .addHelpText("after", HELP)
    .action(async (dest: string, flags: RebuildFlags) => {
      const output = openOutput(flags, "restore");
      await runCommand(output, async () => {
        const report = await rebuildMirror(dest, {
          reporter: output.reporter,
          ...(flags.set === undefined ? {} : { set: flags.set }),
        });
        const done =
          `${plural(report.written, "file")} written (${formatBytes(report.bytes)}), ` +
          `${report.unchanged} unchanged, ${plural(report.folders, "folder")} made, ${report.removed} extra removed`;
        if (report.failed > 0) {
          output.reporter.emit({
            kind: "error",
            code: "KW_HISTORY_DAMAGED",
            message: `The mirror of ${plural(report.sets, "set")} in ${dest} is rebuilt except ${plural(report.failed, "file")} whose history is damaged (listed above; ${done}); run keepwatch verify ${dest} for the details.`,
          });
          return ExitCode.failure;
        }
        output.reporter.emit({
          kind: "info",
          message: `The mirror of ${plural(report.sets, "set")} in ${dest} equals the history again: ${done}.`,
        });
        return ExitCode.ok;
      });
    });
}
