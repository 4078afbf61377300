// The server's history: every version of every file, deduplicated by content-defined
// chunks. It joins the chunk store (blobs) and the metadata store (versions, contents)
// and offers what the request handlers need: cutting incoming bytes into stored chunks,
// reading a content back chunk by chunk, and committing a version durably.

import { join } from "node:path";
import type { ChunkList } from "../chunking/chunk-list.js";
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

/** Most versions one group commit takes (one SQLite transaction, one pack fsync). */
const GROUP_COMMIT_MAX = 512;
/** Longest a group commit waits for more versions to join it. */
const GROUP_WAIT_MS = 2;

interface Waiting {
  version: NewVersion;
  since: number | undefined;
  resolve: (record: VersionRecord) => void;
  reject: (error: unknown) => void;
}

export class History {
  /** Versions waiting for the next group commit, in the order they were asked for. */
  private waiting: Waiting[] = [];
  private committing = false;

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
  async chunksOf(sha: Buffer): Promise<ChunkList | null> {
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
   *
   * Versions asked for while a commit is under way wait and are committed together in
   * the next one (group commit): one fsync of the packs and one of the index serve them
   * all, in the order they were asked for.
   */
  commit(version: NewVersion, since?: number): Promise<VersionRecord> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ version, since, resolve, reject });
      if (!this.committing) void this.commitWaiting();
    });
  }

  private async commitWaiting(): Promise<void> {
    this.committing = true;
    try {
      while (this.waiting.length > 0) {
        await this.gather();
        const group = this.waiting.splice(0, GROUP_COMMIT_MAX);
        await this.commitGroup(group);
      }
    } finally {
      this.committing = false;
    }
  }

  /**
   * Let the versions on their way join the group: wait while more keep arriving, turn by
   * turn of the event loop, for at most GROUP_WAIT_MS.
   */
  private async gather(): Promise<void> {
    const until = performance.now() + GROUP_WAIT_MS;
    let seen = -1;
    while (
      this.waiting.length !== seen &&
      this.waiting.length < GROUP_COMMIT_MAX &&
      performance.now() < until
    ) {
      seen = this.waiting.length;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  private async commitGroup(group: Waiting[]): Promise<void> {
    const ready: Waiting[] = [];
    if (group.some((w) => w.version.kind === "file")) {
      try {
        await this.chunks.flush();
      } catch (error) {
        for (const w of group) w.reject(error);
        return;
      }
    }
    for (const w of group) {
      if (w.version.kind === "file" && w.since !== undefined && this.chunks.lossMark() > w.since) {
        // Chunks it may rely on were lost: the flush that checks its mark says by what.
        this.chunks.flush(w.since).then(
          () => w.reject(new Error("a chunk this version needs was lost")),
          (error: unknown) => w.reject(error),
        );
      } else {
        ready.push(w);
      }
    }
    if (ready.length === 0) return;
    let records: (VersionRecord | Error)[];
    try {
      records = await this.meta.commitVersions(ready.map((w) => w.version));
    } catch (error) {
      for (const w of ready) w.reject(error);
      return;
    }
    ready.forEach((w, i) => {
      const record = records[i] as VersionRecord | Error;
      if (record instanceof Error) w.reject(record);
      else w.resolve(record);
    });
  }

  async close(): Promise<void> {
    await this.chunks.close();
    await this.meta.close();
  }
}
