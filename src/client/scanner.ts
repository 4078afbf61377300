// Walks the source folder (or one part of it) and compares what is on disk with what the
// server acknowledged, producing the operations that bring the server up to date.

import type { Stats } from "node:fs";
import { lstat } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode, KeepwatchError } from "../errors.js";
import { pathProblem } from "../protocol/paths.js";
import { byUtf8, FolderListing, LISTING_RUN, SpillList } from "./listing.js";
import { type ClientState, type EntryStats, hasAncestor } from "./state.js";

export { byUtf8 };

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

/**
 * Where a scan hands its operations, a folder at a time, and its problems. `operations`
 * resolves once the scan may go on (the worker's queue has room), or to false to stop it.
 */
export interface ScanSink {
  operations(ops: Operation[]): Promise<boolean>;
  problem(path: string, reason: string): void;
}

export interface ScanSummary {
  files: number;
  bytes: number;
  changedFiles: number;
  changedBytes: number;
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

/**
 * How many entries of a folder are compared and handed on at a time, at most: names on disk,
 * and records of the state alike. A folder of 200,000 files is not held as 200,000 records
 * and operations, nor are 200,000 records of files deleted since.
 */
export const FOLDER_SLICE = 1024;

/** How many entries of a folder are lstat-ed at once. */
const LSTAT_BATCH = 64;

function joinRel(parent: string, name: string): string {
  return parent === "" ? name : `${parent}/${name}`;
}

/**
 * Compare `start` (a set-relative path, "" for all of SRC) on disk with the state, folder
 * by folder, and hand each folder's operations to `sink` as soon as they are known: its
 * deletes, then its new or changed folders, then its files, then its subfolders in turn.
 * `force` sends every file whatever the state says. `lock` is held on a folder while a
 * slice of it is compared, so that what runs there has recorded its answer first.
 *
 * What the scan holds at once is one slice's records and operations, and for each folder on
 * the way down its listing and the subfolders still to visit, each bounded: a folder's names
 * beyond `runSize` are sorted in runs on disk, and its subfolders beyond a few thousand wait
 * there too (listing.ts). Not the whole tree: the worker bounds its queue through `sink`.
 */
export async function scan(
  root: string,
  start: string,
  state: ClientState,
  sink: ScanSink,
  options: {
    force?: boolean;
    lock?: (path: string) => Promise<() => void>;
    sliceSize?: number;
    runSize?: number;
    spillMemory?: number;
  } = {},
): Promise<ScanSummary> {
  const force = options.force ?? false;
  const sliceSize = options.sliceSize ?? FOLDER_SLICE;
  const runSize = options.runSize ?? LISTING_RUN;
  const lock = options.lock ?? (async () => () => {});
  const summary: ScanSummary = { files: 0, bytes: 0, changedFiles: 0, changedBytes: 0 };
  let stopped = false;
  const hand = async (ops: Operation[]): Promise<void> => {
    if (ops.length > 0 && !stopped) stopped = !(await sink.operations(ops));
  };
  /**
   * Hand on deletes of everything recorded below `path` (a folder that is now a file, or
   * gone), a page at a time.
   */
  const handBelow = async (path: string): Promise<void> => {
    for (let after: string | null = null; !stopped; ) {
      const page = state.topMostBelow(path, after, sliceSize);
      await hand(page.paths.map((below): Operation => ({ op: "delete", path: below })));
      if (page.next === null) return;
      after = page.next;
    }
  };
  /**
   * A file on disk against its record. Where a folder was recorded at its path, the path
   * goes to `replaced`: what was recorded below it is deleted (handBelow) before the file
   * is sent.
   */
  const compareFile = (
    entry: DiskEntry,
    record: EntryStats | undefined,
    puts: Operation[],
    replaced: string[],
  ): void => {
    summary.files++;
    summary.bytes += entry.size;
    if (record?.kind === "dir") replaced.push(entry.path);
    if (!force && isUnchanged(entry, record)) return;
    summary.changedFiles++;
    summary.changedBytes += entry.size;
    puts.push({ op: "put", path: entry.path, size: entry.size, force });
  };
  /** The disk entry of `path`; null, reported as a problem, when it is not a regular file or a folder. */
  const entryOrProblem = (path: string, st: Stats): DiskEntry | null => {
    const entry = diskEntry(path, st);
    if (!entry) {
      sink.problem(
        path,
        st.isSymbolicLink() ? "symbolic links are not backed up" : "it is not a regular file or folder",
      );
    }
    return entry;
  };

  /**
   * Compare `names` (a slice of the listing of `folder`, in order) with `records`, the
   * records of the folder's entries in the same range of names, adding their operations to
   * `ops`, the files that replace a recorded folder to `replaced` and the subfolders found
   * to `subfolders`.
   */
  const compareSlice = async (
    folder: string,
    names: string[],
    records: Map<string, EntryStats>,
    ops: Operation[],
    replaced: string[],
    subfolders: SpillList,
  ): Promise<void> => {
    // Records with nothing of that name on disk: each is deleted with all below it. (A
    // name that stands for a link or an unsendable name is not deleted either: the
    // worker leaves a delete alone while something stands at its path.)
    const onDisk = new Set(names);
    for (const [path] of records) {
      if (!onDisk.has(path.slice(path.lastIndexOf("/") + 1))) ops.push({ op: "delete", path });
    }
    const mkdirs: Operation[] = [];
    const puts: Operation[] = [];
    const children: string[] = [];
    for (const name of names) {
      const child = joinRel(folder, name);
      const problem = pathProblem(child);
      if (problem !== null) sink.problem(child, `its name cannot be sent (${problem})`);
      else children.push(child);
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
        if (!st) {
          if (errnoCode(error) === "ENOENT") continue; // gone since it was listed; its delete event follows
          sink.problem(child, `it cannot be read (${errnoCode(error) ?? String(error)})`);
          continue;
        }
        const entry = entryOrProblem(child, st);
        if (!entry) continue;
        const record = records.get(child);
        if (entry.kind === "file") {
          compareFile(entry, record, puts, replaced);
          continue;
        }
        if (!isUnchanged(entry, record)) mkdirs.push({ op: "mkdir", path: child, mode: entry.mode });
        await subfolders.push(child);
      }
    }
    for (const op of mkdirs) ops.push(op);
    for (const op of puts) ops.push(op);
  };

  /** The listing of `folder`; null, reported as a problem where one is due, when it cannot be read. */
  const listFolder = async (folder: string): Promise<FolderListing | null> => {
    try {
      return await FolderListing.open(join(root, folder), state.scratchFolder, runSize);
    } catch (error) {
      // Gone (or no longer a folder) since its lstat: its events follow; nothing to report.
      const code = errnoCode(error);
      if (code === "ENOENT" || code === "ENOTDIR") return null;
      // What the server has below an unreadable folder is kept, not deleted.
      sink.problem(folder, `the folder cannot be read (${code ?? String(error)})`);
      return null;
    }
  };

  /**
   * Compare the entries of `folder` a slice at a time, handing each slice's operations on,
   * and add its subfolders to `subfolders`; false when it cannot be listed. A slice holds at
   * most `sliceSize` names and `sliceSize` records: where more records than that lie
   * between two names (files deleted since), the slice ends at the last record it holds,
   * and the names after it wait for the next. The folder is locked while a slice is
   * compared, not while its operations wait for room in the queue (they need the lock).
   */
  const compareFolder = async (folder: string, subfolders: SpillList): Promise<boolean> => {
    let listing: FolderListing | null = null;
    try {
      let waiting: string[] = []; // names read from the listing that belong to the next slice
      let after: string | null = null; // the last name of the slices compared so far
      for (let first = true; !stopped; first = false) {
        const ops: Operation[] = [];
        const replaced: string[] = [];
        let last: boolean;
        const release = await lock(folder);
        try {
          if (first) {
            listing = await listFolder(folder);
            if (listing === null) return false;
          }
          const current = listing as FolderListing;
          const names = waiting.concat(await current.next(sliceSize - waiting.length));
          // Up to the last name read, or to the end once the listing is read to its end.
          let upTo = current.exhausted ? null : (names.at(-1) as string);
          const records = state.children(folder, after, upTo, sliceSize + 1);
          waiting = [];
          if (records.size > sliceSize) {
            const paths = [...records.keys()];
            const lastPath = paths[sliceSize - 1] as string;
            const end = lastPath.slice(lastPath.lastIndexOf("/") + 1);
            records.delete(paths[sliceSize] as string);
            const cut = names.findIndex((name) => byUtf8(name, end) > 0);
            if (cut >= 0) waiting = names.splice(cut);
            upTo = end;
          }
          last = upTo === null;
          await compareSlice(folder, names, records, ops, replaced, subfolders);
          after = upTo;
        } finally {
          release();
        }
        for (const path of replaced) await handBelow(path);
        await hand(ops);
        if (last) break;
      }
      return true;
    } finally {
      await (listing as FolderListing | null)?.close();
    }
  };

  /** `folder`'s entries, then its subfolders in turn. */
  const visitFolder = async (folder: string): Promise<void> => {
    const subfolders = new SpillList(state.scratchFolder, options.spillMemory);
    try {
      if (!(await compareFolder(folder, subfolders))) return;
      for await (const sub of subfolders.drain()) {
        if (stopped) break;
        await visitFolder(sub);
      }
    } finally {
      await subfolders.close();
    }
  };

  // `start` itself, and the marks of what was sent below it, under a lock of its own.
  const ops: Operation[] = [];
  const replaced: string[] = [];
  let startIsFolder = false;
  const release = await lock(start);
  try {
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
    // Paths sent whose answer was lost (the server may hold them) and that are gone now.
    // They are few: a mark lives from a request to its answer.
    for (const op of await lostSends(root, start, state)) ops.push(op);
    const entry = startStat ? entryOrProblem(start, startStat) : null;
    const record = start === "" ? undefined : state.get(start);
    if (!startStat) {
      // Gone: delete it, or the top-most of what is recorded below it.
      if (record) ops.push({ op: "delete", path: start });
      else replaced.push(start);
    } else if (entry?.kind === "file") {
      compareFile(entry, record, ops, replaced);
    } else if (entry?.kind === "dir") {
      if (start !== "" && !isUnchanged(entry, record))
        ops.push({ op: "mkdir", path: start, mode: entry.mode });
      startIsFolder = true;
    }
  } finally {
    release();
  }
  for (const path of replaced) await handBelow(path);
  await hand(ops);
  if (startIsFolder && !stopped) await visitFolder(start);
  return summary;
}

/** Deletes for the paths at `start` or below that were sent without an answer and are gone. */
async function lostSends(root: string, start: string, state: ClientState): Promise<Operation[]> {
  const deletes: Operation[] = [];
  const deleted = new Set<string>();
  for (const path of state.sentBelow(start).sort()) {
    if (state.get(path) || hasAncestor(path, (folder) => deleted.has(folder))) continue; // recorded: the walk decides
    try {
      await lstat(join(root, path));
      continue;
    } catch (error) {
      const code = errnoCode(error);
      if (code !== "ENOENT" && code !== "ENOTDIR") continue; // cannot tell: keep it
    }
    deletes.push({ op: "delete", path });
    deleted.add(path);
  }
  return deletes;
}
