// `keepwatch push SRC [HOST]`: one pass; exit 0 only once the server acknowledged everything.

import type { Command } from "commander";
import { BackupClient } from "../client/backup.js";
import { ExitCode } from "../errors.js";
import { DEFAULT_PORT, EXIT_CODES_HELP, openOutput, parsePort, resolveHost, runCommand } from "./common.js";
import { resolveSource } from "./source.js";

interface PushFlags {
  port: number;
  name?: string;
  force?: boolean;
  stateDir?: string;
  json?: boolean;
  quiet?: boolean;
}

export function registerPush(program: Command): void {
  program
    .command("push")
    .description("back up SRC once and exit: 0 when the server acknowledged everything")
    .argument("<SRC>", "folder to back up")
    .argument("[HOST]", "server address (localhost means 127.0.0.1)", "127.0.0.1")
    .option("-p, --port <port>", "server port", parsePort, DEFAULT_PORT)
    .option("-n, --name <set>", "name of the backup set on the server (default: SRC's folder name)")
    .option("-f, --force", "send every file again, even those the server already has")
    .option(
      "--state-dir <dir>",
      "where the client records what the server has (default: the user's state folder)",
    )
    .option("--json", "print one JSON object per event")
    .option("-q, --quiet", "print only warnings and errors")
    .addHelpText(
      "after",
      `\nExamples:\n  keepwatch push data/source localhost\n  keepwatch push --force data/source\n${EXIT_CODES_HELP}`,
    )
    .action(async (src: string, host: string | undefined, flags: PushFlags) => {
      const output = openOutput(flags, "client");
      await runCommand(output, async () => {
        const source = await resolveSource(src, flags);
        const client = new BackupClient({
          ...source,
          host: resolveHost(host),
          port: flags.port,
          reporter: output.reporter,
        });
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
