// The server's history: every version of every file, deduplicated by content-defined
// chunks. It joins the chunk store (blobs) and the metadata store (versions, contents)
// and offers what the request handlers need: cutting incoming bytes into stored chunks,
// reading a content back chunk by chunk, and committing a version durably.

import { join } from "node:path";
import { Chunker, sha256 } from "../chunking/fastcdc.js";
import { KeepwatchError } from "../errors.js";
import type { ChunkStore } from "../store/chunk-store.js";
import { LocalChunkStore } from "../store/local-chunk-store.js";
import type { ChunkRef, MetadataStore, NewVersion, VersionRecord } from "../store/metadata-store.js";
import { SqliteMetadataStore } from "../store/sqlite-metadata-store.js";

/** Cuts a stream of bytes into chunks and stores each one as it is completed. */
export class Ingest {
  private readonly chunker = new Chunker();
  private readonly refs: ChunkRef[] = [];
  /** The store's loss mark before the first chunk (pass it to History.commit). */
  readonly since: number;

  constructor(private readonly chunks: ChunkStore) {
    this.since = chunks.lossMark();
  }

  async write(data: Buffer): Promise<void> {
    for (const chunk of this.chunker.push(data)) await this.store(chunk.data);
  }

  /** The content's chunk list, once every chunk is stored (not yet flushed). */
  async finish(): Promise<ChunkRef[]> {
    const last = this.chunker.finish();
    if (last) await this.store(last.data);
    return this.refs;
  }

  private async store(data: Buffer): Promise<void> {
    const id = sha256(data);
    await this.chunks.put(id, data);
    this.refs.push({ id, length: data.length });
  }
}

export class History {
  constructor(
    readonly chunks: ChunkStore,
    readonly meta: MetadataStore,
  ) {}

  /** Open the history kept in DEST/.keepwatch/ (index.db and packs/). */
  static async open(controlDir: string): Promise<History> {
    const chunks = await LocalChunkStore.open(controlDir);
    const meta = SqliteMetadataStore.open(join(controlDir, "index.db"));
    return new History(chunks, meta);
  }

  ingest(): Ingest {
    return new Ingest(this.chunks);
  }

  /** The chunk list of a stored content, or null when the history does not hold it. */
  async chunksOf(sha: Buffer): Promise<ChunkRef[] | null> {
    if (!(await this.meta.findContent(sha))) return null;
    return this.meta.contentChunks(sha);
  }

  /** A content's bytes, chunk by chunk, each verified against its id by the store. */
  async *read(chunks: Iterable<ChunkRef>): AsyncIterable<Buffer> {
    for (const ref of chunks) {
      const data = await this.chunks.get(ref.id);
      if (data.length !== ref.length) {
        throw new KeepwatchError(
          "KW_CHUNK_CORRUPT",
          `A stored chunk (${ref.id.toString("hex").slice(0, 16)}…) has ${data.length} bytes instead of ${ref.length}; run "keepwatch verify".`,
        );
      }
      yield data;
    }
  }

  /**
   * Record a version durably: the chunks it needs first (packs and their index), then
   * the version itself. Only then may the mirror change and the client hear ACK. `since`
   * is the chunk store's loss mark taken before the version's chunks were put or looked
   * up: a chunk lost after it fails the commit (ChunkStore.flush).
   */
  async commit(version: NewVersion, since?: number): Promise<VersionRecord> {
    if (version.kind === "file") await this.chunks.flush(since);
    return this.meta.commitVersion(version);
  }

  async close(): Promise<void> {
    await this.chunks.close();
    await this.meta.close();
  }
}
