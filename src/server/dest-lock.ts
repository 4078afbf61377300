// The lock of a destination: it keeps a second server, a prune or a mirror rebuild off a
// DEST that a server is serving, and a prune off a DEST that verify is reading.
//
// The exclusion is the kernel's: SQLite's file locks (fcntl) on DEST/.keepwatch/lock, an
// empty database file nobody writes to. The kernel drops a process's locks when it dies,
// however it dies, so a lock is never stale and no pid needs guessing at. Three modes, as
// SQLite's transactions give them:
//
//   write     (server, rebuild-mirror)  BEGIN IMMEDIATE: one writer at a time; readers welcome
//   exclusive (prune)                   BEGIN EXCLUSIVE: nobody else, readers included
//   read      (verify)                  BEGIN + a read: beside a writer, never beside prune
//
// A writer or prune also leaves its pid in DEST/.keepwatch/lock-holder, so the one turned
// away can be told who holds the lock; that file only informs, it never decides.

import { randomBytes } from "node:crypto";
import { readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { errnoCode, KeepwatchError } from "../errors.js";

/** The file whose locks exclude (in DEST/.keepwatch). */
export const LOCK_FILE = "lock";
/** Who holds the lock: one line of JSON, for messages only. */
export const HOLDER_FILE = "lock-holder";

/** The commands that take the lock, each in its mode. */
export type LockHolder = "server" | "rebuild-mirror" | "prune" | "verify" | "fingerprint";

type LockMode = "write" | "exclusive" | "read";

const MODES: Record<LockHolder, LockMode> = {
  server: "write",
  "rebuild-mirror": "write",
  prune: "exclusive",
  verify: "read",
  fingerprint: "write",
};

interface HolderInfo {
  pid: number;
  command: string;
  host: string;
  since: string;
}

export class DestLock {
  private released = false;

  private constructor(
    private readonly db: Database.Database | null,
    private readonly holderPath: string | null,
  ) {}

  /**
   * Take the lock of the destination whose control folder (DEST/.keepwatch) is `control`,
   * which must exist. Throws KW_DEST_IN_USE, naming the holder when it can, if the lock is
   * held in a conflicting mode. Never waits.
   */
  static acquire(control: string, holder: LockHolder): DestLock {
    const mode = MODES[holder];
    const lockPath = join(control, LOCK_FILE);
    let db: Database.Database;
    try {
      db = new Database(lockPath, { timeout: 0 });
    } catch (error) {
      // A reader on a read-only copy of DEST cannot create the file; nobody can change
      // such a copy either, so it reads without a lock.
      if (mode === "read" && isReadOnlyProblem(error)) return new DestLock(null, null);
      throw error;
    }
    try {
      if (mode === "write") db.exec("BEGIN IMMEDIATE");
      else if (mode === "exclusive") db.exec("BEGIN EXCLUSIVE");
      else {
        db.exec("BEGIN");
        // A deferred transaction takes its shared lock at the first read.
        db.prepare("SELECT count(*) FROM sqlite_master").get();
      }
    } catch (error) {
      const busy = isBusy(error);
      const readersOnly = busy && mode === "exclusive" && onlyReaders(lockPath);
      db.close();
      if (!busy) throw error;
      throw inUse(control, holder, readersOnly);
    }
    if (mode === "read") return new DestLock(db, null);
    const holderPath = join(control, HOLDER_FILE);
    writeHolder(holderPath, holder);
    return new DestLock(db, holderPath);
  }

  /** Let go of the lock. Idempotent. */
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.holderPath !== null) {
      // Only our own note goes: after a crash of ours, a newer holder may have written its own.
      if (readHolder(this.holderPath)?.pid === process.pid) {
        try {
          unlinkSync(this.holderPath);
        } catch {
          // an old note misleads nobody: it names a process that is gone
        }
      }
    }
    if (this.db?.open) this.db.close();
  }
}

/** With the lock held by someone: true when only readers hold it (nobody takes IMMEDIATE). */
function onlyReaders(lockPath: string): boolean {
  const probe = new Database(lockPath, { timeout: 0 });
  try {
    probe.exec("BEGIN IMMEDIATE");
    probe.exec("ROLLBACK");
    return true;
  } catch {
    return false;
  } finally {
    probe.close();
  }
}

function inUse(control: string, holder: LockHolder, readersOnly: boolean): KeepwatchError {
  const dest = join(control, "..");
  const wanted = `keepwatch ${holder}`;
  if (readersOnly) {
    return new KeepwatchError(
      "KW_DEST_IN_USE",
      `The destination ${dest} is being read by keepwatch verify; run ${wanted} again once it has finished.`,
    );
  }
  const found = readHolder(join(control, HOLDER_FILE));
  // The note may be left from a holder that died; a live holder has not written its own yet.
  const info = found && found.host === hostname() && isAlive(found.pid) ? found : null;
  const who = info
    ? `keepwatch ${info.command} (pid ${info.pid}, since ${info.since})`
    : "another keepwatch process";
  let advice: string;
  if (holder === "server") advice = "stop it first, or serve another destination";
  else if (info?.command === "server") advice = `stop that server before running ${wanted}`;
  else if (info) advice = `wait for it to finish before running ${wanted}`;
  else advice = `stop it or wait for it to finish before running ${wanted}`;
  return new KeepwatchError("KW_DEST_IN_USE", `The destination ${dest} is in use by ${who}; ${advice}.`);
}

function writeHolder(path: string, holder: LockHolder): void {
  const info: HolderInfo = {
    pid: process.pid,
    command: holder,
    host: hostname(),
    since: new Date().toISOString(),
  };
  const temp = `${path}.${randomBytes(4).toString("hex")}`;
  try {
    writeFileSync(temp, `${JSON.stringify(info)}\n`, { mode: 0o600 });
    renameSync(temp, path);
  } catch {
    // The note is only for messages; the lock itself is held.
    try {
      unlinkSync(temp);
    } catch {
      // nothing was written
    }
  }
}

function readHolder(path: string): HolderInfo | null {
  try {
    const parsed: unknown = JSON.parse(readFileSync(path, "utf8"));
    if (
      typeof parsed === "object" &&
      parsed !== null &&
      typeof (parsed as HolderInfo).pid === "number" &&
      typeof (parsed as HolderInfo).command === "string" &&
      typeof (parsed as HolderInfo).host === "string" &&
      typeof (parsed as HolderInfo).since === "string"
    ) {
      return parsed as HolderInfo;
    }
    return null;
  } catch {
    return null;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to another user.
    return errnoCode(error) === "EPERM";
  }
}

function isBusy(error: unknown): boolean {
  const code = errnoCode(error);
  return code === "SQLITE_BUSY" || code === "SQLITE_LOCKED";
}

function isReadOnlyProblem(error: unknown): boolean {
  const code = errnoCode(error);
  return code === "SQLITE_CANTOPEN" || code === "SQLITE_READONLY" || code === "EROFS" || code === "EACCES";
}
