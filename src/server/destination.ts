// The server's destination folder: checks that it is usable, creates .keepwatch/ with its
// temporary folder (emptied at every start) and the store id, and hands out one Mirror per
// set so that sessions of the same set share what they know about its folders.

import { randomUUID } from "node:crypto";
import { constants } from "node:fs";
import { access, lstat, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { errnoCode, KeepwatchError } from "../errors.js";
import { assertValidSetName } from "../protocol/paths.js";
import { Mirror } from "../store/mirror.js";
import { DestLock, type LockHolder } from "./dest-lock.js";
import { History } from "./history.js";

export const CONTROL_DIR = ".keepwatch";

export class Destination {
  private readonly mirrors = new Map<string, Mirror>();

  private constructor(
    readonly root: string,
    readonly storeId: string,
    readonly history: History,
    private readonly lock: DestLock,
  ) {}

  get tempDir(): string {
    return join(this.root, CONTROL_DIR, "tmp");
  }

  /**
   * Check DEST without changing anything: it must be a folder, or missing below an
   * existing folder. Throws a KeepwatchError a person can act on.
   */
  static async check(dest: string): Promise<void> {
    const root = resolve(dest);
    try {
      const st = await stat(root);
      if (!st.isDirectory()) throw notFolder(root);
      await access(root, constants.W_OK);
    } catch (error) {
      if (error instanceof KeepwatchError) throw error;
      if (errnoCode(error) === "ENOTDIR") throw belowFile(root);
      if (errnoCode(error) !== "ENOENT") throw unusable(root, error);
    }
  }

  /**
   * Open DEST, creating it if missing, and hold its lock (dest-lock.ts) until close; throws
   * a KeepwatchError a person can act on, KW_DEST_IN_USE when another process holds it.
   */
  static async open(dest: string, holder: LockHolder = "server"): Promise<Destination> {
    const root = resolve(dest);
    try {
      const st = await stat(root);
      if (!st.isDirectory()) throw notFolder(root);
    } catch (error) {
      if (error instanceof KeepwatchError) throw error;
      if (errnoCode(error) === "ENOTDIR") throw belowFile(root);
      if (errnoCode(error) !== "ENOENT") throw unusable(root, error);
      try {
        await mkdir(root, { recursive: true });
      } catch (inner) {
        throw unusable(root, inner);
      }
    }
    const control = join(root, CONTROL_DIR);
    let lock: DestLock | undefined;
    try {
      await access(root, constants.W_OK);
      await mkdir(control, { recursive: true, mode: 0o700 });
      // Before tmp/ is emptied: it may hold the files in flight of the server holding DEST.
      lock = DestLock.acquire(control, holder);
      await rm(join(control, "tmp"), { recursive: true, force: true });
      await mkdir(join(control, "tmp"), { mode: 0o700 });
      const storeId = await readOrCreateStoreId(join(control, "store-id"));
      const history = await History.open(control);
      return new Destination(root, storeId, history, lock);
    } catch (error) {
      lock?.release();
      if (error instanceof KeepwatchError && error.code === "KW_DEST_IN_USE") throw error;
      throw unusable(root, error);
    }
  }

  async close(): Promise<void> {
    try {
      await this.history.close();
    } finally {
      this.lock.release();
    }
  }

  get controlDir(): string {
    return join(this.root, CONTROL_DIR);
  }

  /** Whether `set` has versions in the history or a folder in the mirror. */
  async setHasData(set: string): Promise<boolean> {
    if ((await this.history.meta.sets()).includes(set)) return true;
    try {
      await lstat(join(this.root, set));
      return true;
    } catch (error) {
      if (errnoCode(error) === "ENOENT") return false;
      throw error;
    }
  }

  /** The mirror of `set`, creating its folder on first use. */
  async mirror(set: string): Promise<Mirror> {
    assertValidSetName(set);
    const existing = this.mirrors.get(set);
    if (existing) return existing;
    const root = join(this.root, set);
    try {
      const st = await lstat(root);
      if (!st.isDirectory()) {
        throw new KeepwatchError(
          "KW_SERVER_IO",
          `The server's folder for set "${set}" is not a plain folder; the server operator must move ${root} away.`,
        );
      }
    } catch (error) {
      if (error instanceof KeepwatchError) throw error;
      // A missing set folder is created by the mirror on its first write, so that merely
      // reading a set (ls, history, restore of a name that does not exist) creates nothing.
      if (errnoCode(error) !== "ENOENT") throw error;
    }
    const mirror = new Mirror(root, this.tempDir);
    this.mirrors.set(set, mirror);
    return mirror;
  }
}

async function readOrCreateStoreId(file: string): Promise<string> {
  try {
    const id = (await readFile(file, "utf8")).trim();
    if (/^[0-9a-f-]{36}$/.test(id)) return id;
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") throw error;
  }
  const id = randomUUID();
  await writeFile(file, `${id}\n`, { mode: 0o600 });
  return id;
}

function notFolder(root: string): KeepwatchError {
  return new KeepwatchError(
    "KW_DEST_NOT_DIR",
    `The destination ${root} is not a folder; give the path of a folder (it is created if missing).`,
  );
}

function belowFile(root: string): KeepwatchError {
  return new KeepwatchError(
    "KW_DEST_NOT_DIR",
    `The destination ${root} lies below a file, not a folder; give the path of a folder.`,
  );
}

function unusable(root: string, error: unknown): KeepwatchError {
  const code = errnoCode(error);
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
    return new KeepwatchError(
      "KW_DEST_NOT_WRITABLE",
      `The destination ${root} is not writable (${code}); fix its permissions or choose another folder.`,
      { cause: error },
    );
  }
  if (code === "ENOSPC") {
    return new KeepwatchError(
      "KW_DISK_FULL",
      `The disk holding ${root} is full; free some space and start the server again.`,
      { cause: error },
    );
  }
  return new KeepwatchError(
    "KW_DEST_NOT_WRITABLE",
    `The destination ${root} cannot be used: ${error instanceof Error ? error.message : String(error)}.`,
    { cause: error },
  );
}
