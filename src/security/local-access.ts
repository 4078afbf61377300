// How a server hands its own user a credential: at start it writes, in that user's config
// folder, a file readable only by that user with a fresh secret and the server's
// fingerprint. A client of the same user connecting to a loopback address reads it, so
// `keepwatch server` and `keepwatch client` on one machine need no pairing. The server
// accepts that secret only from a loopback address, and a new one at every start.

import { readFile, rm } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { errnoCode } from "../errors.js";
import { writePrivateFile } from "./private-file.js";

export interface LocalAccess {
  port: number;
  /** Null for a server started with --insecure. */
  fingerprint: string | null;
  secret: string;
  dest: string;
  pid: number;
}

export function localAccessFile(configDir: string, port: number): string {
  return join(configDir, "servers", `${port}.json`);
}

export async function writeLocalAccess(configDir: string, access: LocalAccess): Promise<void> {
  await writePrivateFile(localAccessFile(configDir, access.port), `${JSON.stringify(access, null, 2)}\n`);
}

/** The file for `port`, or null when there is none or it is not one of ours. */
export async function readLocalAccess(configDir: string, port: number): Promise<LocalAccess | null> {
  let text: string;
  try {
    text = await readFile(localAccessFile(configDir, port), "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return null;
    throw error;
  }
  try {
    const value = JSON.parse(text) as Partial<LocalAccess>;
    if (typeof value.secret !== "string" || value.port !== port) return null;
    return {
      port,
      fingerprint: typeof value.fingerprint === "string" ? value.fingerprint : null,
      secret: value.secret,
      dest: typeof value.dest === "string" ? value.dest : "",
      pid: typeof value.pid === "number" ? value.pid : 0,
    };
  } catch {
    return null;
  }
}

/** Remove the file for `port` if it still holds `secret` (a newer server may own it now). */
export async function removeLocalAccess(configDir: string, port: number, secret: string): Promise<void> {
  const current = await readLocalAccess(configDir, port).catch(() => null);
  if (current?.secret === secret) await rm(localAccessFile(configDir, port), { force: true });
}

/** 127.0.0.0/8, ::1 and IPv4-mapped loopback; host names are not resolved here. */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (!address) return false;
  const plain = address.startsWith("::ffff:") ? address.slice("::ffff:".length) : address;
  if (isIP(plain) === 4) return plain.startsWith("127.");
  return plain === "::1";
}
