// How a file's content reaches the server. Version 1 sends the whole file in bounded
// pieces; the interface is what later transfers (chunk manifests, deltas) implement too.

import { createHash } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, read, readSync, type Stats } from "node:fs";
import { join } from "node:path";
import type { KeepwatchError } from "../errors.js";
import { encode, MessageType } from "../protocol/messages.js";
import type { Reporter } from "../ui/events.js";
import type { ServerLink } from "./link.js";
import { type DiskEntry, diskEntry } from "./scanner.js";

/** Bytes read from disk and sent per PUT_DATA frame. */
export const PIECE_SIZE = 256 * 1024;

export type PutOutcome =
  /** The server acknowledged this content; `sha256` is its hash and `entry` what was read. */
  | { status: "stored"; entry: DiskEntry; sha256: Buffer }
  /** Nothing to send: the disk matches `skipIf`. */
  | { status: "unchanged" }
  /** The file is gone or is no longer a regular file. */
  | { status: "vanished" }
  /** The file changed while it was read; nothing was stored, read it again later. */
  | { status: "changed" };

export interface FileTransfer {
  /**
   * Send the file at `path` (set-relative) unless `skipIf(entry)` says the server has it.
   * Resolves once the server acknowledged; rejects with the server's error or a local one.
   */
  put(path: string, skipIf: (entry: DiskEntry) => boolean): Promise<PutOutcome>;
  mkdir(path: string, mode: number): Promise<void>;
  delete(path: string): Promise<void>;
}

/**
 * A file's timestamps advance in coarse ticks (a few ms on Linux), so a write in the same
 * tick as its last change leaves mtime and ctime as they were. A read is trustworthy
 * only if the file's last change is at least this much older than the read's start: then
 * any write during the read moves the timestamps and the before/after check sees it.
 */
const TIMESTAMP_TICK_MS = 20;
const SETTLE_ATTEMPTS = 10;

/** Stat `fd` once its last change is old enough; null if it keeps changing. */
async function settledStat(fd: number): Promise<Stats | null> {
  for (let attempt = 0; attempt < SETTLE_ATTEMPTS; attempt++) {
    const st = fstatSync(fd);
    const age = Date.now() - Math.max(st.mtimeMs, st.ctimeMs);
    // A time far in the future (a clock set wrong, `touch -d`) is not a recent write.
    if (age >= TIMESTAMP_TICK_MS || age < -TIMESTAMP_TICK_MS) return st;
    await new Promise((resolve) => setTimeout(resolve, TIMESTAMP_TICK_MS - age + 1));
  }
  return null;
}

function sameFile(a: Stats, b: Stats): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino;
}

/** Whole-file transfer over one link; one large file's data streams at a time. */
export class WholeFileTransfer implements FileTransfer {
  private streaming: Promise<void> = Promise.resolve();
  /** Data per frame: our piece size, or less if the server's frames are smaller. */
  private readonly pieceSize: number;

  constructor(
    private readonly root: string,
    private readonly link: ServerLink,
    private readonly reporter: Reporter,
  ) {
    this.pieceSize = Math.min(PIECE_SIZE, link.welcome.maxFrame);
  }

  async put(path: string, skipIf: (entry: DiskEntry) => boolean): Promise<PutOutcome> {
    // Opening and stat-ing are single quick syscalls: done synchronously, they cost far
    // less than a round trip through the thread pool, which dominates for small files.
    let fd: number;
    try {
      fd = openSync(join(this.root, path), constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ELOOP" || code === "ENOTDIR") return { status: "vanished" };
      throw error;
    }
    let outcome: PutOutcome;
    let answer: Promise<void> | null = null;
    try {
      const before = await settledStat(fd);
      if (!before) return { status: "changed" };
      const entry = diskEntry(path, before);
      if (!entry || entry.kind !== "file") return { status: "vanished" };
      if (skipIf(entry)) return { status: "unchanged" };
      if (entry.size <= this.pieceSize) {
        ({ outcome, answer } = this.sendSmall(fd, entry, before));
      } else {
        ({ outcome, answer } = await this.sendLarge(fd, entry, before));
      }
    } finally {
      closeSync(fd);
    }
    if (answer) await answer;
    return outcome;
  }

  /** A file of at most one piece: read at once, sent as BEGIN, DATA, END. */
  private sendSmall(fd: number, entry: DiskEntry, before: Stats): Sent {
    const data = Buffer.allocUnsafe(entry.size);
    const bytesRead = entry.size > 0 ? readSync(fd, data, 0, entry.size, 0) : 0;
    if (bytesRead !== entry.size || !sameFile(before, fstatSync(fd))) {
      return { outcome: { status: "changed" }, answer: null };
    }
    const sha256 = createHash("sha256").update(data).digest();
    const request = this.link.open();
    const conn = this.link.conn;
    const { path, size, mtimeMs, mode } = entry;
    conn.send(MessageType.PUT_BEGIN, request.id, encode.putBegin({ path, size, mtimeMs, mode }));
    if (size > 0) conn.send(MessageType.PUT_DATA, request.id, data);
    conn.send(MessageType.PUT_END, request.id, encode.putEnd({ sha256 }));
    this.reporter.emit({ kind: "file-start", path, size });
    return { outcome: { status: "stored", entry, sha256 }, answer: request.answer };
  }

  /** A larger file: streamed in pieces, one such file at a time, with backpressure. */
  private async sendLarge(fd: number, entry: DiskEntry, before: Stats): Promise<Sent> {
    const previous = this.streaming;
    let done!: () => void;
    this.streaming = new Promise<void>((resolve) => {
      done = resolve;
    });
    try {
      await previous;
      const { path, size, mtimeMs, mode } = entry;
      const request = this.link.open();
      let early: KeepwatchError | null = null;
      request.answer.catch((error: KeepwatchError) => {
        early = error;
      });
      const conn = this.link.conn;
      conn.send(MessageType.PUT_BEGIN, request.id, encode.putBegin({ path, size, mtimeMs, mode }));
      this.reporter.emit({ kind: "file-start", path, size });
      const hash = createHash("sha256");
      let sent = 0;
      let torn = false;
      while (sent < size && early === null && !this.link.isLost) {
        const want = Math.min(this.pieceSize, size - sent);
        const piece = Buffer.allocUnsafe(want);
        const bytesRead = await readAt(fd, piece, sent);
        if (bytesRead === 0) {
          torn = true; // the file shrank under us
          break;
        }
        const data = bytesRead === want ? piece : piece.subarray(0, bytesRead);
        hash.update(data);
        await conn.sendAndWait(MessageType.PUT_DATA, request.id, data);
        sent += bytesRead;
        this.reporter.emit({ kind: "file-progress", path, bytes: sent, size });
      }
      if (this.link.isLost) return { outcome: { status: "changed" }, answer: request.answer };
      if (early !== null) {
        // The server already refused this PUT; end it so the id is released.
        conn.send(MessageType.PUT_ABORT, request.id, encode.putAbort({ reason: "refused by the server" }));
        return { outcome: { status: "changed" }, answer: request.answer };
      }
      if (torn || !sameFile(before, fstatSync(fd))) {
        conn.send(
          MessageType.PUT_ABORT,
          request.id,
          encode.putAbort({ reason: "the file changed while it was read" }),
        );
        return { outcome: { status: "changed" }, answer: request.answer };
      }
      const sha256 = hash.digest();
      conn.send(MessageType.PUT_END, request.id, encode.putEnd({ sha256 }));
      return { outcome: { status: "stored", entry, sha256 }, answer: request.answer };
    } finally {
      done();
    }
  }

  async mkdir(path: string, mode: number): Promise<void> {
    const request = this.link.open();
    this.link.conn.send(MessageType.MKDIR, request.id, encode.mkdir({ path, mode }));
    await request.answer;
  }

  async delete(path: string): Promise<void> {
    const request = this.link.open();
    this.link.conn.send(MessageType.DELETE, request.id, encode.delete({ path }));
    await request.answer;
  }
}

interface Sent {
  outcome: PutOutcome;
  /** The server's answer, or null when nothing was sent. */
  answer: Promise<void> | null;
}

function readAt(fd: number, buffer: Buffer, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, buffer, 0, buffer.length, position, (error, bytesRead) =>
      error ? reject(error) : resolve(bytesRead),
    );
  });
}
