// The PUT request on the server: receives a file's bytes into a temporary file, checks the
// size and SHA-256 the client announced, and only then installs it in the mirror and ACKs.

import { createHash, type Hash } from "node:crypto";
import { errnoCode, KeepwatchError, ProtocolError } from "../errors.js";
import type { PutBegin, PutEnd } from "../protocol/messages.js";
import { pathProblem } from "../protocol/paths.js";
import type { PendingFile } from "../store/mirror.js";
import type { Ingest } from "./history.js";
import type { RequestContext } from "./session.js";

/** Files up to this size are held in memory until complete (within the server's budget). */
export const SMALL_FILE_BYTES = 256 * 1024;

export class PutRequest {
  private pending: PendingFile | null = null;
  /** The bytes of a small file, kept in memory instead of a temporary file. */
  private held: Buffer[] | null = null;
  private readonly hash: Hash = createHash("sha256");
  private received = 0;
  /** Set once an ERROR was sent; later frames of this request are swallowed until it ends. */
  private failed = false;
  /** Set when the request was thrown away (its connection closed). */
  private discarded = false;
  /** PUT_END or PUT_ABORT arrived: the request waits for its answer and takes no more frames. */
  finished = false;
  /** Cuts the content into chunks for the history as it arrives. */
  private readonly ingest: Ingest;

  constructor(
    private readonly id: number,
    private readonly begin: PutBegin,
    private readonly ctx: RequestContext,
  ) {
    this.ingest = ctx.history.ingest();
    const problem = pathProblem(begin.path);
    if (problem !== null) {
      this.fail(
        new KeepwatchError(
          "KW_BAD_PATH",
          `The path ${JSON.stringify(begin.path)} was refused because ${problem}.`,
        ),
      );
    }
  }

  async open(): Promise<void> {
    if (this.failed) return;
    if (this.begin.size <= SMALL_FILE_BYTES && this.ctx.budget.take(this.begin.size)) {
      this.held = [];
      this.ctx.reporter.emit({ kind: "file-start", path: this.begin.path, size: this.begin.size });
      return;
    }
    try {
      const pending = await this.ctx.mirror.createPending();
      if (this.discarded) {
        // The connection closed while the file was being created: nobody will end it.
        await this.ctx.mirror.discard(pending);
        return;
      }
      this.pending = pending;
      this.ctx.reporter.emit({ kind: "file-start", path: this.begin.path, size: this.begin.size });
    } catch (error) {
      this.fail(ioError(error, this.begin.path));
    }
  }

  async data(bytes: Buffer): Promise<void> {
    this.received += bytes.length;
    // Data beyond the announced size is a protocol violation, whatever state we are in.
    if (this.received > this.begin.size) {
      throw new ProtocolError(
        "KW_SIZE_MISMATCH",
        `The client sent more than the ${this.begin.size} bytes it announced for ${JSON.stringify(this.begin.path)}.`,
      );
    }
    if (this.failed) return;
    this.hash.update(bytes);
    try {
      await this.ingest.write(bytes);
    } catch (error) {
      this.fail(ioError(error, this.begin.path));
      return;
    }
    if (this.held) {
      this.held.push(bytes);
      return;
    }
    if (!this.pending) return;
    try {
      await this.pending.handle.write(bytes);
    } catch (error) {
      this.fail(ioError(error, this.begin.path));
      return;
    }
    this.ctx.reporter.emit({
      kind: "file-progress",
      path: this.begin.path,
      bytes: this.received,
      size: this.begin.size,
    });
  }

  async end(message: PutEnd): Promise<void> {
    const pending = this.pending;
    const held = this.held;
    this.pending = null;
    this.held = null;
    if (this.failed || (!pending && !held)) {
      this.releaseHeld(held);
      this.ctx.release(this.id);
      return;
    }
    const { path, size, mtimeMs, mode } = this.begin;
    let problem: KeepwatchError | null = null;
    if (this.received !== size) {
      problem = new KeepwatchError(
        "KW_SIZE_MISMATCH",
        `Only ${this.received} of the ${size} bytes announced for ${JSON.stringify(path)} arrived.`,
      );
    } else if (!this.hash.digest().equals(message.sha256)) {
      // The server MUST NOT install content whose hash differs from the one announced.
      problem = new KeepwatchError(
        "KW_HASH_MISMATCH",
        `The content received for ${JSON.stringify(path)} does not match its SHA-256; it was not stored.`,
      );
    } else {
      try {
        // The history first (it is the source of truth), then the mirror (a view of it).
        const chunks = await this.ingest.finish();
        // A small file's mirror copy is written and synced while the version is committed.
        const prepared = held ? settle(this.ctx.mirror.prepareBytes(held, { mtimeMs, mode })) : null;
        let handedOver = false;
        try {
          await this.ctx.changing(path, async () => {
            await this.ctx.history.commit(
              {
                set: this.ctx.set,
                path,
                kind: "file",
                size,
                mtimeMs,
                mode,
                content: { sha256: message.sha256, chunks },
              },
              this.ingest.since,
            );
            if (prepared) {
              const file = await prepared;
              if ("error" in file) throw file.error;
              handedOver = true;
              await this.ctx.mirror.installPrepared(file.value, path);
            } else if (pending) {
              await this.ctx.mirror.install(pending, path, { mtimeMs, mode });
            }
          });
        } finally {
          const file = await prepared;
          if (!handedOver && file && "value" in file) await this.ctx.mirror.discardPrepared(file.value);
        }
      } catch (error) {
        problem = ioError(error, path);
      }
    }
    this.releaseHeld(held);
    if (problem) {
      if (pending) await this.ctx.mirror.discard(pending);
      this.ctx.reject(this.id, problem);
      return;
    }
    this.ctx.reporter.emit({ kind: "file-done", path, op: "put", size, set: this.ctx.set });
    this.ctx.ack(this.id);
  }

  async abort(): Promise<void> {
    await this.discard();
    if (this.failed) this.ctx.release(this.id);
    else this.ctx.ack(this.id);
  }

  /** Drop the temporary file (connection closed or request aborted). */
  async discard(): Promise<void> {
    this.discarded = true;
    this.releaseHeld(this.held);
    this.held = null;
    const pending = this.pending;
    this.pending = null;
    if (pending) await this.ctx.mirror.discard(pending);
  }

  private releaseHeld(held: Buffer[] | null): void {
    if (held) this.ctx.budget.give(this.begin.size);
  }

  private fail(error: KeepwatchError): void {
    this.failed = true;
    this.releaseHeld(this.held);
    this.held = null;
    const pending = this.pending;
    this.pending = null;
    if (pending) void this.ctx.mirror.discard(pending);
    this.ctx.reject(this.id, error, true);
  }
}

/** Turn a filesystem failure while storing `path` into an error for the client. */
export function ioError(error: unknown, path: string): KeepwatchError {
  if (error instanceof KeepwatchError) return error;
  if (errnoCode(error) === "ENOSPC" || errnoCode(error) === "EDQUOT") {
    return new KeepwatchError(
      "KW_DISK_FULL",
      `The server's disk is full, so ${JSON.stringify(path)} was not stored; free space on the server and it will be sent again.`,
    );
  }
  return new KeepwatchError(
    "KW_SERVER_IO",
    `The server could not store ${JSON.stringify(path)}: ${error instanceof Error ? error.message : String(error)}.`,
  );
}

type Settled<T> = { value: T } | { error: unknown };

/** The outcome of `promise` without a rejection to handle (it is looked at later). */
function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  return promise.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
}
