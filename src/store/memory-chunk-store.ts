// A chunk store in memory, for the tests of every package that needs one: the same
// contract as the local store (it passes the same conformance suite), nothing durable.

import { createHash } from "node:crypto";
import { type Bytes, partsOf } from "../bytes.js";
import { KeepwatchError } from "../errors.js";
import type { ChunkId, ChunkStore, ChunkStoreStats } from "./chunk-store.js";

export class MemoryChunkStore implements ChunkStore {
  private closed = false;

  /** Give two stores the same `chunks` map to model a reopen. */
  constructor(private readonly chunks = new Map<string, Buffer>()) {}

  async put(id: ChunkId, data: Bytes): Promise<void> {
    this.assertOpen();
    if (id.length !== 32) throw new RangeError(`a chunk id is a 32-byte SHA-256, got ${id.length} bytes`);
    const key = id.toString("hex");
    // A copy: the caller may reuse its buffer once put resolves.
    if (!this.chunks.has(key)) this.chunks.set(key, Buffer.concat(partsOf(data)));
  }

  async has(id: ChunkId): Promise<boolean> {
    this.assertOpen();
    return this.chunks.has(id.toString("hex"));
  }

  async get(id: ChunkId): Promise<Buffer> {
    this.assertOpen();
    const key = id.toString("hex");
    const data = this.chunks.get(key);
    if (!data)
      throw new KeepwatchError(
        "KW_CHUNK_MISSING",
        `Chunk ${key} cannot be read: the store does not hold it.`,
      );
    if (!createHash("sha256").update(data).digest().equals(id)) {
      throw new KeepwatchError(
        "KW_CHUNK_CORRUPT",
        `Stored chunk ${key} is damaged: its SHA-256 does not match.`,
      );
    }
    return Buffer.from(data);
  }

  async flush(_since?: number): Promise<void> {
    this.assertOpen();
  }

  /** A store in memory never loses a chunk it accepted. */
  lossMark(): number {
    return 0;
  }

  async *list(): AsyncIterable<ChunkId> {
    this.assertOpen();
    for (const key of [...this.chunks.keys()]) yield Buffer.from(key, "hex");
  }

  async delete(ids: Iterable<ChunkId>): Promise<void> {
    this.assertOpen();
    for (const id of ids) this.chunks.delete(id.toString("hex"));
  }

  async stats(): Promise<ChunkStoreStats> {
    this.assertOpen();
    let bytes = 0;
    for (const data of this.chunks.values()) bytes += data.length;
    return { chunks: this.chunks.size, bytes, storedBytes: bytes };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private assertOpen(): void {
    if (this.closed) throw new Error("the chunk store is closed");
  }
}
