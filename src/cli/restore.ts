// `keepwatch restore PATH [HOST] --to DIR`: put a file, a folder or a whole set back as it
// was at a moment (--at, default now) into DIR, with its bytes, mode and mtime, never
// replacing an existing file unless --overwrite.

import { resolve } from "node:path";
import type { Command } from "commander";
import { restore } from "../client/restorer.js";
import { KeepwatchError } from "../errors.js";
import { formatBytes } from "../ui/index.js";
import { EXIT_CODES_HELP, openOutput, runCommand, stopSignal } from "./common.js";
import {
  AT_HELP,
  describeTime,
  explainNotFound,
  parseSetPath,
  type RemoteFlags,
  requestTime,
  shownPath,
  withLink,
  withRemoteOptions,
} from "./remote.js";

interface RestoreFlags extends RemoteFlags {
  to: string;
  at?: string;
  overwrite?: boolean;
  quiet?: boolean;
}

export function registerRestore(program: Command): void {
  withRemoteOptions(
    program
      .command("restore")
      .description("restore a file, a folder or a whole set as it was at a moment into a local folder")
      .argument("<PATH>", "SET or SET/path as the server's mirror shows it, e.g. source/docs"),
  )
    .requiredOption(
      "--to <DIR>",
      "folder to restore into (created if missing); PATH's last component goes inside it",
    )
    .option("--at <TIME>", AT_HELP)
    .option("--overwrite", "replace files that already exist in DIR (atomically); folders are merged")
    .option("-q, --quiet", "print only warnings and errors")
    .addHelpText(
      "after",
      `\nExamples:\n  keepwatch restore source/test.txt localhost --to /tmp/restored\n  keepwatch restore source/docs --at "2h ago" --to /tmp/restored\n  keepwatch restore source --at 2024-05-01T14:30 --to /tmp/restored --overwrite\n${EXIT_CODES_HELP}`,
    )
    .action(async (pathArg: string, host: string | undefined, flags: RestoreFlags) => {
      const output = openOutput(flags, "restore");
      await runCommand(output, async () => {
        const target = parseSetPath(pathArg);
        const time = requestTime(flags.at);
        const root = resolve(flags.to);
        const signal = stopSignal();
        const summary = await withLink(host, flags, target.set, (link) => {
          signal.addEventListener("abort", () => link.close(), { once: true });
          return restore({
            ...target,
            root,
            time,
            overwrite: flags.overwrite ?? false,
            link,
            reporter: output.reporter,
          });
        }).catch((error: unknown) => {
          if (signal.aborted) {
            throw new KeepwatchError(
              "KW_INTERRUPTED",
              "The restore was stopped; the files restored so far are complete, and the one under way was removed.",
            );
          }
          throw explainNotFound(error, target, time);
        });
        output.reporter.emit({
          kind: "info",
          message: `Restored ${summary.files} file(s) and ${summary.folders} folder(s) (${formatBytes(summary.bytes)}) of ${shownPath(target)} as it was ${describeTime(time)} into ${root}.`,
        });
        return 0;
      });
    });
}
