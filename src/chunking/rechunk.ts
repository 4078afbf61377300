// Chunking a file again after an edit, guided by the chunk list of the version before it.
// FastCDC cuts depend only on the bytes since the previous cut, so where the new file holds,
// from a cut on, exactly the bytes of an old chunk, FastCDC would cut it there again: that
// chunk need not be searched for a cut, only hashed and compared. The scan below checks the
// old chunks where it expects them (each one after the last chunk it found), and runs FastCDC
// only from where that check fails until a chunk it cuts is an old one again (an insertion
// or deletion shifts what follows; the shifted chunks are found again by their hashes). The
// result is the very chunk list a full FastCDC pass gives (test: rechunk.test.ts), for about
// half its work on an edited file: hashing instead of cutting and hashing (docs/performance.md).
//
// Where the old chunks have fingerprints (fingerprint.ts), the check at an expected chunk
// compares fingerprints, a quarter of a SHA-256's work, and takes the old chunk's id; a
// chunk FastCDC cuts gets its SHA-256 (it may be new) and its fingerprint. A fingerprint that
// lies gives a wrong chunk id here, which the whole-file SHA-256 exposes (the server refuses
// the version); without fingerprints, the checks compare SHA-256 ids as before.
//
// The scan hashes the chunks on the caller's thread; the stream hasher, on its own thread,
// takes every byte once in order for the whole file's SHA-256.

import { createHash } from "node:crypto";
import { ChunkList } from "./chunk-list.js";
import { Chunker, DEFAULT_CHUNK_PARAMS } from "./fastcdc.js";
import { type Fingerprint, fingerprints } from "./fingerprint.js";
import { PIECE_BYTES, type StreamHasher } from "./stream-hasher.js";

/** Reads into `buffer` from the file's `position`; resolves with the bytes read. */
export type ReadAt = (buffer: Buffer, position: number) => Promise<number>;

/**
 * Told of each chunk as soon as it is found, in file order (the scan waits for it): the
 * chunks found so far, the new one last.
 */
export type OnChunk = (found: ChunkList) => void | Promise<void>;

/** Bytes of the file held at once: room for the largest chunk and a few reads after it. */
const WINDOW_BYTES = 4 * 1024 * 1024;
/** Reads (of a hasher piece each) on their way while the window's bytes are hashed. */
const READS_AHEAD = 2;

/**
 * The file's bytes, read forward once into a window, a few reads ahead, each byte handed
 * once, in order, to the stream hasher as it arrives.
 */
class ForwardWindow {
  private readonly buffer = Buffer.allocUnsafe(WINDOW_BYTES);
  /** File position of buffer[0], and how many bytes from there the buffer holds. */
  private start = 0;
  private length = 0;
  /** Reads under way, in file order, each into a piece for the hasher; and where the next starts. */
  private readonly ahead: { piece: Buffer; read: Promise<number> }[] = [];
  private nextRead = 0;

  constructor(
    private readonly read: ReadAt,
    private readonly size: number,
    private readonly hasher: StreamHasher,
  ) {}

  /**
   * The bytes [from, to) (to − from at most a chunk's largest size, from never before an
   * earlier call's from), valid until the next call; null when the file came up short.
   */
  async bytes(from: number, to: number): Promise<Buffer | null> {
    if (to > this.start + this.length) {
      const end = this.start + this.length;
      this.buffer.copy(this.buffer, 0, from - this.start, this.length);
      this.length = end - from;
      this.start = from;
      this.readAhead();
      // Up to `to`, then on while the window has room for what is already on its way.
      while (
        this.start + this.length < to ||
        (this.ahead.length > 0 && this.buffer.length - this.length >= PIECE_BYTES)
      ) {
        const next = this.ahead.shift();
        if (!next) return null;
        const got = await next.read;
        // A plain file reads short only at its end: it is shorter than its size said.
        if (got !== next.piece.length) return null;
        next.piece.copy(this.buffer, this.length);
        this.length += got;
        // A memory copy costs far less than a hash; the piece itself goes to the hasher.
        await this.hasher.push(next.piece, null);
        this.readAhead();
      }
    }
    return this.buffer.subarray(from - this.start, to - this.start);
  }

  /** Wait for the reads under way (the caller closes the file next). */
  async close(): Promise<void> {
    for (const { read } of this.ahead.splice(0)) await read.catch(() => {});
  }

  private readAhead(): void {
    while (this.ahead.length < READS_AHEAD && this.nextRead < this.size) {
      const piece = this.hasher.pieceBuffer(Math.min(PIECE_BYTES, this.size - this.nextRead));
      this.ahead.push({ piece, read: this.read(piece, this.nextRead) });
      this.nextRead += piece.length;
    }
  }
}

function chunkId(bytes: Uint8Array): Buffer {
  return createHash("sha256").update(bytes).digest();
}

/**
 * Whether `previous` can guide the scan: chunks FastCDC could have cut with keepwatch's
 * parameters (a list from elsewhere, or made with other parameters, is not used).
 */
export function usableGuide(previous: ChunkList): boolean {
  if (previous.length === 0) return false;
  for (let i = 0; i < previous.length; i++) {
    const length = previous.lengthOf(i);
    if (length === 0 || length > DEFAULT_CHUNK_PARAMS.maxSize) return false;
  }
  return true;
}

/**
 * The chunks of a file of `size` bytes (with their fingerprints) and its SHA-256, the file
 * being an edit of one whose chunks were `previous` (any list may be given: a poor guide
 * costs time, never a wrong result, but for fingerprints that lie: see above). The hasher
 * must have been started; null when the file came up short. `onChunk` hears of each chunk as
 * it is found, before the whole file is read.
 */
export async function rechunk(
  read: ReadAt,
  size: number,
  previous: ChunkList,
  hasher: StreamHasher,
  onChunk: OnChunk = () => {},
): Promise<{ chunks: ChunkList; sha256: Buffer; searchedBytes: number } | null> {
  if (!usableGuide(previous)) throw new RangeError("rechunk needs the chunks of a version cut by FastCDC");
  const fingerprint = await fingerprints();
  const window = new ForwardWindow(read, size, hasher);
  try {
    return await scan(window, size, previous, hasher, fingerprint, onChunk);
  } finally {
    await window.close();
  }
}

async function scan(
  window: ForwardWindow,
  size: number,
  previous: ChunkList,
  hasher: StreamHasher,
  fingerprint: Fingerprint | null,
  onChunk: OnChunk,
): Promise<{ chunks: ChunkList; sha256: Buffer; searchedBytes: number } | null> {
  // Room for about as many chunks as the old list: an edit's list rarely grows.
  const chunks = new ChunkList(previous.length + 16, fingerprint !== null);
  const oldMarks = previous.hasMarks;
  let position = 0;
  /** The old chunk expected at `position` (the one after the last old chunk found). */
  let expected = 0;
  /** Bytes FastCDC searched for cuts (the rest was only hashed). */
  let searchedBytes = 0;
  while (position < size) {
    const oldLength = expected < previous.length ? previous.lengthOf(expected) : 0;
    // The old file's last chunk ended with the file, not at a cut: it is only the same
    // chunk where the new file ends with it too.
    const candidate =
      oldLength > 0 &&
      position + oldLength <= size &&
      (expected < previous.length - 1 || position + oldLength === size);
    if (candidate) {
      const bytes = await window.bytes(position, position + oldLength);
      if (bytes === null) return null;
      const mark = fingerprint?.(bytes);
      const same =
        !oldMarks || mark === undefined
          ? previous.idEquals(expected, chunkId(bytes))
          : mark === previous.markOf(expected);
      if (same) {
        chunks.push(previous.id(expected), oldLength, mark);
        await onChunk(chunks);
        position += oldLength;
        expected++;
        continue;
      }
    }
    // Cut with FastCDC from here until a chunk it cuts is one of the old ones.
    const chunker = new Chunker();
    let fed = position;
    let found = false;
    while (!found && fed < size) {
      const to = Math.min(size, fed + DEFAULT_CHUNK_PARAMS.maxSize);
      const bytes = await window.bytes(fed, to);
      if (bytes === null) return null;
      searchedBytes += to - fed;
      fed = to;
      const cut = chunker.push(bytes);
      const last = fed === size ? chunker.finish() : null;
      if (last) cut.push(last);
      for (const chunk of cut) {
        const id = chunkId(chunk.data);
        chunks.push(id, chunk.length, fingerprint?.(chunk.data));
        await onChunk(chunks);
        position += chunk.length;
        const at = previous.indexOf(id);
        if (at >= 0) {
          expected = at + 1;
          found = true;
          break;
        }
      }
    }
    if (!found) expected = previous.length;
  }
  // The whole file has passed through the window, and so through the stream hasher.
  const hashes = await hasher.finish(size);
  return { chunks, sha256: hashes.sha256, searchedBytes };
}
