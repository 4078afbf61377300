// The client's pins: for each server (host:port) the fingerprint it presented the first
// time, in the known-servers file of the user's config folder, one "HOST:PORT SHA256:…"
// per line. A server that later presents another fingerprint is refused, as ssh does.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode, KeepwatchError } from "../errors.js";
import { parseFingerprint } from "./fingerprint.js";
import { writePrivateFile } from "./private-file.js";

export function knownServersFile(configDir: string): string {
  return join(configDir, "known-servers");
}

export async function readPins(file: string): Promise<Map<string, string>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return new Map();
    throw new KeepwatchError(
      "KW_STATE_UNUSABLE",
      `The known-servers file ${file} cannot be read (${errnoCode(error) ?? String(error)}); fix its permissions.`,
    );
  }
  const pins = new Map<string, string>();
  for (const line of text.split("\n")) {
    const [where, fp] = line.trim().split(/\s+/);
    if (!where || where.startsWith("#") || !fp) continue;
    const parsed = parseFingerprint(fp);
    if (parsed) pins.set(where, parsed);
  }
  return pins;
}

/** Record (or replace) the pin for `where`, keeping every other line as it was. */
export async function writePin(file: string, where: string, fingerprint: string): Promise<void> {
  let lines: string[] = [];
  try {
    lines = (await readFile(file, "utf8")).split("\n").filter((line) => line.trim() !== "");
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") throw error;
  }
  const kept = lines.filter((line) => line.trim().split(/\s+/)[0] !== where);
  if (kept.length === 0) kept.push("# keepwatch servers this user has connected to: HOST:PORT FINGERPRINT");
  kept.push(`${where} ${fingerprint}`);
  await writePrivateFile(file, `${kept.join("\n")}\n`);
}

export interface FingerprintCheck {
  /** host:port as the user named it. */
  where: string;
  /** What the server presented. */
  presented: string;
  /** --fingerprint, when given. */
  expected?: string | undefined;
  /** The fingerprint in the local-access file of a loopback server of this user. */
  local?: string | null | undefined;
  knownServersFile: string;
}

/**
 * Accept or refuse the server's fingerprint. Returns "pinned" when it was recorded now
 * (first use, or a new one given with --fingerprint), "known" otherwise.
 */
export async function checkFingerprint(check: FingerprintCheck): Promise<"pinned" | "known"> {
  const { where, presented, knownServersFile: file } = check;
  if (check.expected !== undefined) {
    if (presented !== check.expected) {
      throw new KeepwatchError(
        "KW_FINGERPRINT_MISMATCH",
        `The server at ${where} presents fingerprint ${presented}, not the ${check.expected} given with --fingerprint; check the fingerprint with the server's operator ("keepwatch fingerprint DEST" on the server).`,
      );
    }
    const pins = await readPins(file);
    if (pins.get(where) === presented) return "known";
    await writePin(file, where, presented);
    return "pinned";
  }
  if (check.local && check.local === presented) return "known";
  const pins = await readPins(file);
  const pinned = pins.get(where);
  if (pinned === presented) return "known";
  if (pinned !== undefined) {
    throw new KeepwatchError(
      "KW_FINGERPRINT_MISMATCH",
      `The server at ${where} presents fingerprint ${presented}, but ${pinned} is pinned for it in ${file}: someone may be intercepting the connection, or the server's identity was replaced. Ask its operator for the fingerprint ("keepwatch fingerprint DEST"); if it is the new one, connect once with --fingerprint ${presented}.`,
    );
  }
  await writePin(file, where, presented);
  return "pinned";
}
