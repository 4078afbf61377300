// Walks the source folder (or one part of it) and compares what is on disk with what the
// server acknowledged, producing the operations that bring the server up to date.

import type { Stats } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode, KeepwatchError } from "../errors.js";
import { pathProblem } from "../protocol/paths.js";
import type { ClientState, EntryStats } from "./state.js";

export interface DiskEntry {
  path: string;
  kind: "file" | "dir";
  size: number;
  mtimeMs: number;
  mode: number;
  ino: number;
  /** Changes with every write, chmod or rename, and cannot be set back (as mtime can). */
  ctimeMs: number;
}

export type Operation =
  /** `force` sends the file even when the state says the server has it. */
  | { op: "put"; path: string; size: number; force: boolean }
  | { op: "mkdir"; path: string; mode: number }
  | { op: "delete"; path: string };

export interface ScanProblem {
  path: string;
  reason: string;
}

export interface ScanResult {
  files: number;
  bytes: number;
  operations: Operation[];
  problems: ScanProblem[];
}

export function diskEntry(path: string, st: Stats): DiskEntry | null {
  if (st.isFile()) {
    const { size, mtimeMs, ino, ctimeMs } = st;
    return { path, kind: "file", size, mtimeMs, mode: st.mode & 0o7777, ino, ctimeMs };
  }
  if (st.isDirectory()) {
    return {
      path,
      kind: "dir",
      size: 0,
      mtimeMs: st.mtimeMs,
      mode: st.mode & 0o7777,
      ino: st.ino,
      ctimeMs: st.ctimeMs,
    };
  }
  return null;
}

/** True when the disk entry is what the server already has. */
export function isUnchanged(entry: DiskEntry, record: EntryStats | undefined): boolean {
  if (!record || record.kind !== entry.kind) return false;
  if (record.kind === "dir") return record.mode === entry.mode;
  return (
    record.size === entry.size &&
    record.mtimeMs === entry.mtimeMs &&
    record.mode === entry.mode &&
    record.ino === entry.ino &&
    // A record from before ctime was kept (state schema 2) has none: mtime decides alone.
    (record.ctimeMs === null || record.ctimeMs === entry.ctimeMs)
  );
}

/** How many entries of a folder are lstat-ed at once. */
const LSTAT_BATCH = 64;

function joinRel(parent: string, name: string): string {
  return parent === "" ? name : `${parent}/${name}`;
}

/**
 * Compare `start` (a set-relative path, "" for all of SRC) on disk with the state.
 * `force` sends every file whatever the state says.
 */
export async function scan(
  root: string,
  start: string,
  state: ClientState,
  force = false,
): Promise<ScanResult> {
  const known = state.below(start);
  const seen = new Set<string>();
  const result: ScanResult = { files: 0, bytes: 0, operations: [], problems: [] };
  const puts: Operation[] = [];

  const visit = async (path: string, st: Stats): Promise<void> => {
    const entry = diskEntry(path, st);
    if (!entry) {
      result.problems.push({
        path,
        reason: st.isSymbolicLink()
          ? "symbolic links are not backed up"
          : "it is not a regular file or folder",
      });
      return;
    }
    seen.add(path);
    const record = known.get(path);
    if (entry.kind === "file") {
      result.files++;
      result.bytes += entry.size;
      if (force || !isUnchanged(entry, record)) puts.push({ op: "put", path, size: entry.size, force });
      return;
    }
    if (path !== "" && !isUnchanged(entry, record)) {
      result.operations.push({ op: "mkdir", path, mode: entry.mode });
    }
    let names: string[];
    try {
      names = await readdir(join(root, path));
    } catch (error) {
      // Gone (or no longer a folder) since its lstat: its events follow; nothing to report.
      const code = errnoCode(error);
      if (code === "ENOENT" || code === "ENOTDIR") return;
      // Keep what the server has below an unreadable folder rather than deleting it.
      for (const p of known.keys()) if (p.startsWith(`${path}/`)) seen.add(p);
      result.problems.push({
        path,
        reason: `the folder cannot be read (${errnoCode(error) ?? String(error)})`,
      });
      return;
    }
    names.sort();
    const children: string[] = [];
    for (const name of names) {
      const child = joinRel(path, name);
      const problem = pathProblem(child);
      if (problem !== null) {
        result.problems.push({ path: child, reason: `its name cannot be sent (${problem})` });
        continue;
      }
      children.push(child);
    }
    // A batch of lstat calls at a time: one by one, each would wait for its own round trip
    // to the thread pool. The results are still taken in name order.
    for (let from = 0; from < children.length; from += LSTAT_BATCH) {
      const batch = children.slice(from, from + LSTAT_BATCH);
      const stats = await Promise.all(
        batch.map((child) =>
          lstat(join(root, child)).then(
            (st) => ({ st, error: null }),
            (error: unknown) => ({ st: null, error }),
          ),
        ),
      );
      for (const [i, child] of batch.entries()) {
        const { st, error } = stats[i] as { st: Stats | null; error: unknown };
        if (st) {
          await visit(child, st);
          continue;
        }
        if (errnoCode(error) === "ENOENT") continue; // gone since readdir; its delete event follows
        result.problems.push({
          path: child,
          reason: `it cannot be read (${errnoCode(error) ?? String(error)})`,
        });
      }
    }
  };

  let startStat: Stats | null = null;
  try {
    startStat = await lstat(join(root, start));
  } catch (error) {
    if (errnoCode(error) !== "ENOENT" && errnoCode(error) !== "ENOTDIR") throw error;
  }
  // A vanished SRC (unmounted, moved away) must never be mirrored as "delete everything".
  if (start === "" && !startStat?.isDirectory()) {
    throw new KeepwatchError(
      "KW_SOURCE_MISSING",
      `The source folder ${root} is gone or is no longer a folder; nothing was deleted on the server. Restore it and start the client again.`,
    );
  }
  if (startStat) await visit(start, startStat);

  // Records with nothing on disk, and paths sent whose answer was lost (the server may
  // hold them): delete the top-most of each removed subtree only.
  const gone: string[] = [];
  for (const path of known.keys()) if (!seen.has(path)) gone.push(path);
  for (const path of state.sentBelow(start)) if (!seen.has(path) && !known.has(path)) gone.push(path);
  gone.sort();
  const deletes: Operation[] = [];
  let lastDeleted: string | null = null;
  for (const path of gone) {
    if (lastDeleted !== null && path.startsWith(`${lastDeleted}/`)) continue;
    deletes.push({ op: "delete", path });
    lastDeleted = path;
  }
  // Deletes first, then folders, then files. Joined by concat, not by pushing spread
  // arguments (or unshifting one by one): a tree of 200,000 files overflows the stack that way.
  result.operations = deletes.concat(result.operations, puts);
  return result;
}
