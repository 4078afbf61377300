// The metadata store: which sets exist, every version of every path (deletes included),
// and for each distinct file content its ordered list of chunks. Chunks themselves live
// in the ChunkStore. The local implementation is SQLite; PostgreSQL can come later
// behind the same interface. This, with the chunk store, is the history: the source of
// truth from which the mirror can always be rebuilt.

import type { ChunkList } from "../chunking/chunk-list.js";
import type { ChunkId } from "./chunk-store.js";

/** One chunk of a content, in file order. */
export interface ChunkRef {
  id: ChunkId;
  length: number;
}

/** A content's chunks in file order: an array, or a compact list (src/chunking/chunk-list.ts). */
export type ChunkRefs = Iterable<ChunkRef> & { readonly length: number };

export type VersionKind = "file" | "dir" | "deleted";

export interface VersionRecord {
  /** Unique and increasing in commit order across the whole store. */
  id: number;
  set: string;
  /** Set-relative path (wire rules of src/protocol/paths.ts). */
  path: string;
  /** When the server committed it (ms since the epoch, server clock). */
  time: number;
  kind: VersionKind;
  /** Content size for files; 0 otherwise. */
  size: number;
  /** The file's own mtime (files and folders); 0 for deletes. */
  mtimeMs: number;
  /** Permission bits (mode & 0o7777); 0 for deletes. */
  mode: number;
  /** SHA-256 of the whole content (files only). */
  sha256: Buffer | null;
}

export interface NewVersion {
  set: string;
  path: string;
  kind: VersionKind;
  size: number;
  mtimeMs: number;
  mode: number;
  /** For files: the content's hash and, when the store does not have it yet, its chunks. */
  content?: { sha256: Buffer; chunks?: ChunkRefs };
  /** Commit time; defaults to now (tests pass their own). */
  time?: number;
}

export interface ContentInfo {
  sha256: Buffer;
  size: number;
  chunkCount: number;
}

export interface MetadataStore {
  /** The stored content with this whole-file hash, or null. */
  findContent(sha256: Buffer): Promise<ContentInfo | null>;

  /** The chunks of a stored content in file order; throws when the content is unknown. */
  contentChunks(sha256: Buffer): Promise<ChunkList>;

  /**
   * Record a version, durably and atomically with its content rows (when new). A file
   * version whose content is unknown must carry its chunks. Returns the stored record.
   */
  commitVersion(version: NewVersion): Promise<VersionRecord>;

  /**
   * Record several versions, in order, durably in one commit (the server's group commit).
   * Each is atomic on its own: one that is refused (as commitVersion would refuse it) is
   * left out and its place in the answer holds the error; the others are committed.
   */
  commitVersions(versions: readonly NewVersion[]): Promise<(VersionRecord | Error)[]>;

  /** The newest version of exactly `path` committed at or before `time` (default: latest). */
  versionAt(set: string, path: string, time?: number): Promise<VersionRecord | null>;

  /** The newest version of any path of `set` committed at or before `time` (default: latest), or null. */
  newestVersion(set: string, time?: number): Promise<VersionRecord | null>;

  /**
   * The tree of `set` a page at a time (use `treeAt`, which leaves out the deletes): the newest
   * version at or before `time` of each of at most `limit` paths at or below `prefix` that
   * sort after `after` (null: from the first), in path order. Deletes are included, so that
   * a page of them still moves on; a page shorter than `limit` is the last.
   */
  treePage(
    set: string,
    time: number,
    prefix: string,
    after: string | null,
    limit: number,
  ): Promise<VersionRecord[]>;

  /**
   * history a page at a time (use `historyOf`): at most `limit` versions of `path` and below
   * it ("" for the whole set) with an id above `after`, oldest first; a page shorter than
   * `limit` is the last.
   */
  historyPage(set: string, path: string, after: number, limit: number): Promise<VersionRecord[]>;

  /** How many files the tree of `set` held at `time` (default: latest). */
  fileCountAt(set: string, time?: number): Promise<number>;

  /** Names of all sets, sorted. */
  sets(): Promise<string[]>;

  /**
   * Whether some version in one of `sets` has the content `sha256`. A client may build on
   * a content (PUT_REF, a manifest's base) only if its own sets hold it.
   */
  contentInSets(sha256: Buffer, sets: readonly string[]): Promise<boolean>;

  /** Whether some version in one of `sets` has a content made with the chunk `chunkId`. */
  chunkInSets(chunkId: ChunkId, sets: readonly string[]): Promise<boolean>;

  /** Every version of every set, in commit order (for verify). */
  allVersions(): AsyncIterable<VersionRecord>;

  /**
   * Every version of every set, by set name, then path, then commit order (for prune, which
   * takes each path's versions in turn): read `pageSize` (default 1,000) at a time,
   * whatever the number.
   */
  versionsByPath(pageSize?: number): AsyncIterable<VersionRecord>;

  /**
   * Remove the given versions and every content no remaining version uses; returns the
   * ids of chunks that no remaining content references (for the chunk store to delete).
   * Atomic: either all of it happens or none.
   */
  dropVersions(ids: number[]): Promise<ChunkId[]>;

  /** Every chunk id referenced by any stored content. */
  referencedChunks(): AsyncIterable<ChunkId>;

  close(): Promise<void>;
}

/** Versions read at a time by `treeAt`, `historyOf` and `versionsByPath`. */
export const PAGE = 1000;

/**
 * Every item of a sequence read a page at a time: `read` gets the last item of the page
 * before (null for the first) and returns at most `pageSize` items; a shorter page is the last.
 */
export async function* inPages<T>(
  pageSize: number,
  read: (last: T | null) => Promise<T[]>,
): AsyncGenerator<T> {
  let last: T | null = null;
  for (;;) {
    const page = await read(last);
    yield* page;
    last = page.at(-1) ?? null;
    if (page.length < pageSize || last === null) return;
  }
}

/**
 * The tree of `set` at `time` (default: latest) at or below `prefix`: for each path its newest
 * version at or before `time`, leaving out paths whose newest version is a delete, sorted by
 * path, read a page at a time: what a listing or a restore holds does not grow with the set. For
 * "latest", a version committed while the pages are read shows in a later page when its
 * path comes later, as in a listing of a live folder; a past moment's tree never changes.
 */
export async function* treeAt(
  meta: MetadataStore,
  set: string,
  time: number | undefined,
  prefix: string,
  pageSize = PAGE,
): AsyncGenerator<VersionRecord> {
  const at = time ?? Number.MAX_SAFE_INTEGER;
  const pages = inPages<VersionRecord>(pageSize, (last) =>
    meta.treePage(set, at, prefix, last?.path ?? null, pageSize),
  );
  for await (const version of pages) if (version.kind !== "deleted") yield version;
}

/**
 * Every version of `path` and below it ("" for the whole set), oldest first, read a page at
 * a time.
 */
export function historyOf(
  meta: MetadataStore,
  set: string,
  path: string,
  pageSize = PAGE,
): AsyncGenerator<VersionRecord> {
  return inPages<VersionRecord>(pageSize, (last) => meta.historyPage(set, path, last?.id ?? 0, pageSize));
}
