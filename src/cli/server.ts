// `keepwatch server DEST [HOST]`: serve backups into DEST until stopped.

import type { Command } from "commander";
import { KeepwatchServer } from "../server/server.js";
import {
  DEFAULT_PORT,
  EXIT_CODES_HELP,
  openOutput,
  parsePort,
  resolveHost,
  runCommand,
  stopSignal,
} from "./common.js";

interface ServerFlags {
  port: number;
  json?: boolean;
  quiet?: boolean;
  maxConnections: number;
}

export function registerServer(program: Command): void {
  program
    .command("server")
    .description("serve backups into DEST: a plain-file mirror per set under DEST/<set>/")
    .argument("<DEST>", "destination folder (created if missing)")
    .argument("[HOST]", "address to listen on (localhost means 127.0.0.1)", "127.0.0.1")
    .option("-p, --port <port>", "TCP port to listen on (0 picks a free one)", parsePort, DEFAULT_PORT)
    .option("--max-connections <n>", "most clients connected at once", (v) => parsePort(v), 256)
    .option("--json", "print one JSON object per event")
    .option("-q, --quiet", "print only warnings and errors")
    .addHelpText("after", `\nExample:\n  keepwatch server data/dest localhost\n${EXIT_CODES_HELP}`)
    .action(async (dest: string, host: string | undefined, flags: ServerFlags) => {
      const output = openOutput(flags, "server");
      await runCommand(output, async () => {
        const signal = stopSignal();
        const server = await KeepwatchServer.start({
          dest,
          host: resolveHost(host),
          port: flags.port,
          reporter: output.reporter,
          maxConnections: flags.maxConnections,
        });
        await new Promise<void>((resolve) =>
          signal.addEventListener("abort", () => resolve(), { once: true }),
        );
        output.reporter.emit({ kind: "info", message: "Stopping: finishing started writes, then closing." });
        await server.close();
        return 0;
      });
    });
}
