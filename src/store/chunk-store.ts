// The chunk store: immutable blobs of file content, addressed by the SHA-256 of their
// (uncompressed) bytes. The local implementation packs them into append-only pack files;
// an S3-compatible one can come later behind the same interface. How a store compresses,
// packs and indexes blobs is its own business.

import type { Bytes } from "../bytes.js";

/** A chunk's id: the 32-byte SHA-256 of its uncompressed content. */
export type ChunkId = Buffer;

export interface ChunkStoreStats {
  /** Chunks stored. */
  chunks: number;
  /** Sum of their uncompressed sizes. */
  bytes: number;
  /** Bytes they take on disk (compressed, including pack overhead). */
  storedBytes: number;
}

export interface ChunkStore {
  /**
   * Store `data` under `id` unless a chunk with that id is already stored (then do
   * nothing). The caller guarantees id = SHA-256(data). Idempotent; safe to call many
   * times concurrently. Not durable until `flush` resolves. `data` may come in parts (a
   * chunk as the reads from a socket carried it), which are stored as their concatenation;
   * they are not kept once put resolves.
   */
  put(id: ChunkId, data: Bytes): Promise<void>;

  /** True when a chunk with `id` is stored (durable or pending flush). */
  has(id: ChunkId): Promise<boolean>;

  /**
   * The chunk's uncompressed bytes. Verifies them against `id` and throws a
   * KeepwatchError with code KW_CHUNK_CORRUPT when they differ, KW_CHUNK_MISSING when
   * no such chunk is stored.
   */
  get(id: ChunkId): Promise<Buffer>;

  /**
   * Make every chunk put so far durable (data and index). Resolves when it is.
   *
   * A store may lose chunks it had accepted but not yet made durable (a pack write failed
   * on a full disk), including chunks another caller put and this one was told by `has`
   * it need not put again. A caller that relies on such chunks takes `lossMark()` before it
   * first calls `put` or `has`, and passes it here: the flush then throws the failure that
   * lost chunks after that mark, if any, rather than vouch for chunks it may have lost.
   */
  flush(since?: number): Promise<void>;

  /** How many times the store has lost accepted chunks so far (see `flush`). */
  lossMark(): number;

  /** Every stored chunk id, in no particular order. */
  list(): AsyncIterable<ChunkId>;

  /**
   * Forget the given chunks and reclaim their space (repacking as needed). Crash-safe:
   * interrupted at any moment, every chunk not in `ids` is still readable afterwards.
   */
  delete(ids: Iterable<ChunkId>): Promise<void>;

  stats(): Promise<ChunkStoreStats>;

  /** Flush and release files; the store is unusable afterwards. */
  close(): Promise<void>;
}
