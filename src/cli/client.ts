// `keepwatch client SRC [HOST]`: back up SRC now, then keep watching it until stopped.

import type { Command } from "commander";
import { EXIT_CODES_HELP, openOutput, parseMillis, runCommand, stopSignal } from "./common.js";
import { createBackupClient, type SourceFlags, withSourceOptions } from "./source.js";

interface ClientFlags extends SourceFlags {
  quietMs: number;
}

export function registerClient(program: Command): void {
  withSourceOptions(
    program
      .command("client")
      .description("back up SRC now, then keep watching it and back up every change until stopped"),
  )
    .option("--quiet-ms <ms>", "send a changed file once it has been quiet this long", parseMillis, 30)
    .addHelpText("after", `\nExample:\n  keepwatch client data/source localhost\n${EXIT_CODES_HELP}`)
    .action(async (src: string, host: string | undefined, flags: ClientFlags) => {
      const output = openOutput(flags, "client");
      await runCommand(output, async () => {
        const client = await createBackupClient(src, host, flags, output, flags.quietMs);
        await client.watch(stopSignal());
        return 0;
      });
    });
}
