// The mirror of one set: the latest version of every file as a plain file under
// DEST/<set>/. Every change is atomic (temporary file, fsync, rename, fsync of the folder)
// and no operation follows a symbolic link: right before each change every folder on its
// path, the set's own folder included, is checked with lstat (never remembered, since
// someone may replace a folder by a link at any time), so a path cannot reach outside the
// set's folder whatever the mirror holds. What stays open is a race with a process that
// swaps a folder for a link between that check and the change; docs/security.md says why
// DEST must be writable by the server's user only.

import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  fchmodSync,
  fsync,
  futimesSync,
  linkSync,
  lstatSync,
  open as openCallback,
  renameSync,
  writeSync,
} from "node:fs";
import { type FileHandle, lstat, mkdir, open, rm, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { errnoCode, KeepwatchError } from "../errors.js";
import { PathLocks } from "../protocol/path-locks.js";
import { assertValidPath } from "../protocol/paths.js";
import { PathSyncer } from "./path-syncer.js";

/** Metadata kept with each file. */
export interface FileAttributes {
  mtimeMs: number;
  /** Permission bits (masked to 0o7777). */
  mode: number;
}

/** A file being written in the temporary folder, to be installed into the mirror. */
export interface PendingFile {
  readonly tempPath: string;
  readonly handle: FileHandle;
}

/** A small file written and synced in the temporary folder, waiting to be put in place. */
export interface PreparedFile {
  readonly tempPath: string;
}

/** A replaced file at least this large is removed off this thread (see `place`). */
const LARGE_FILE_BYTES = 16 * 1024 * 1024;

export class Mirror {
  /** fsyncs of folders after a rename or mkdir, coalesced per folder. */
  private readonly syncer = new PathSyncer();
  private readonly tempPrefix = `put-${process.pid}-${randomBytes(4).toString("hex")}-`;
  private tempCounter = 0;
  /**
   * Paths being changed, shared by every connection to this set: a version is committed to
   * the history and applied to the mirror while its path (and every path above and below
   * it) is held, so two connections changing one path apply their changes to both in the
   * same order.
   */
  readonly changes = new PathLocks();

  constructor(
    /** Absolute path of DEST/<set>. */
    readonly root: string,
    /** Absolute path of the temporary folder, on the same filesystem as root. */
    private readonly tempDir: string,
  ) {}

  /** Open a new temporary file for a version of a file that is on its way. */
  async createPending(): Promise<PendingFile> {
    const tempPath = this.tempName();
    const handle = await open(tempPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    return { tempPath, handle };
  }

  /** Throw the pending file away (aborted or failed transfer). */
  async discard(pending: PendingFile): Promise<void> {
    await pending.handle.close().catch(() => {});
    await unlink(pending.tempPath).catch(() => {});
  }

  /**
   * Make the pending file durable with its attributes and put it at `path`, replacing
   * whatever was there (a file, a link, or a folder that the source turned into a file).
   */
  async install(pending: PendingFile, path: string, attrs: FileAttributes): Promise<void> {
    assertValidPath(path);
    try {
      try {
        await pending.handle.chmod(attrs.mode & 0o7777);
        const mtime = toTimestamp(attrs.mtimeMs);
        await pending.handle.utimes(mtime, mtime);
        await pending.handle.sync();
      } finally {
        await pending.handle.close();
      }
      await this.place(pending.tempPath, path, true);
    } catch (error) {
      // Whatever failed, the temporary file must not stay behind.
      await unlink(pending.tempPath).catch(() => {});
      throw error;
    }
  }

  /**
   * Write `source` (a content, chunk by chunk) into a new pending file, checking that
   * the whole is `sha256`; the result can then be installed. Throws KW_HASH_MISMATCH (and
   * leaves nothing behind) when it is not.
   */
  async writePending(source: AsyncIterable<Buffer>, sha256: Buffer): Promise<PendingFile> {
    const pending = await this.createPending();
    try {
      const hash = createHash("sha256");
      for await (const piece of source) {
        hash.update(piece);
        await pending.handle.write(piece);
      }
      if (!hash.digest().equals(sha256)) {
        throw new KeepwatchError(
          "KW_HASH_MISMATCH",
          'The content assembled from the history does not match its SHA-256; run "keepwatch verify".',
        );
      }
      return pending;
    } catch (error) {
      await this.discard(pending);
      throw error;
    }
  }

  /**
   * Write a small file whose bytes are in memory to a durable temporary file with its
   * attributes, ready to be put in place with `installPrepared` (the server does this while
   * the version is committed to the history). The quick syscalls are made synchronously
   * (a thread-pool round trip costs more than they do). Creating the file and fsync are
   * not: a create waits for the file system's journal while other files are fsynced (3.2 s
   * of the main thread for the bench's 20,000 small files in a profile; made on the thread
   * pool, the push took 14.29 s against 15.56 s, medians of 10 alternating pairs).
   */
  async prepareBytes(data: Buffer[], attrs: FileAttributes): Promise<PreparedFile> {
    const tempPath = this.tempName();
    const fd = await new Promise<number>((resolve, reject) =>
      openCallback(tempPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600, (error, fd) =>
        error ? reject(error) : resolve(fd),
      ),
    );
    try {
      try {
        for (const part of data) {
          for (let off = 0; off < part.length; ) off += writeSync(fd, part, off, part.length - off);
        }
        fchmodSync(fd, attrs.mode & 0o7777);
        const mtime = toTimestamp(attrs.mtimeMs);
        futimesSync(fd, mtime, mtime);
        await new Promise<void>((resolve, reject) =>
          fsync(fd, (error) => (error ? reject(error) : resolve())),
        );
      } finally {
        closeSync(fd);
      }
    } catch (error) {
      await unlink(tempPath).catch(() => {});
      throw error;
    }
    return { tempPath };
  }

  /** Put a prepared file at `path`, replacing whatever was there (as `install` does). */
  async installPrepared(prepared: PreparedFile, path: string): Promise<void> {
    try {
      assertValidPath(path);
      await this.place(prepared.tempPath, path);
    } catch (error) {
      await this.discardPrepared(prepared);
      throw error;
    }
  }

  /**
   * The mirror's file at `path` opened for reading, or null when there is none (or it is
   * not a plain file, or a folder on its way is not a plain folder: links are never
   * followed). What it holds is only a guess at a content: the caller checks it.
   */
  async openExisting(path: string): Promise<FileHandle | null> {
    assertValidPath(path);
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const st = lstatSync(join(this.root, ...parts.slice(0, i)), { throwIfNoEntry: false });
      if (!st?.isDirectory()) return null;
    }
    let handle: FileHandle;
    try {
      handle = await open(join(this.root, path), constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch {
      return null;
    }
    if (!(await handle.stat()).isFile()) {
      await handle.close();
      return null;
    }
    return handle;
  }

  /** Throw a prepared file away. */
  async discardPrepared(prepared: PreparedFile): Promise<void> {
    await unlink(prepared.tempPath).catch(() => {});
  }

  /**
   * Rename a durable temporary file to `path` and make the rename durable. With `large`,
   * a large file it replaces is first linked into the temporary folder and removed from
   * there afterwards, on the thread pool: a rename that drops the last link of a 1 GiB file
   * frees its blocks on the spot (0.4 s here), on this thread, before the version's ACK.
   */
  private async place(tempPath: string, path: string, large = false): Promise<void> {
    const parent = parentOf(path);
    const target = join(this.root, path);
    await this.ensureFolder(parent);
    const old = large ? this.keepLargeFile(target) : null;
    try {
      await this.clearFolderAt(path);
      renameSync(tempPath, target);
    } catch (error) {
      if (errnoCode(error) !== "ENOENT") throw error;
      // The folder was removed meanwhile (by another session): make it again.
      await this.ensureFolder(parent);
      renameSync(tempPath, target);
    } finally {
      // Nothing waits for it; a crash leaves it in the temporary folder, emptied at start.
      if (old) unlink(old).catch(() => {});
    }
    await this.syncer.sync(dirname(target));
  }

  /** A second name in the temporary folder for the large plain file at `target`, or null. */
  private keepLargeFile(target: string): string | null {
    const st = lstatSync(target, { throwIfNoEntry: false });
    if (!st?.isFile() || st.size < LARGE_FILE_BYTES) return null;
    const name = this.tempName();
    try {
      linkSync(target, name);
      return name;
    } catch {
      return null;
    }
  }

  private tempName(): string {
    this.tempCounter++;
    return join(this.tempDir, `${this.tempPrefix}${this.tempCounter}`);
  }

  /** Create the folder at `path` (and its parents) if missing, with the given mode. */
  async makeFolder(path: string, mode: number): Promise<void> {
    assertValidPath(path);
    await this.ensureFolder(path, mode & 0o7777);
    await this.syncer.sync(dirname(join(this.root, path)));
  }

  /** Remove the file or folder at `path`; absent is fine. Never follows a link. */
  async remove(path: string): Promise<void> {
    assertValidPath(path);
    if (!(await this.rootIsFolder()) || !(await this.parentsAreFolders(path))) return;
    const target = join(this.root, path);
    await rm(target, { recursive: true, force: true });
    await this.syncer.sync(dirname(target));
  }

  /** False when the set's folder does not exist yet; throws when something else stands there. */
  private async rootIsFolder(): Promise<boolean> {
    try {
      if (lstatSync(this.root).isDirectory()) return true;
    } catch (error) {
      if (errnoCode(error) === "ENOENT") return false;
      throw error;
    }
    throw new KeepwatchError(
      "KW_SERVER_IO",
      `The set folder ${this.root} is not a plain folder; move it away.`,
    );
  }

  /** True when every folder above `path` is a real directory (not a link, not a file). */
  private async parentsAreFolders(path: string): Promise<boolean> {
    const parts = path.split("/");
    let rel = "";
    for (let i = 0; i < parts.length - 1; i++) {
      rel = rel === "" ? (parts[i] as string) : `${rel}/${parts[i]}`;
      try {
        const st = lstatSync(join(this.root, rel));
        if (!st.isDirectory()) return false;
      } catch (error) {
        if (errnoCode(error) === "ENOENT") return false;
        throw error;
      }
    }
    return true;
  }

  /**
   * Make every component of `path` a real directory, replacing a file or link that stands
   * where the source now has a folder. `mode` applies to the last component only.
   */
  private async ensureFolder(path: string, mode?: number): Promise<void> {
    await this.ensureRoot();
    if (path === "") return;
    const parts = path.split("/");
    let rel = "";
    for (let i = 0; i < parts.length; i++) {
      rel = rel === "" ? (parts[i] as string) : `${rel}/${parts[i]}`;
      const last = i === parts.length - 1;
      const abs = join(this.root, rel);
      let st: ReturnType<typeof lstatSync> | null = null;
      try {
        // Synchronous: a few microseconds, where the thread pool would add tens.
        st = lstatSync(abs);
      } catch (error) {
        if (errnoCode(error) !== "ENOENT") throw error;
      }
      if (st && !st.isDirectory()) {
        await unlink(abs);
        st = null;
      }
      if (!st) {
        try {
          await mkdir(abs, { mode: last && mode !== undefined ? mode : 0o755 });
        } catch (error) {
          if (errnoCode(error) !== "EEXIST") throw error;
          const again = await lstat(abs);
          if (!again.isDirectory()) throw error;
        }
        await this.syncer.sync(dirname(abs));
      }
      if (last && mode !== undefined) {
        const handle = await open(abs, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
        try {
          await handle.chmod(mode);
        } finally {
          await handle.close();
        }
      }
    }
  }

  /** Create the set's own folder on first need; never accept a link in its place. */
  private async ensureRoot(): Promise<void> {
    if (await this.rootIsFolder()) return;
    try {
      await mkdir(this.root, { mode: 0o755 });
      await this.syncer.sync(dirname(this.root));
    } catch (error) {
      if (errnoCode(error) !== "EEXIST") throw error;
    }
    if (!(await this.rootIsFolder())) {
      throw new KeepwatchError(
        "KW_SERVER_IO",
        `The set folder ${this.root} is not a plain folder; move it away.`,
      );
    }
  }

  /** If a real folder stands at `path`, remove it so a file can take its place. */
  private async clearFolderAt(path: string): Promise<void> {
    const abs = join(this.root, path);
    try {
      const st = lstatSync(abs);
      if (st.isDirectory()) await rm(abs, { recursive: true, force: true });
    } catch (error) {
      if (errnoCode(error) !== "ENOENT") throw error;
    }
  }
}

/**
 * The timestamp to give utimes: seconds as a number keep sub-millisecond precision, but
 * Node replaces a negative number (a time before 1970) with "now", so those go as a Date
 * (whole milliseconds).
 */
function toTimestamp(mtimeMs: number): number | Date {
  return mtimeMs >= 0 ? mtimeMs / 1000 : new Date(Math.round(mtimeMs));
}

function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}
