// Writes a new version's mirror file while its chunks arrive, in file order: each chunk
// the client sends is written as it comes, and the chunks the server already held are read
// from the history just before the first sent chunk that follows them. The whole file's
// SHA-256 is computed on the way, so the version can be committed as soon as the last chunk
// is in, without reading the file back from the history (docs/performance.md).

import { createHash } from "node:crypto";
import { KeepwatchError } from "../errors.js";
import type { ChunkList } from "../store/chunk-list.js";
import type { Mirror, PendingFile } from "../store/mirror.js";
import type { ByteBudget } from "./budget.js";
import type { History } from "./history.js";

/** Bytes of arrived chunks gathered before one write to the pending file. */
const WRITE_BYTES = 1024 * 1024;

export class Assembler {
  /** The index of the next chunk to write. */
  private next = 0;
  private readonly hash = createHash("sha256");
  private pending: PendingFile | null = null;
  /** Arrived chunks not yet written, in order. */
  private gathered: Buffer[] = [];
  private gatheredBytes = 0;
  /** Bytes taken from the budget for arrived chunks and not yet given back. */
  private held = 0;
  /** The writes still to do, one after the other. */
  private tail: Promise<void> = Promise.resolve();
  private failure: unknown = null;

  constructor(
    private readonly mirror: Mirror,
    private readonly history: History,
    private readonly chunks: ChunkList,
    /** The server-wide memory for data in flight: arrived chunks wait in it to be written. */
    private readonly budget: ByteBudget,
  ) {}

  /**
   * Chunk `index` arrived (checked against its id). Chunks must come in ascending order.
   * Resolves once the chunk is queued for writing, which waits while the server's budget
   * for data in flight is used up.
   */
  async add(index: number, data: Buffer): Promise<void> {
    if (this.failure !== null) return;
    await this.budget.acquire(data.length);
    this.held += data.length;
    this.enqueue(async () => {
      await this.fillUpTo(index);
      this.gather(data);
      this.next = index + 1;
      if (this.gatheredBytes >= WRITE_BYTES) await this.writeGathered();
    });
  }

  /**
   * Write the chunks after the last one that arrived, then check the whole against
   * `sha256`: the pending file, ready to install. Throws (leaving nothing behind) when a
   * chunk cannot be read or the content does not match.
   */
  async finish(sha256: Buffer): Promise<PendingFile> {
    this.enqueue(async () => {
      await this.fillUpTo(this.chunks.length);
      await this.writeGathered();
    });
    await this.tail;
    if (this.failure === null && !this.hash.digest().equals(sha256)) {
      this.failure = new KeepwatchError(
        "KW_HASH_MISMATCH",
        "The content assembled from its chunks does not match its SHA-256; it was not stored.",
      );
    }
    if (this.failure !== null) {
      const failure = this.failure;
      await this.discard();
      throw failure;
    }
    const pending = await this.ensurePending();
    this.pending = null;
    return pending;
  }

  /** Stop, and remove the pending file once the write under way (if any) is done. */
  async discard(): Promise<void> {
    this.failure ??= new Error("the assembly was discarded");
    await this.tail;
    this.gathered = [];
    this.gatheredBytes = 0;
    this.budget.give(this.held);
    this.held = 0;
    const pending = this.pending;
    this.pending = null;
    if (pending) await this.mirror.discard(pending);
  }

  private enqueue(step: () => Promise<void>): void {
    this.tail = this.tail.then(async () => {
      if (this.failure !== null) return;
      try {
        await step();
      } catch (error) {
        this.failure = error;
      }
    });
  }

  /**
   * Write the chunks from `next` up to (not including) `end`, read from the history one
   * at a time (so an assembly holds at most one of them in memory).
   */
  private async fillUpTo(end: number): Promise<void> {
    if (this.next >= end) return;
    await this.writeGathered();
    const pending = await this.ensurePending();
    for (; this.next < end; this.next++) {
      if (this.failure !== null) throw this.failure;
      const ref = this.chunks.at(this.next);
      const data = await this.history.chunks.get(ref.id);
      if (data.length !== ref.length) {
        throw new KeepwatchError(
          "KW_CHUNK_CORRUPT",
          `A stored chunk (${ref.id.toString("hex").slice(0, 16)}…) has ${data.length} bytes instead of ${ref.length}; run "keepwatch verify".`,
        );
      }
      this.hash.update(data);
      await writeAll(pending, [data]);
    }
  }

  private gather(data: Buffer): void {
    this.hash.update(data);
    this.gathered.push(data);
    this.gatheredBytes += data.length;
  }

  private async writeGathered(): Promise<void> {
    const pending = await this.ensurePending();
    const buffers = this.gathered;
    const bytes = this.gatheredBytes;
    if (buffers.length === 0) return;
    await writeAll(pending, buffers);
    this.gathered = [];
    this.gatheredBytes = 0;
    this.held -= bytes;
    this.budget.give(bytes);
  }

  private async ensurePending(): Promise<PendingFile> {
    this.pending ??= await this.mirror.createPending();
    return this.pending;
  }
}

/** writev until every byte is written (a short write is possible on a full disk). */
async function writeAll(pending: PendingFile, buffers: Buffer[]): Promise<void> {
  let rest = buffers;
  while (rest.length > 0) {
    const { bytesWritten } = await pending.handle.writev(rest);
    let skip = bytesWritten;
    const left: Buffer[] = [];
    for (const buffer of rest) {
      if (skip >= buffer.length) skip -= buffer.length;
      else {
        left.push(skip > 0 ? buffer.subarray(skip) : buffer);
        skip = 0;
      }
    }
    rest = left;
  }
}
