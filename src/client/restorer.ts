// Restoring from the server's history into a local folder (DIR). A LIST of the same tree
// first finds what is in the way and the totals for the progress bar; then one RESTORE
// request streams ENTRY and FILE_DATA frames that become folders and files under DIR.
// Each file is written to a temporary file in its own folder while its SHA-256 is
// computed, given its mode and mtime, made durable, checked, and only then put in place.
// Nothing is followed through a symbolic link inside DIR, and nothing that exists is
// replaced unless `overwrite` is set.

import { createHash, type Hash, randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { type FileHandle, link, lstat, mkdir, open, rename, stat, unlink } from "node:fs/promises";
import { join, posix } from "node:path";
import { errnoCode, KeepwatchError, ProtocolError } from "../errors.js";
import type { Frame } from "../protocol/frame.js";
import { decodeHistory, type Entry, encodeHistory, type ListRequest } from "../protocol/history-messages.js";
import { MessageType, messageTypeName, SHA256_BYTES } from "../protocol/messages.js";
import { isSameOrBelow, pathProblem } from "../protocol/paths.js";
import type { Reporter } from "../ui/events.js";
import type { ServerLink } from "./link.js";

/** What to restore and where. */
export interface RestoreTarget {
  /** DIR, absolute; created (with its parents) if missing. */
  root: string;
  /** The set the restored path belongs to. */
  set: string;
  /** The restored path inside the set; "" for the whole set. */
  path: string;
  /** Replace existing files (and links or files where a folder goes); folders are never replaced. */
  overwrite: boolean;
}

export interface RestoreOptions extends RestoreTarget {
  link: ServerLink;
  /** The moment to restore (ms since the epoch); -1 for now. */
  time: number;
  reporter: Reporter;
}

export interface RestoreSummary {
  files: number;
  folders: number;
  bytes: number;
}

/**
 * Where an entry of the set goes, relative to DIR: the restored path's last component and
 * what lies below it (`docs/a.txt` for `docs/a.txt` when `docs` is restored from
 * `source/docs`), or `SET/...` when the whole set is restored.
 */
export function localPath(target: Pick<RestoreTarget, "set" | "path">, entryPath: string): string {
  if (target.path === "") return `${target.set}/${entryPath}`;
  const parent = posix.dirname(target.path);
  return parent === "." ? entryPath : entryPath.slice(parent.length + 1);
}

/** Send one LIST and hand each ENTRY to `onEntry` as it arrives; resolves on the server's ACK. */
export async function listEntries(
  link: ServerLink,
  request: ListRequest,
  onEntry: (entry: Entry) => void | Promise<void>,
): Promise<void> {
  const { id, answer } = link.open(async (frame: Frame) => {
    if (frame.type !== MessageType.ENTRY) {
      throw new ProtocolError(
        "KW_UNEXPECTED_MESSAGE",
        `The server answered LIST with ${messageTypeName(frame.type)} instead of ENTRY.`,
      );
    }
    await onEntry(decodeHistory.entry(frame.payload));
  });
  link.conn.send(MessageType.LIST, id, encodeHistory.list(request));
  await answer;
}

/** Restore `path` of `set` as it was at `time` into `root`; resolves once all of it is durable. */
export async function restore(options: RestoreOptions): Promise<RestoreSummary> {
  const { link, reporter } = options;
  // First the tree alone: refuse before writing anything when files are in the way.
  await checkRoot(options.root);
  let files = 0;
  let bytes = 0;
  // Only the first is named, so that memory does not grow with the number in the way.
  const conflicts: { first: KeepwatchError | null; count: number } = { first: null, count: 0 };
  await listEntries(link, { path: options.path, time: options.time, mode: 0 }, async (entry) => {
    checkEntry(options, entry);
    if (entry.kind === "file") {
      files += 1;
      bytes += entry.size;
    }
    const abs = join(options.root, ...localPath(options, entry.path).split("/"));
    const inWay = await inTheWay(abs, entry.kind === "dir" ? "dir" : "file", options.overwrite);
    if (inWay === null) return;
    if (inWay.code !== "KW_TARGET_EXISTS") throw inWay;
    conflicts.first ??= inWay;
    conflicts.count += 1;
  });
  if (conflicts.first !== null && conflicts.count === 1) throw conflicts.first;
  if (conflicts.first !== null) {
    throw new KeepwatchError(
      "KW_TARGET_EXISTS",
      `${conflicts.first.message.replace(/;.*$/, "")}, and ${conflicts.count - 1} more of the restored paths are taken in ${options.root}; add --overwrite to replace existing files, or restore into another folder with --to.`,
    );
  }
  await ensureRoot(options.root);
  reporter.emit({ kind: "queued", files, bytes });

  const restorer = new Restorer(options, reporter);
  const { id, answer } = link.open((frame) => restorer.onFrame(frame));
  link.conn.send(MessageType.RESTORE, id, encodeHistory.restore({ path: options.path, time: options.time }));
  try {
    await answer;
    return await restorer.finish();
  } catch (error) {
    await restorer.abort();
    // An ACK before the last file was complete: the server broke the protocol.
    if (error instanceof ProtocolError && !link.isLost) link.conn.fail(error);
    throw error;
  }
}

/** A file being received: its temporary file, and what has arrived of it. */
interface OpenFile {
  entry: Entry;
  /** The set-qualified path, for people. */
  shown: string;
  target: string;
  tempPath: string;
  handle: FileHandle;
  hash: Hash;
  written: number;
}

/** A folder whose mode and mtime are set once everything inside it is in place. */
interface FolderAttributes {
  abs: string;
  depth: number;
  mode: number;
  mtimeMs: number;
}

/** Turns the frames of one RESTORE answer into folders and files under the target's root. */
export class Restorer {
  private current: OpenFile | null = null;
  /** Folders (relative to root) known to exist as real folders, created or checked. */
  private readonly knownFolders = new Set<string>();
  private readonly folderAttributes: FolderAttributes[] = [];
  /** Folders whose entries changed: fsynced at the end. */
  private readonly dirtyFolders = new Set<string>();
  private readonly summary: RestoreSummary = { files: 0, folders: 0, bytes: 0 };

  constructor(
    private readonly target: RestoreTarget,
    private readonly reporter: Reporter,
  ) {}

  /** The answer handler: one ENTRY or FILE_DATA frame at a time. */
  async onFrame(frame: Frame): Promise<void> {
    if (frame.type === MessageType.ENTRY) return this.onEntry(decodeHistory.entry(frame.payload));
    if (frame.type === MessageType.FILE_DATA) return this.onData(frame.payload);
    throw new ProtocolError(
      "KW_UNEXPECTED_MESSAGE",
      `The server answered RESTORE with ${messageTypeName(frame.type)}.`,
    );
  }

  /** After the server's ACK: folder modes and mtimes, then durability of every folder touched. */
  async finish(): Promise<RestoreSummary> {
    if (this.current) {
      throw new ProtocolError(
        "KW_SIZE_MISMATCH",
        `The server ended the restore before all of ${JSON.stringify(this.current.shown)} arrived.`,
      );
    }
    // Entries placed in a folder are made durable before its mode can shut us out of it.
    for (const folder of this.dirtyFolders) await syncFolder(folder);
    // Deepest first: a folder's mtime changes whenever something inside it is created.
    const folders = [...this.folderAttributes].sort((a, b) => b.depth - a.depth);
    for (const folder of folders) {
      try {
        await chmodAndTouch(folder.abs, folder.mode, folder.mtimeMs);
      } catch (error) {
        throw targetError(error, folder.abs);
      }
    }
    for (const folder of folders) await syncFolder(folder.abs).catch(() => {});
    return { ...this.summary };
  }

  /** Remove the temporary file of a transfer that will not complete. Never throws. */
  async abort(): Promise<void> {
    const file = this.current;
    this.current = null;
    if (!file) return;
    await file.handle.close().catch(() => {});
    await unlink(file.tempPath).catch(() => {});
  }

  private async onEntry(entry: Entry): Promise<void> {
    if (this.current) {
      throw new ProtocolError(
        "KW_SIZE_MISMATCH",
        `The server started ${JSON.stringify(entry.path)} before all of ${JSON.stringify(this.current.shown)} arrived.`,
      );
    }
    checkEntry(this.target, entry);
    const rel = localPath(this.target, entry.path);
    await this.ensureParents(rel);
    const abs = this.absolute(rel);
    if (entry.kind === "dir") return this.restoreFolder(rel, abs, entry);
    const inWay = await inTheWay(abs, "file", this.target.overwrite);
    if (inWay !== null) throw inWay;
    const shown = `${this.target.set}/${entry.path}`;
    const folder = posix.dirname(rel) === "." ? this.target.root : this.absolute(posix.dirname(rel));
    const tempPath = join(folder, `.kw-restore-${randomBytes(6).toString("hex")}.tmp`);
    let handle: FileHandle;
    try {
      // O_EXCL and O_NOFOLLOW: never through a link, never over something that is there.
      handle = await open(
        tempPath,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
    } catch (error) {
      throw targetError(error, tempPath);
    }
    this.current = { entry, shown, target: abs, tempPath, handle, hash: createHash("sha256"), written: 0 };
    this.reporter.emit({ kind: "file-start", path: shown, size: entry.size });
    if (entry.size === 0) await this.completeFile(this.current);
  }

  private async onData(data: Buffer): Promise<void> {
    const file = this.current;
    if (!file) {
      throw new ProtocolError("KW_UNEXPECTED_MESSAGE", "The server sent FILE_DATA outside a file.");
    }
    if (file.written + data.length > file.entry.size) {
      throw new ProtocolError(
        "KW_SIZE_MISMATCH",
        `The server sent more than the ${file.entry.size} bytes of ${JSON.stringify(file.shown)}.`,
      );
    }
    try {
      let offset = 0;
      while (offset < data.length) {
        const { bytesWritten } = await file.handle.write(data, offset, data.length - offset);
        offset += bytesWritten;
      }
    } catch (error) {
      throw targetError(error, file.target);
    }
    file.hash.update(data);
    file.written += data.length;
    this.reporter.emit({
      kind: "file-progress",
      path: file.shown,
      bytes: file.written,
      size: file.entry.size,
    });
    if (file.written === file.entry.size) await this.completeFile(file);
  }

  /** Verify, give the file its attributes, make it durable, and put it in place. */
  private async completeFile(file: OpenFile): Promise<void> {
    const { entry } = file;
    if (!file.hash.digest().equals(entry.sha256)) {
      await this.abort();
      throw new KeepwatchError(
        "KW_CHUNK_CORRUPT",
        `The restored content of ${JSON.stringify(file.shown)} does not match its recorded SHA-256, so it was not put in place; the server's history may be damaged: run "keepwatch verify" on the server.`,
      );
    }
    try {
      await file.handle.chmod(entry.mode & 0o7777);
      const mtime = toTimestamp(entry.mtimeMs);
      await file.handle.utimes(mtime, mtime);
      await file.handle.sync();
      await file.handle.close();
      await this.place(file);
    } catch (error) {
      await this.abort();
      throw error instanceof KeepwatchError ? error : targetError(error, file.target);
    }
    this.current = null;
    this.dirtyFolders.add(parentOf(file.target));
    this.summary.files += 1;
    this.summary.bytes += entry.size;
    this.reporter.emit({ kind: "file-done", path: file.shown, op: "restore", size: entry.size });
  }

  /**
   * Rename over the target when overwriting (atomic replacement); otherwise a hard link,
   * which fails rather than replace a file that appeared meanwhile.
   */
  private async place(file: OpenFile): Promise<void> {
    if (this.target.overwrite) {
      await rename(file.tempPath, file.target);
      return;
    }
    try {
      await link(file.tempPath, file.target);
    } catch (error) {
      const code = errnoCode(error);
      if (code === "EEXIST") throw exists(file.target);
      // Filesystems without hard links: check, then rename.
      if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP" && code !== "EMLINK") throw error;
      const inWay = await inTheWay(file.target, "file", false);
      if (inWay !== null) throw inWay;
      await rename(file.tempPath, file.target);
      return;
    }
    await unlink(file.tempPath);
  }

  private async restoreFolder(rel: string, abs: string, entry: Entry): Promise<void> {
    const created = await this.ensureFolder(rel, true);
    // A folder that was already there keeps its own mode and mtime unless overwriting.
    if (created || this.target.overwrite) {
      this.folderAttributes.push({
        abs,
        depth: rel.split("/").length,
        mode: entry.mode,
        mtimeMs: entry.mtimeMs,
      });
    }
    this.summary.folders += 1;
  }

  /** Every folder above `rel` exists as a real folder (not a link), created if missing. */
  private async ensureParents(rel: string): Promise<void> {
    const parts = rel.split("/");
    for (let i = 1; i < parts.length; i++) await this.ensureFolder(parts.slice(0, i).join("/"));
  }

  /**
   * Make `rel` a real folder; true when this call created it. A folder with a recorded
   * mode is created owner-only until finish() gives it that mode (so that a read-only
   * folder can still be filled); one without (above the restored path) gets the default.
   */
  private async ensureFolder(rel: string, recorded = false): Promise<boolean> {
    if (this.knownFolders.has(rel)) return false;
    const abs = this.absolute(rel);
    const inWay = await inTheWay(abs, "dir", this.target.overwrite);
    if (inWay !== null) throw inWay;
    let created = false;
    try {
      const st = await lstatOrNull(abs);
      if (st !== null && !st.isDirectory()) await unlink(abs); // a link or file, and overwrite is set
      if (st === null || !st.isDirectory()) {
        await mkdir(abs, { mode: recorded ? 0o700 : 0o777 });
        created = true;
        this.dirtyFolders.add(parentOf(abs));
      }
    } catch (error) {
      throw targetError(error, abs);
    }
    this.knownFolders.add(rel);
    return created;
  }

  private absolute(rel: string): string {
    return join(this.target.root, ...rel.split("/"));
  }
}

/** DIR is a folder or missing (following a link there: DIR is the user's own choice). */
async function checkRoot(root: string): Promise<void> {
  try {
    if ((await stat(root)).isDirectory()) return;
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return;
    if (errnoCode(error) !== "ENOTDIR") throw targetError(error, root);
  }
  throw notAFolder(root);
}

function notAFolder(root: string): KeepwatchError {
  return new KeepwatchError(
    "KW_TARGET_UNUSABLE",
    `The restore target ${root} is not a folder; give --to a folder (it is created if missing).`,
  );
}

/** DIR exists as a folder, created with its parents if missing. */
async function ensureRoot(root: string): Promise<void> {
  try {
    await mkdir(root, { recursive: true });
  } catch (error) {
    if (errnoCode(error) !== "EEXIST" && errnoCode(error) !== "ENOTDIR") throw targetError(error, root);
  }
  let isFolder = false;
  try {
    isFolder = (await stat(root)).isDirectory();
  } catch (error) {
    if (errnoCode(error) !== "ENOTDIR") throw targetError(error, root);
  }
  if (!isFolder) throw notAFolder(root);
}

/** The rules every ENTRY of a restore or its listing must follow. */
function checkEntry(target: Pick<RestoreTarget, "path">, entry: Entry): void {
  if (entry.kind === "deleted") {
    throw new ProtocolError("KW_BAD_MESSAGE", `The server sent a deleted entry (${entry.path}) to restore.`);
  }
  const problem = pathProblem(entry.path);
  if (problem !== null || (target.path !== "" && !isSameOrBelow(entry.path, target.path))) {
    throw new ProtocolError(
      "KW_BAD_MESSAGE",
      `The server sent the path ${JSON.stringify(entry.path)}, which is not ${problem === null ? "inside the restored path" : "valid"}.`,
    );
  }
  if (entry.kind === "file" && entry.sha256.length !== SHA256_BYTES) {
    throw new ProtocolError("KW_BAD_MESSAGE", `The server sent ${entry.path} without its SHA-256.`);
  }
}

/**
 * The error for what stands at `abs` where a file or folder is to go, or null when the
 * way is free: a folder is never replaced; anything else only with `overwrite`.
 */
async function inTheWay(
  abs: string,
  want: "file" | "dir",
  overwrite: boolean,
): Promise<KeepwatchError | null> {
  let st: Awaited<ReturnType<typeof lstat>> | null;
  try {
    st = await lstatOrNull(abs);
  } catch (error) {
    return targetError(error, abs);
  }
  if (st === null) return null;
  if (st.isDirectory()) {
    if (want === "dir") return null;
    return new KeepwatchError(
      "KW_TARGET_EXISTS",
      `${abs} is a folder, where a restored file goes; move it away or restore into another folder with --to.`,
    );
  }
  return overwrite ? null : exists(abs);
}

function exists(abs: string): KeepwatchError {
  return new KeepwatchError(
    "KW_TARGET_EXISTS",
    `${abs} already exists; add --overwrite to replace existing files, or restore into another folder with --to.`,
  );
}

async function lstatOrNull(abs: string): Promise<Awaited<ReturnType<typeof lstat>> | null> {
  try {
    return await lstat(abs);
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return null;
    throw error;
  }
}

/** Set a folder's mode and mtime without following a link put in its place. */
async function chmodAndTouch(abs: string, mode: number, mtimeMs: number): Promise<void> {
  const handle = await open(abs, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    // MKDIR carries no mtime, so folders are recorded with 0: unknown, left as it is.
    if (mtimeMs !== 0) {
      const mtime = toTimestamp(mtimeMs);
      await handle.utimes(mtime, mtime);
    }
    await handle.chmod(mode & 0o7777);
  } finally {
    await handle.close();
  }
}

async function syncFolder(abs: string): Promise<void> {
  let handle: FileHandle;
  try {
    handle = await open(abs, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (error) {
    throw targetError(error, abs);
  }
  try {
    await handle.sync();
  } catch (error) {
    // Some filesystems cannot fsync a folder; the data itself was synced.
    if (errnoCode(error) !== "EINVAL" && errnoCode(error) !== "ENOTSUP") throw targetError(error, abs);
  } finally {
    await handle.close();
  }
}

function parentOf(abs: string): string {
  return join(abs, "..");
}

/**
 * The timestamp to give utimes: seconds as a number keep sub-millisecond precision, but
 * Node replaces a negative number (a time before 1970) with "now", so those go as a Date.
 */
function toTimestamp(mtimeMs: number): number | Date {
  return mtimeMs >= 0 ? mtimeMs / 1000 : new Date(Math.round(mtimeMs));
}

/** A local failure while writing under DIR, as one sentence. */
export function targetError(error: unknown, abs: string): KeepwatchError {
  if (error instanceof KeepwatchError) return error;
  const code = errnoCode(error);
  if (code === "ENOSPC" || code === "EDQUOT") {
    return new KeepwatchError(
      "KW_DISK_FULL",
      `The disk holding ${abs} is full; free some space and restore again.`,
      { cause: error },
    );
  }
  if (code === "ELOOP") {
    return new KeepwatchError(
      "KW_TARGET_EXISTS",
      `${abs} is a symbolic link, which a restore does not follow; move it away or restore into another folder with --to.`,
      { cause: error },
    );
  }
  const detail = code ?? (error instanceof Error ? error.message : String(error));
  return new KeepwatchError(
    "KW_TARGET_UNUSABLE",
    `${abs} cannot be written (${detail}); check the permissions of the folder given with --to, or choose another.`,
    { cause: error },
  );
}
