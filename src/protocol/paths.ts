// The rules for names that cross the wire: a file path inside a set, and a set's name.
// Both sides apply them; the server treats a violation as hostile and writes nothing.

import { KeepwatchError } from "../errors.js";
import { MAX_NAME_BYTES, MAX_PATH_BYTES } from "./messages.js";

/** A UTF-16 surrogate without its partner: such a string has no UTF-8 form. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Why `path` is not a valid set-relative path, or null when it is. A valid path is
 * relative, uses "/" between components, and has no empty, "." or ".." component,
 * no NUL byte, no component over 255 bytes and no more than 4096 bytes in all.
 */
export function pathProblem(path: string): string | null {
  if (path.length === 0) return "it is empty";
  const bytes = Buffer.byteLength(path, "utf8");
  if (bytes > MAX_PATH_BYTES) return `it is ${bytes} bytes long (at most ${MAX_PATH_BYTES})`;
  if (path.includes("\0")) return "it contains a NUL byte";
  if (LONE_SURROGATE.test(path)) return "it is not valid Unicode";
  if (path.startsWith("/")) return "it is absolute";
  for (const part of path.split("/")) {
    if (part === "") return "it has an empty component";
    if (part === "." || part === "..") return `it has a "${part}" component`;
    if (Buffer.byteLength(part, "utf8") > MAX_NAME_BYTES)
      return `a component is over ${MAX_NAME_BYTES} bytes`;
  }
  return null;
}

export function assertValidPath(path: string): void {
  const problem = pathProblem(path);
  if (problem !== null) {
    throw new KeepwatchError(
      "KW_BAD_PATH",
      `The path ${JSON.stringify(path)} was refused because ${problem}.`,
    );
  }
}

/**
 * Why `name` is not a valid set name, or null when it is. A set name is one path
 * component of at most 255 bytes that does not start with "." (which keeps it clear of
 * the server's own .keepwatch folder) and has no "/", NUL or control characters.
 */
export function setNameProblem(name: string): string | null {
  if (name.length === 0) return "it is empty";
  const bytes = Buffer.byteLength(name, "utf8");
  if (bytes > MAX_NAME_BYTES) return `it is ${bytes} bytes long (at most ${MAX_NAME_BYTES})`;
  if (name.startsWith(".")) return 'it starts with "."';
  if (LONE_SURROGATE.test(name)) return "it is not valid Unicode";
  if (name.includes("/")) return 'it contains "/"';
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what we refuse
  if (/[\u0000-\u001f\u007f]/.test(name)) return "it contains a control character";
  return null;
}

export function assertValidSetName(name: string): void {
  const problem = setNameProblem(name);
  if (problem !== null) {
    throw new KeepwatchError(
      "KW_BAD_SET_NAME",
      `The set name ${JSON.stringify(name)} was refused because ${problem}; choose another with --name.`,
    );
  }
}

/** True when `inner` is `outer` or lies below it (both valid wire paths). */
export function isSameOrBelow(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(`${outer}/`);
}
