// How a file's content reaches the server. Version 1 sends the whole file in bounded
// pieces; the interface is what later transfers (chunk manifests, deltas) implement too.

import { createHash } from "node:crypto";
import { constants, type Stats } from "node:fs";
import { open } from "node:fs/promises";
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

function sameFile(a: Stats, b: Stats): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino;
}

/** Whole-file transfer over one link; one file's data streams at a time. */
export class WholeFileTransfer implements FileTransfer {
  private streaming: Promise<void> = Promise.resolve();

  constructor(
    private readonly root: string,
    private readonly link: ServerLink,
    private readonly reporter: Reporter,
  ) {}

  async put(path: string, skipIf: (entry: DiskEntry) => boolean): Promise<PutOutcome> {
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(join(this.root, path), constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ELOOP" || code === "ENOTDIR") return { status: "vanished" };
      throw error;
    }
    let answer: Promise<void>;
    let outcome: PutOutcome;
    let sha256: Buffer;
    let entry: DiskEntry;
    // Wait for our turn to stream; the ACK is awaited outside this turn.
    const previous = this.streaming;
    let done!: () => void;
    this.streaming = new Promise<void>((resolve) => {
      done = resolve;
    });
    try {
      await previous;
      const before = await handle.stat();
      const found = diskEntry(path, before);
      if (found?.kind !== "file") return { status: "vanished" };
      entry = found;
      if (skipIf(entry)) return { status: "unchanged" };
      const request = this.link.open();
      answer = request.answer;
      let early: KeepwatchError | null = null;
      answer.catch((error: KeepwatchError) => {
        early = error;
      });
      const conn = this.link.conn;
      conn.send(
        MessageType.PUT_BEGIN,
        request.id,
        encode.putBegin({ path, size: entry.size, mtimeMs: entry.mtimeMs, mode: entry.mode }),
      );
      this.reporter.emit({ kind: "file-start", path, size: entry.size });
      const hash = createHash("sha256");
      let sent = 0;
      let torn = false;
      while (sent < entry.size && early === null && !this.link.isLost) {
        const want = Math.min(PIECE_SIZE, entry.size - sent);
        const piece = Buffer.allocUnsafe(want);
        const { bytesRead } = await handle.read(piece, 0, want, sent);
        if (bytesRead === 0) {
          torn = true; // the file shrank under us
          break;
        }
        const data = bytesRead === want ? piece : piece.subarray(0, bytesRead);
        hash.update(data);
        await conn.sendAndWait(MessageType.PUT_DATA, request.id, data);
        sent += bytesRead;
        this.reporter.emit({ kind: "file-progress", path, bytes: sent, size: entry.size });
      }
      if (early === null && !this.link.isLost) {
        if (!torn) torn = !sameFile(before, await handle.stat());
        if (torn) {
          conn.send(
            MessageType.PUT_ABORT,
            request.id,
            encode.putAbort({ reason: "the file changed while it was read" }),
          );
          outcome = { status: "changed" };
        } else {
          sha256 = hash.digest();
          conn.send(MessageType.PUT_END, request.id, encode.putEnd({ sha256 }));
          outcome = { status: "stored", entry, sha256 };
        }
      } else if (early !== null) {
        // The server already refused this PUT; end it so the id is released.
        conn.send(MessageType.PUT_ABORT, request.id, encode.putAbort({ reason: "refused by the server" }));
        outcome = { status: "changed" };
      } else {
        outcome = { status: "changed" };
      }
    } finally {
      done();
      await handle.close();
    }
    await answer;
    return outcome;
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
