// What a client needs to reach a server safely: TLS or not, the secret it proves itself
// with, and how it decides to trust the server's certificate (known-servers.ts).

import { readFile, stat } from "node:fs/promises";
import { errnoCode, KeepwatchError } from "../errors.js";
import { isLoopbackAddress, readLocalAccess } from "../security/local-access.js";

export interface ClientSecurity {
  /** Plain TCP: the server must have been started with --insecure too. */
  insecure: boolean;
  /** The secret given by file or environment; null: the local-access file, if any. */
  secret: string | null;
  /** The fingerprint the server must present (--fingerprint), if given. */
  fingerprint?: string | undefined;
  /** The user's config folder (known-servers, local-access files). */
  configDir: string;
  /** Told when a server's fingerprint was pinned. */
  onPinned?: (where: string, fingerprint: string, file: string) => void;
}

/** The secret and (for TLS) the trusted fingerprint to use for host:port. */
export async function credentialsFor(
  security: ClientSecurity,
  host: string,
  port: number,
): Promise<{ token: Buffer; localFingerprint: string | null }> {
  const local = isLoopbackAddress(host) ? await readLocalAccess(security.configDir, port) : null;
  const secret = security.secret ?? local?.secret ?? "";
  return { token: Buffer.from(secret, "utf8"), localFingerprint: local?.fingerprint ?? null };
}

/**
 * The secret from --secret-file, else from KEEPWATCH_SECRET, else null. The first line of
 * the file counts; spaces around it are ignored.
 */
export async function readSecret(
  file: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{
  secret: string | null;
  warning?: string;
}> {
  if (file === undefined) {
    const fromEnv = env.KEEPWATCH_SECRET?.trim();
    return { secret: fromEnv ? fromEnv : null };
  }
  let text: string;
  let warning: string | undefined;
  try {
    text = await readFile(file, "utf8");
    const mode = (await stat(file)).mode;
    if ((mode & 0o077) !== 0) {
      warning = `The secret file ${file} can be read by other users; make it private with "chmod 600 ${file}".`;
    }
  } catch (error) {
    throw new KeepwatchError(
      "KW_SECRET_UNREADABLE",
      `The secret file ${file} cannot be read (${errnoCode(error) ?? String(error)}); give the file the operator's "keepwatch clients add" wrote, or set KEEPWATCH_SECRET.`,
    );
  }
  const secret = text.split("\n")[0]?.trim() ?? "";
  if (secret === "") {
    throw new KeepwatchError(
      "KW_SECRET_UNREADABLE",
      `The secret file ${file} is empty; give the file the operator's "keepwatch clients add" wrote.`,
    );
  }
  return warning === undefined ? { secret } : { secret, warning };
}
