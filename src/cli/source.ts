// What `client` and `push` share: their arguments and options, and turning them into a
// BackupClient (SRC resolved, set name checked, state folder chosen).

import { basename, resolve } from "node:path";
import type { Command } from "commander";
import { BackupClient, checkSource } from "../client/backup.js";
import { defaultStateDir } from "../client/state.js";
import { assertValidSetName } from "../protocol/paths.js";
import {
  type ConnectionFlags,
  clientSecurity,
  DEFAULT_PORT,
  type Output,
  type OutputOptions,
  parsePort,
  reporterNotes,
  resolveHost,
  withConnectionOptions,
} from "./common.js";

export interface SourceFlags extends OutputOptions, ConnectionFlags {
  port: number;
  name?: string;
  stateDir?: string;
}

/** Add SRC, HOST and the options every sending command has. */
export function withSourceOptions(command: Command): Command {
  return withConnectionOptions(command)
    .argument("<SRC>", "folder to back up")
    .argument("[HOST]", "server address (localhost means 127.0.0.1)", "127.0.0.1")
    .option("-p, --port <port>", "server port", parsePort, DEFAULT_PORT)
    .option("-n, --name <set>", "name of the backup set on the server (default: SRC's folder name)")
    .option(
      "--state-dir <dir>",
      "where the client records what the server has (default: the user's state folder)",
    )
    .option("--json", "print one JSON object per event")
    .option("-q, --quiet", "print only warnings and errors");
}

/** Check SRC and the set name, then build the client; throws a KeepwatchError on a mistake. */
export async function createBackupClient(
  src: string,
  host: string | undefined,
  flags: SourceFlags,
  output: Output,
  quietMs?: number,
): Promise<BackupClient> {
  const root = resolve(src);
  await checkSource(root);
  const set = flags.name ?? basename(root);
  assertValidSetName(set);
  return new BackupClient({
    root,
    set,
    stateDir: flags.stateDir ? resolve(flags.stateDir) : defaultStateDir(),
    host: resolveHost(host),
    port: flags.port,
    security: await clientSecurity(flags, reporterNotes(output.reporter)),
    reporter: output.reporter,
    ...(quietMs === undefined ? {} : { quietMs }),
  });
}
