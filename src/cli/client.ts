// `keepwatch client SRC [HOST]`: back up SRC now, then keep watching it until stopped.

import type { Command } from "commander";
import { BackupClient } from "../client/backup.js";
import {
  DEFAULT_PORT,
  EXIT_CODES_HELP,
  openOutput,
  parseMillis,
  parsePort,
  resolveHost,
  runCommand,
  stopSignal,
} from "./common.js";
import { resolveSource } from "./source.js";

interface ClientFlags {
  port: number;
  name?: string;
  quietMs: number;
  stateDir?: string;
  json?: boolean;
  quiet?: boolean;
}

export function registerClient(program: Command): void {
  program
    .command("client")
    .description("back up SRC now, then keep watching it and back up every change until stopped")
    .argument("<SRC>", "folder to back up")
    .argument("[HOST]", "server address (localhost means 127.0.0.1)", "127.0.0.1")
    .option("-p, --port <port>", "server port", parsePort, DEFAULT_PORT)
    .option("-n, --name <set>", "name of the backup set on the server (default: SRC's folder name)")
    .option("--quiet-ms <ms>", "send a changed file once it has been quiet this long", parseMillis, 30)
    .option(
      "--state-dir <dir>",
      "where the client records what the server has (default: the user's state folder)",
    )
    .option("--json", "print one JSON object per event")
    .option("-q, --quiet", "print only warnings and errors")
    .addHelpText("after", `\nExample:\n  keepwatch client data/source localhost\n${EXIT_CODES_HELP}`)
    .action(async (src: string, host: string | undefined, flags: ClientFlags) => {
      const output = openOutput(flags, "client");
      await runCommand(output, async () => {
        const source = await resolveSource(src, flags);
        const client = new BackupClient({
          ...source,
          host: resolveHost(host),
          port: flags.port,
          reporter: output.reporter,
          quietMs: flags.quietMs,
        });
        await client.watch(stopSignal());
        return 0;
      });
    });
}
