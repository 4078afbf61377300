// `keepwatch server DEST [HOST]`: serve backups into DEST until stopped.

import { type Command, InvalidArgumentError } from "commander";
import { MIN_IDLE_TIMEOUT_MS } from "../protocol/messages.js";
import { KeepwatchServer } from "../server/server.js";
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

interface ServerFlags {
  port: number;
  json?: boolean;
  quiet?: boolean;
  maxConnections: number;
  insecure?: boolean;
  handshakeTimeout: number;
  idleTimeout: number;
}

function parseTimeout(value: string): number {
  const ms = parseMillis(value);
  if (ms < MIN_IDLE_TIMEOUT_MS) {
    throw new InvalidArgumentError(`give at least ${MIN_IDLE_TIMEOUT_MS} milliseconds.`);
  }
  return ms;
}

export function registerServer(program: Command): void {
  program
    .command("server")
    .description("serve backups into DEST: a plain-file mirror per set under DEST/<set>/")
    .argument("<DEST>", "destination folder (created if missing)")
    .argument("[HOST]", "address to listen on (localhost means 127.0.0.1)", "127.0.0.1")
    .option("-p, --port <port>", "TCP port to listen on (0 picks a free one)", parsePort, DEFAULT_PORT)
    .option("--max-connections <n>", "most clients connected at once", (v) => parsePort(v), 256)
    .option(
      "--handshake-timeout <ms>",
      "close a connection that has not finished TLS and HELLO within this time",
      parseTimeout,
      10_000,
    )
    .option(
      "--idle-timeout <ms>",
      "close a connection that sends nothing for this long",
      parseTimeout,
      30_000,
    )
    .option("--insecure", "plain TCP instead of TLS: anyone on the network can read and change what travels")
    .option("--json", "print one JSON object per event")
    .option("-q, --quiet", "print only warnings and errors")
    .addHelpText(
      "after",
      `\nExamples:\n  keepwatch server data/dest localhost\n  keepwatch server /srv/backup 0.0.0.0 --port 7468\n\nOn first start the server makes its TLS identity in DEST/.keepwatch/identity and prints\nits fingerprint. Clients of the same user on this machine connect without a secret;\nothers need one: keepwatch clients add NAME --dest DEST.\n${EXIT_CODES_HELP}`,
    )
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
          insecure: flags.insecure ?? false,
          limits: { helloTimeoutMs: flags.handshakeTimeout, idleTimeoutMs: flags.idleTimeout },
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
