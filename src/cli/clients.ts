// `keepwatch clients add|list|remove`: the operator's list of clients allowed to connect,
// kept in DEST/.keepwatch/clients.db. A running server sees changes within a second and
// closes the connections of a removed client.

import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { errnoCode, KeepwatchError } from "../errors.js";
import { writePrivateFile } from "../security/private-file.js";
import { ClientRegistry } from "../server/clients.js";
import { CONTROL_DIR } from "../server/destination.js";
import { runCommand, usageError } from "./common.js";
import { formatLocalTime } from "./time.js";

const HELP = `
Examples:
  keepwatch clients add laptop --dest /srv/backup
  keepwatch clients add laptop --dest /srv/backup --sets documents,photos --secret-out laptop.secret
  keepwatch clients list --dest /srv/backup
  keepwatch clients remove laptop --dest /srv/backup

"add" shows the new client's secret once; the server keeps only its SHA-256. Give it to
the client in a file (--secret-file) or in KEEPWATCH_SECRET, never on a command line.
Without --sets a client may use any set name no other client or data has yet, and owns
it from its first connection on.

Exit codes:
  0  done
  1  an unexpected error
  2  usage error (bad name, unknown client, name taken)
  3  DEST is not a folder or cannot be written`;

interface DestFlags {
  dest: string;
}

export function registerClients(program: Command): void {
  const clients = program
    .command("clients")
    .description("add, list and remove the clients allowed to connect to the server of DEST")
    .addHelpText("after", HELP);

  clients
    .command("add")
    .description("allow a new client; prints its secret once")
    .argument("<NAME>", "a name for the client (letters, digits, . _ - @)")
    .requiredOption("--dest <DEST>", "the folder the server serves")
    .option("--sets <sets>", "the only sets it may use, comma-separated (default: sets it claims)")
    .option("--secret-out <file>", "write the secret into this new file (mode 0600) instead of printing it")
    .action(async (name: string, flags: DestFlags & { sets?: string; secretOut?: string }) => {
      await runCommand(null, async () => {
        const sets = flags.sets === undefined ? null : parseSets(flags.sets);
        const secret = await withRegistry(flags.dest, (registry) => registry.add(name, sets));
        const scope = sets === null ? "sets it claims" : `the sets ${sets.join(", ")}`;
        if (flags.secretOut !== undefined) {
          await writePrivateFile(resolve(flags.secretOut), `${secret}\n`);
          process.stderr.write(
            `keepwatch: client ${name} added (${scope}); its secret is in ${flags.secretOut}. Give the client that file: keepwatch client SRC HOST --secret-file FILE.\n`,
          );
        } else {
          process.stdout.write(`${secret}\n`);
          process.stderr.write(
            `keepwatch: client ${name} added (${scope}). The secret above is shown only this once: put it in a file readable only by the client's user and run keepwatch client SRC HOST --secret-file FILE.\n`,
          );
        }
        return 0;
      });
    });

  clients
    .command("list")
    .description("list the clients, their sets and when they were added")
    .requiredOption("--dest <DEST>", "the folder the server serves")
    .option("--json", "one JSON object per client")
    .action(async (flags: DestFlags & { json?: boolean }) => {
      await runCommand(null, async () => {
        const list = await withRegistry(flags.dest, (registry) => registry.list());
        for (const client of list) {
          if (flags.json) {
            process.stdout.write(
              `${JSON.stringify({ ...client, created: new Date(client.createdMs).toISOString() })}\n`,
            );
            continue;
          }
          const sets =
            client.sets === null
              ? `claims sets; owns ${client.owned.join(", ") || "none yet"}`
              : `sets ${client.sets.join(", ")}`;
          process.stdout.write(`${client.name}\t${sets}\tadded ${formatLocalTime(client.createdMs)}\n`);
        }
        if (list.length === 0 && !flags.json)
          process.stderr.write(
            "keepwatch: no clients yet; add one with keepwatch clients add NAME --dest DEST.\n",
          );
        return 0;
      });
    });

  clients
    .command("remove")
    .description("revoke a client: its secret stops working and its connections are closed")
    .argument("<NAME>", "the client's name")
    .requiredOption("--dest <DEST>", "the folder the server serves")
    .action(async (name: string, flags: DestFlags) => {
      await runCommand(null, async () => {
        const removed = await withRegistry(flags.dest, (registry) => registry.remove(name));
        if (!removed) {
          throw usageError(
            `There is no client named ${name}; "keepwatch clients list --dest ${flags.dest}" lists them.`,
          );
        }
        process.stderr.write(
          `keepwatch: client ${name} removed; a running server closes its connections within a second. The sets it used stay its own (give them to another client with --sets).\n`,
        );
        return 0;
      });
    });
}

function parseSets(text: string): string[] {
  const sets = text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (sets.length === 0)
    throw usageError("--sets needs at least one set name, for example --sets documents,photos.");
  return sets;
}

async function withRegistry<T>(dest: string, body: (registry: ClientRegistry) => T): Promise<T> {
  const root = resolve(dest);
  try {
    if (!(await stat(root)).isDirectory()) throw new Error("not a folder");
  } catch (error) {
    throw new KeepwatchError(
      "KW_DEST_NOT_DIR",
      `The destination ${root} is not a folder (${errnoCode(error) ?? "not a folder"}); give the folder the server serves.`,
    );
  }
  const registry = ClientRegistry.open(join(root, CONTROL_DIR));
  try {
    return body(registry);
  } finally {
    registry.close();
  }
}
