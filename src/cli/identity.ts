// `keepwatch fingerprint DEST [--rotate]`: print the server identity's fingerprint, or
// replace the identity (the server must be stopped; every client must then be told the
// new fingerprint).

import { access } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { KeepwatchError } from "../errors.js";
import { createIdentity, loadIdentity } from "../security/identity.js";
import { DestLock } from "../server/dest-lock.js";
import { CONTROL_DIR } from "../server/destination.js";
import { runCommand } from "./common.js";

const HELP = `
Examples:
  keepwatch fingerprint data/dest
  keepwatch fingerprint /srv/backup --rotate

A client pins the fingerprint the first time it connects (or is given it with
--fingerprint). After --rotate every client refuses the server until it is given the new
one: keepwatch client SRC HOST --fingerprint NEW.

Exit codes:
  0  printed (or rotated, then printed)
  2  usage error
  3  DEST has no identity yet (start the server once), or a server is running on it (--rotate)`;

export function registerFingerprint(program: Command): void {
  program
    .command("fingerprint")
    .description("print the TLS fingerprint of the server that serves DEST, or make a new identity")
    .argument("<DEST>", "the folder a keepwatch server serves")
    .option("--rotate", "replace the server's key and certificate (stop the server first)")
    .addHelpText("after", HELP)
    .action(async (dest: string, flags: { rotate?: boolean }) => {
      await runCommand(null, async () => {
        const control = join(resolve(dest), CONTROL_DIR);
        if (flags.rotate) {
          await access(control).catch(() => {
            throw noDestination(dest);
          });
          const lock = DestLock.acquire(control, "fingerprint");
          try {
            const identity = await createIdentity(control);
            process.stdout.write(`${identity.fingerprint}\n`);
            process.stderr.write(
              "keepwatch: a new identity was made; give clients the new fingerprint with --fingerprint.\n",
            );
          } finally {
            lock.release();
          }
          return 0;
        }
        const identity = await loadIdentity(control);
        if (!identity) throw noDestination(dest);
        process.stdout.write(`${identity.fingerprint}\n`);
        return 0;
      });
    });
}

function noDestination(dest: string): KeepwatchError {
  return new KeepwatchError(
    "KW_NO_IDENTITY",
    `${resolve(dest)} has no server identity yet; start "keepwatch server ${dest}" once (without --insecure) to make one.`,
  );
}
