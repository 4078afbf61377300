// `keepwatch push SRC [HOST]`: one pass; exit 0 only once the server acknowledged everything.

import type { Command } from "commander";
import { ExitCode } from "../errors.js";
import { EXIT_CODES_HELP, openOutput, runCommand } from "./common.js";
import { createBackupClient, type SourceFlags, withSourceOptions } from "./source.js";

interface PushFlags extends SourceFlags {
  force?: boolean;
}

export function registerPush(program: Command): void {
  withSourceOptions(
    program
      .command("push")
      .description("back up SRC once and exit: 0 when the server acknowledged everything"),
  )
    .option("-f, --force", "send every file again, even those the server already has")
    .addHelpText(
      "after",
      `\nExamples:\n  keepwatch push data/source localhost\n  keepwatch push --force data/source\n${EXIT_CODES_HELP}`,
    )
    .action(async (src: string, host: string | undefined, flags: PushFlags) => {
      const output = openOutput(flags, "client");
      await runCommand(output, async () => {
        const client = await createBackupClient(src, host, flags, output);
        const summary = await client.push(flags.force ?? false);
        if (summary.problems.length > 0) {
          output.reporter.emit({
            kind: "error",
            code: "KW_PUSH_INCOMPLETE",
            message: `${summary.problems.length} path(s) could not be backed up (listed above); fix them and push again.`,
          });
          return ExitCode.failure;
        }
        output.reporter.emit({
          kind: "info",
          message: `Push complete: ${summary.files} file(s) sent; everything is acknowledged by the server.`,
        });
        return 0;
      });
    });
}
