// How a file's content reaches the server (protocol version 2). A content the server
// already holds travels by reference (PUT_REF: renames, copies, --force). A small file
// travels whole in one go (PUT). A larger one is cut into content-defined chunks; the
// client sends its manifest as edits of the version the server acknowledged last, the
// server answers with the chunks it lacks, and only those travel. An edit of a file the
// server holds streams its manifest while the file is read (version 5), so that the
// server writes the new version while the client is still reading it.

import { closeSync, constants, fstatSync, openSync, read, readSync, type Stats } from "node:fs";
import { join } from "node:path";
import { deltaOps } from "../chunking/block-delta.js";
import { ChunkList } from "../chunking/chunk-list.js";
import { Chunker, chunkBuffer, DEFAULT_CHUNK_PARAMS, sha256 } from "../chunking/fastcdc.js";
import { fingerprints } from "../chunking/fingerprint.js";
import { type OnChunk, rechunk, usableGuide } from "../chunking/rechunk.js";
import { withStreamHasher } from "../chunking/stream-hasher.js";
import { KeepwatchError, RemoteError } from "../errors.js";
import type { Frame } from "../protocol/frame.js";
import {
  type Basis,
  decodeHistory,
  encodeHistory,
  type FileHeader,
  MAX_CHUNKS_PER_FILE,
  type ManifestOp,
  type NeedRanges,
} from "../protocol/history-messages.js";
import { encode, MessageType, messageTypeName } from "../protocol/messages.js";
import type { Reporter } from "../ui/events.js";
import type { ServerLink } from "./link.js";
import { type DiskEntry, diskEntry } from "./scanner.js";
import { type ClientState, recordedChunks } from "./state.js";

/** Bytes per PUT_DATA frame, and the largest file sent whole by PUT. */
export const PIECE_SIZE = 256 * 1024;
/** Bytes read from disk per step while a large file is chunked. */
const READ_SIZE = 1024 * 1024;
/**
 * When a streamed manifest's ops travel (MANIFEST_DATA): at the latest every
 * STREAM_STEP_BYTES of the file, so that the server writes the copied chunks as the file
 * is read; sooner when they hold a new chunk followed by STREAM_NEW_AFTER chunks and at
 * least STREAM_NEW_BYTES (the server lists a chunk once four more are described, and its
 * NEED then comes while the file is still read). Each frame costs about 40 bytes on the
 * wire (header and TLS record), so they are not sent more often than that.
 */
const STREAM_STEP_BYTES = 32 * 1024 * 1024;
const STREAM_NEW_AFTER = 4;
const STREAM_NEW_BYTES = 1024 * 1024;

export type PutOutcome =
  /**
   * The server acknowledged this content: `entry` is what was read, `chunks` its chunk
   * list (encoded, the base for the next delta) and `marks` their fingerprints (encoded;
   * null for a small file), `sentBytes` the content bytes that travelled (the rest was
   * reused from what the server held).
   */
  | {
      status: "stored";
      entry: DiskEntry;
      sha256: Buffer;
      chunks: Buffer;
      marks: Buffer | null;
      sentBytes: number;
    }
  /** Nothing to send: the disk matches `skipIf`. */
  | { status: "unchanged" }
  /** The file is gone or is no longer a regular file. */
  | { status: "vanished" }
  /** The file changed while it was read; nothing was stored, read it again later. */
  | { status: "changed" };

export interface FileTransfer {
  /**
   * Send the file at `path` (set-relative) unless `skipIf(entry)` says the server has it;
   * nothing is sent before it resolves. Resolves once the server acknowledged; rejects
   * with the server's error or a local one.
   */
  put(path: string, skipIf: (entry: DiskEntry) => Promise<boolean>): Promise<PutOutcome>;
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
const COARSE_TICK_MS = 1000;
const SETTLE_ATTEMPTS = 10;

/** Stat `fd` once its last change is old enough; null if it keeps changing. */
async function settledStat(fd: number): Promise<Stats | null> {
  for (let attempt = 0; attempt < SETTLE_ATTEMPTS; attempt++) {
    const st = fstatSync(fd);
    const age = Date.now() - Math.max(st.mtimeMs, st.ctimeMs);
    // Whole seconds in both times: most likely a file system that keeps only seconds
    // (ext4 with small inodes, FAT, some network mounts), whose tick is a whole second.
    const tick = st.mtimeMs % 1000 === 0 && st.ctimeMs % 1000 === 0 ? COARSE_TICK_MS : TIMESTAMP_TICK_MS;
    // A time far in the future (a clock set wrong, `touch -d`) is not a recent write.
    if (age >= tick || age < -tick) return st;
    await new Promise((resolve) => setTimeout(resolve, tick - age + 1));
  }
  return null;
}

function sameFile(a: Stats, b: Stats): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino;
}

function readAt(fd: number, buffer: Buffer, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, buffer, 0, buffer.length, position, (error, bytesRead) =>
      error ? reject(error) : resolve(bytesRead),
    );
  });
}

/** The id a chunk is listed with until its SHA-256 comes from the hashing thread. */
const NO_ID = Buffer.alloc(32);

/** Manifest ops encoded and sent at a time (about 150 KB of NEW ops). */
const MANIFEST_BATCH_OPS = 4096;

/** Bytes of neighbouring chunks read from disk at once when the server asked for them. */
const RUN_BYTES = 2 * 1024 * 1024;

/**
 * The bytes of the chunks `needed` (indices into `chunks`, ascending), read a run of
 * neighbouring chunks at a time, the next run while the current one is sent. Yields null,
 * and stops, when the file came up short (it shrank since it was chunked). Each chunk's
 * bytes are valid until the next one is asked for (the buffers are reused).
 */
async function* neededChunks(
  fd: number,
  chunks: ChunkList,
  needed: readonly number[],
): AsyncGenerator<{ index: number; data: Buffer } | null> {
  const offsets = chunks.offsets();
  let next = 0;
  let runs = 0;
  const buffers = [Buffer.allocUnsafe(RUN_BYTES), Buffer.allocUnsafe(RUN_BYTES)];
  const readRun = () => {
    if (next >= needed.length) return null;
    const start = next;
    const first = needed[next++] as number;
    let length = chunks.lengthOf(first);
    while (next < needed.length) {
      const index = needed[next] as number;
      const more = chunks.lengthOf(index);
      if (index !== (needed[next - 1] as number) + 1 || length + more > RUN_BYTES) break;
      length += more;
      next++;
    }
    // Two buffers, one being sent while the other is read: allocating one per run made
    // garbage at the rate the file is sent.
    const buffer =
      length <= RUN_BYTES ? (buffers[runs++ % 2] as Buffer).subarray(0, length) : Buffer.allocUnsafe(length);
    return { start, end: next, buffer, read: readAt(fd, buffer, offsets[first] as number) };
  };
  let run = readRun();
  let upcoming: ReturnType<typeof readRun> = null;
  try {
    while (run) {
      upcoming = readRun();
      if ((await run.read) !== run.buffer.length) {
        yield null;
        return;
      }
      let offset = 0;
      for (let k = run.start; k < run.end; k++) {
        const index = needed[k] as number;
        const length = chunks.lengthOf(index);
        yield { index, data: run.buffer.subarray(offset, offset + length) };
        offset += length;
      }
      run = upcoming;
      upcoming = null;
    }
  } finally {
    // The caller closes the file once we are done: no read may still be on its way then.
    await upcoming?.read.catch(() => {});
  }
}

/**
 * Edits that turn `base` into a new chunk list, as its chunks come: runs of base chunks
 * (COPY) and chunks the base lacks (NEW). `take` hands over the ops so far; a run of
 * copies that goes on after it continues as a new COPY op.
 */
export class ManifestDiff {
  private ops: ManifestOp[] = [];

  /** `base`: null for a manifest without a base (every chunk is NEW). */
  constructor(private readonly base: ChunkList | null) {}

  /** Add chunk `index` of `chunks` (the next one); true when it is new (not in the base). */
  push(chunks: ChunkList, index: number): boolean {
    const id = chunks.id(index);
    const at = this.base ? this.base.indexOf(id) : -1;
    const last = this.ops[this.ops.length - 1];
    if (at < 0) this.ops.push({ op: "new", length: chunks.lengthOf(index), id });
    else if (last?.op === "copy" && last.start + last.count === at) last.count++;
    else this.ops.push({ op: "copy", start: at, count: 1 });
    return at < 0;
  }

  /** How many ops are waiting to be taken. */
  get pending(): number {
    return this.ops.length;
  }

  take(): ManifestOp[] {
    const ops = this.ops;
    this.ops = [];
    return ops;
  }
}

/**
 * The handler of a manifest request's frames before its answer: BASIS offers go into
 * `bases` (null: none may come), NEED lists to `onNeed`; anything else is refused.
 */
function manifestAnswers(
  what: string,
  bases: Map<number, Basis> | null,
  onNeed: (need: NeedRanges) => void,
): (frame: Frame) => void {
  return (frame) => {
    if (frame.type === MessageType.BASIS && bases) {
      const basis = decodeHistory.basis(frame.payload);
      bases.set(basis.index, basis);
      return;
    }
    if (frame.type !== MessageType.NEED) {
      throw new KeepwatchError(
        "KW_UNEXPECTED_MESSAGE",
        `The server answered ${what} with ${messageTypeName(frame.type)}.`,
      );
    }
    onNeed(decodeHistory.need(frame.payload));
  };
}

export class ChunkedTransfer implements FileTransfer {
  private streaming: Promise<void> = Promise.resolve();
  /** Data per frame: our piece size, or less if the server's frames are smaller. */
  private readonly pieceSize: number;

  constructor(
    private readonly root: string,
    private readonly link: ServerLink,
    private readonly reporter: Reporter,
    private readonly state: ClientState,
  ) {
    this.pieceSize = Math.min(PIECE_SIZE, link.welcome.maxFrame - 4);
  }

  async put(path: string, skipIf: (entry: DiskEntry) => Promise<boolean>): Promise<PutOutcome> {
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
    try {
      const before = await settledStat(fd);
      if (!before) return { status: "changed" };
      const entry = diskEntry(path, before);
      if (entry?.kind !== "file") return { status: "vanished" };
      if (await skipIf(entry)) return { status: "unchanged" };
      return entry.size <= this.pieceSize
        ? await this.sendSmall(fd, entry, before)
        : await this.sendLarge(fd, entry, before);
    } finally {
      closeSync(fd);
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

  /** A file of at most one piece: by reference when the server has it, else whole. */
  private async sendSmall(fd: number, entry: DiskEntry, before: Stats): Promise<PutOutcome> {
    const sent = await this.startSmall(fd, entry, before);
    if (!sent) return { status: "changed" };
    const { sha256, chunks, answer } = sent;
    if (!answer) return { status: "stored", entry, sha256, chunks, marks: null, sentBytes: 0 };
    await answer;
    return { status: "stored", entry, sha256, chunks, marks: null, sentBytes: entry.size };
  }

  /**
   * Read a small file and send it, by reference or whole; null when it changed while it
   * was read. Returns the answer to wait for (null: the server took the reference) without
   * waiting for it: an async function keeps its locals until it returns, so the file's
   * bytes, read here, would otherwise stay in memory until the ACK (200 such waits on files
   * of 1 MiB held 200 MiB, ad hoc).
   */
  private async startSmall(
    fd: number,
    entry: DiskEntry,
    before: Stats,
  ): Promise<{ sha256: Buffer; chunks: Buffer; answer: Promise<void> | null } | null> {
    const data = Buffer.allocUnsafe(entry.size);
    const bytesRead = entry.size > 0 ? readSync(fd, data, 0, entry.size, 0) : 0;
    if (bytesRead !== entry.size || !sameFile(before, fstatSync(fd))) return null;
    const header = { ...entry, sha256: sha256(data) };
    const list = new ChunkList(4);
    for (const chunk of chunkBuffer(data)) list.push(sha256(chunk.data), chunk.length);
    const chunks = list.stored();
    if (await this.putByReference(header)) return { sha256: header.sha256, chunks, answer: null };
    const request = this.link.open();
    const conn = this.link.conn;
    const { path, size, mtimeMs, mode } = entry;
    conn.send(MessageType.PUT_BEGIN, request.id, encode.putBegin({ path, size, mtimeMs, mode }));
    if (size > 0) conn.send(MessageType.PUT_DATA, request.id, data);
    conn.send(MessageType.PUT_END, request.id, encode.putEnd({ sha256: header.sha256 }));
    this.reporter.emit({ kind: "file-start", path, size });
    return { sha256: header.sha256, chunks, answer: request.answer };
  }

  /**
   * PUT_REF when the state says the server holds this content; true when the server
   * took it. A server that no longer holds it (pruned) is believed, and false returned.
   */
  private async putByReference(header: FileHeader): Promise<boolean> {
    if (!this.state.knowsContent(header.sha256)) return false;
    const request = this.link.open();
    this.link.conn.send(MessageType.PUT_REF, request.id, encodeHistory.putRef(header));
    try {
      await request.answer;
      return true;
    } catch (error) {
      if (!(error instanceof RemoteError) || error.code !== "KW_CONTENT_UNKNOWN") throw error;
      this.state.forgetContent(header.sha256);
      return false;
    }
  }

  /** A larger file: chunked, then only the chunks the server lacks travel. */
  private async sendLarge(fd: number, entry: DiskEntry, before: Stats): Promise<PutOutcome> {
    // One large file at a time: its chunks, not several files' buffers, fill the link.
    // The next one is chunked meanwhile (chunk passes run one at a time, see chunkFile).
    const previous = this.streaming;
    let done!: () => void;
    this.streaming = new Promise<void>((resolve) => {
      done = resolve;
    });
    try {
      const record = this.state.get(entry.path);
      const guide = record?.kind === "file" ? recordedChunks(record) : null;
      let base =
        record?.kind === "file" && guide && this.state.knowsContent(record.sha256)
          ? { sha256: record.sha256, chunks: guide }
          : null;
      let scanned: { chunks: ChunkList; sha256: Buffer } | null;
      if (base && usableGuide(base.chunks) && this.link.welcome.version >= 5) {
        await previous;
        const streamed = await this.streamEdit(fd, entry, before, base);
        if ("status" in streamed) return streamed;
        // The server would not take the edit on this base: the whole manifest, without it.
        scanned = streamed.retry;
        base = null;
      } else {
        scanned = await this.chunkFile(fd, entry.size, guide);
        await previous;
      }
      if (!scanned || !sameFile(before, fstatSync(fd))) return { status: "changed" };
      const header = { ...entry, sha256: scanned.sha256 };
      const chunks = scanned.chunks.stored();
      const marks = scanned.chunks.storedMarks();
      if (await this.putByReference(header)) {
        return { status: "stored", entry, sha256: header.sha256, chunks, marks, sentBytes: 0 };
      }
      let sent: number | null;
      try {
        try {
          sent = await this.sendManifest(fd, header, scanned.chunks, base);
        } catch (error) {
          const retry =
            error instanceof RemoteError && ["KW_CONTENT_UNKNOWN", "KW_FILE_TOO_LARGE"].includes(error.code);
          if (!(base && retry)) throw error;
          // The server no longer holds the base (pruned), or has no room for the base's chunk
          // list as well: describe the file from scratch.
          if (error.code === "KW_CONTENT_UNKNOWN") this.state.forgetContent(base.sha256);
          sent = await this.sendManifest(fd, header, scanned.chunks, null);
        }
      } catch (error) {
        // A chunk read again for sending no longer matched its hash, or the version's hash
        // was not the file's (a fingerprint lied): the server refused it.
        if (error instanceof RemoteError && error.code === "KW_HASH_MISMATCH")
          return this.refused(entry.path);
        throw error;
      }
      if (sent === null) return { status: "changed" };
      return { status: "stored", entry, sha256: header.sha256, chunks, marks, sentBytes: sent };
    } finally {
      done();
    }
  }

  /**
   * Read the whole file once: its chunks with their hashes, and its SHA-256 (guided by the
   * chunks of the version before, `guide`, when there is one: see rechunk). Files are
   * chunked one at a time in this process: the hashing thread takes one stream at a time.
   */
  private chunkFile(
    fd: number,
    size: number,
    guide: ChunkList | null,
    onChunk?: OnChunk,
  ): Promise<{ chunks: ChunkList; sha256: Buffer } | null> {
    return withStreamHasher(async (hasher) => {
      if (guide && usableGuide(guide)) {
        return rechunk((buffer, position) => readAt(fd, buffer, position), size, guide, hasher, onChunk);
      }
      if (onChunk) throw new Error("chunks are told as they are found only when a guide is used");
      const fingerprint = await fingerprints();
      const chunker = new Chunker();
      // Lengths and fingerprints as the chunks are cut, the ids from the hashing thread at
      // the end. Fingerprints here, on this thread: it waits for the hashing thread's two
      // SHA-256 passes anyway, and has each chunk whole.
      const chunks = new ChunkList(Math.floor(size / DEFAULT_CHUNK_PARAMS.avgSize) + 1, fingerprint !== null);
      const read = async (at: number) => {
        const piece = hasher.pieceBuffer(Math.min(READ_SIZE, size - at));
        return piece.subarray(0, await readAt(fd, piece, at));
      };
      // The next piece is read while this one is chunked, and hashed on another thread.
      let reading: Promise<Buffer> | null = size > 0 ? read(0) : null;
      let offset = 0;
      try {
        while (reading) {
          const data = await reading;
          reading = null;
          if (data.length === 0) return null; // shrank under us
          offset += data.length;
          if (offset < size) reading = read(offset);
          const cutEnds: number[] = [];
          for (const chunk of chunker.push(data)) {
            chunks.push(NO_ID, chunk.length, fingerprint?.(chunk.data));
            cutEnds.push(chunk.offset + chunk.length);
          }
          await hasher.push(data, cutEnds);
        }
      } finally {
        // The caller closes the file once we are done: no read may still be on its way then.
        await reading?.catch(() => {});
      }
      const last = chunker.finish();
      if (last) chunks.push(NO_ID, last.length, fingerprint?.(last.data));
      const hashes = await hasher.finish(offset);
      chunks.setIds(hashes.chunkIds);
      return { chunks, sha256: hashes.sha256 };
    });
  }

  /**
   * An edit of a file the server holds (version 5, docs/protocol.md section 14): its
   * manifest, as edits of `base`, travels while the file is read, and each chunk the server
   * asks for travels as soon as it asks. Returns the outcome; or, when the server would not
   * take the edit on this base (it no longer holds it, or has no room for its chunk list),
   * the file's chunks and hash as read, for the caller to send without a base.
   */
  private async streamEdit(
    fd: number,
    entry: DiskEntry,
    before: Stats,
    base: { sha256: Buffer; chunks: ChunkList },
  ): Promise<PutOutcome | { retry: { chunks: ChunkList; sha256: Buffer } | null }> {
    const conn = this.link.conn;
    const { path, size, mtimeMs, mode } = entry;
    /** The chunks found so far (rechunk's list, as it grows), and where each starts in the file. */
    let found = new ChunkList(1);
    const offsets: number[] = [];
    let position = 0;
    /** Chunks the server asked for (NEED), in its order; and the bases offered (BASIS). */
    const queue: number[] = [];
    let head = 0;
    const bases = new Map<number, Basis>();
    let sending: Promise<void> | null = null;
    let sendError: unknown = null;
    let stopped = false;
    let shrank = false;
    let sent = 0;
    let refusal: unknown = null;
    let allListed!: () => void;
    const listed = new Promise<void>((resolve) => {
      allListed = resolve;
    });

    const sendAsked = async (): Promise<void> => {
      while (head < queue.length && !stopped && refusal === null && !this.link.isLost) {
        const index = queue[head++] as number;
        const length = found.lengthOf(index);
        const data = Buffer.allocUnsafe(length);
        if ((await readAt(fd, data, offsets[index] as number)) !== length) {
          shrank = true;
          return;
        }
        if (stopped || refusal !== null || this.link.isLost) return;
        const basis = bases.get(index);
        bases.delete(index);
        sent += await this.sendChunk(request.id, index, data, basis);
        this.reporter.emit({ kind: "file-progress", path, bytes: sent, size });
      }
    };
    /** Wait until no chunk is being sent (after `stopped`, none will be). */
    const settleSending = async (): Promise<void> => {
      while (sending) await sending;
    };

    const request = this.link.open(
      manifestAnswers("a streamed manifest", bases, (need) => {
        for (const [start, count] of need.ranges) {
          if (start + count > found.length) {
            throw new KeepwatchError(
              "KW_UNEXPECTED_MESSAGE",
              `The server asked for chunk ${start + count - 1} of a manifest that so far has ${found.length}.`,
            );
          }
          for (let i = start; i < start + count; i++) queue.push(i);
        }
        sending ??= sendAsked()
          .catch((error: unknown) => {
            sendError ??= error;
          })
          .finally(() => {
            sending = null;
          });
        if (need.last) allListed();
      }),
    );
    request.answer.catch((error: unknown) => {
      refusal = error;
    });

    conn.send(
      MessageType.MANIFEST_STREAM,
      request.id,
      encodeHistory.manifestStream({
        path,
        size,
        mtimeMs,
        mode,
        base: base.sha256,
        maxChunks: Math.min(MAX_CHUNKS_PER_FILE, Math.floor(size / DEFAULT_CHUNK_PARAMS.minSize) + 1),
      }),
    );
    this.reporter.emit({ kind: "file-start", path, size });
    const diff = new ManifestDiff(base.chunks);
    /** File bytes whose ops have not travelled; chunks since the last new one among them (−1: none). */
    let unsent = 0;
    let sinceNew = -1;
    const sendOps = async (): Promise<void> => {
      const ops = diff.take();
      if (refusal !== null || this.link.isLost) return;
      for (const payload of encodeHistory.manifestData(ops, this.link.welcome.maxFrame)) {
        await conn.sendAndWait(MessageType.MANIFEST_DATA, request.id, payload);
      }
    };
    let scanned: { chunks: ChunkList; sha256: Buffer } | null = null;
    let closeSent = false;
    try {
      scanned = await this.chunkFile(fd, size, base.chunks, async (chunks) => {
        found = chunks;
        const index = chunks.length - 1;
        const length = chunks.lengthOf(index);
        offsets.push(position);
        position += length;
        if (diff.push(chunks, index)) sinceNew = 0;
        else if (sinceNew >= 0) sinceNew++;
        unsent += length;
        if (unsent >= STREAM_STEP_BYTES || (sinceNew >= STREAM_NEW_AFTER && unsent >= STREAM_NEW_BYTES)) {
          unsent = 0;
          sinceNew = -1;
          await sendOps();
        }
      });
      if (scanned && sameFile(before, fstatSync(fd)) && refusal === null && !this.link.isLost) {
        await sendOps();
        conn.send(
          MessageType.MANIFEST_CLOSE,
          request.id,
          encodeHistory.manifestClose({ sha256: scanned.sha256, chunkCount: found.length }),
        );
        closeSent = true;
        // Every chunk is listed (NEED last), or the server refused the request.
        await Promise.race([listed, request.answer]).catch(() => {});
        await settleSending();
        if (!shrank && sendError === null) await request.answer.catch(() => {});
      }
    } finally {
      stopped = true;
      await settleSending();
    }
    if (sendError !== null) throw sendError;
    if (this.link.isLost) await request.answer;
    // A request refused before MANIFEST_CLOSE, or not closed, or closed with a chunk that
    // could not be read again, is still open on the server: PUT_ABORT ends it (answered by
    // ACK, or by nothing when the server had refused it).
    if (!closeSent || (shrank && refusal === null)) {
      conn.send(
        MessageType.PUT_ABORT,
        request.id,
        encode.putAbort({ reason: "the file changed while it was read" }),
      );
      await request.answer.catch(() => {});
    }
    if (refusal instanceof RemoteError) {
      // A chunk read again for sending no longer matched its hash (the file changed), or
      // the version's hash was not the file's (a fingerprint lied).
      if (refusal.code === "KW_HASH_MISMATCH") return this.refused(entry.path);
      if (refusal.code === "KW_CONTENT_UNKNOWN" || refusal.code === "KW_FILE_TOO_LARGE") {
        if (refusal.code === "KW_CONTENT_UNKNOWN") this.state.forgetContent(base.sha256);
        return { retry: scanned };
      }
    }
    if (refusal !== null) throw refusal;
    if (closeSent && !shrank && scanned) {
      return {
        status: "stored",
        entry,
        sha256: scanned.sha256,
        chunks: found.stored(),
        marks: found.storedMarks(),
        sentBytes: sent,
      };
    }
    return { status: "changed" };
  }

  /**
   * The server refused a version of `path` as not matching its hash: the file changed while
   * it was read, or a chunk's fingerprint lied. Either way, it is read again later, each
   * chunk with its SHA-256.
   */
  private refused(path: string): PutOutcome {
    this.state.forgetMarks(path);
    return { status: "changed" };
  }

  /**
   * Send chunk `index` of request `id`, asked for by the server: as a delta of `basis`
   * (CHUNK_DELTA) when that is shorter, else whole (CHUNK). Returns the content bytes sent.
   */
  private async sendChunk(
    id: number,
    index: number,
    data: Buffer,
    basis: Basis | undefined,
  ): Promise<number> {
    const ops = basis ? deltaOps(data, basis) : null;
    if (ops && ops.length < data.length) {
      await this.link.conn.sendAndWait(MessageType.CHUNK_DELTA, id, encodeHistory.chunkDelta(index, ops));
      return ops.length;
    }
    await this.link.conn.sendAndWait(MessageType.CHUNK, id, encodeHistory.chunkParts(index, data));
    return data.length;
  }

  /**
   * Send the manifest (as edits of `base` when given), then the chunks the server asks
   * for, re-read from disk and checked against their hashes. Returns the bytes sent, or
   * null when the file changed meanwhile (the request is then aborted).
   */
  private async sendManifest(
    fd: number,
    header: FileHeader,
    chunks: ChunkList,
    base: { sha256: Buffer; chunks: ChunkList } | null,
  ): Promise<number | null> {
    const needed: number[] = [];
    /** Bases the server offered for needed chunks (BASIS, version 4): they travel as deltas. */
    const bases = new Map<number, Basis>();
    let needDone!: () => void;
    const allNeeds = new Promise<void>((resolve) => {
      needDone = resolve;
    });
    // A version-3 server offers no BASIS (and takes no CHUNK_DELTA).
    const offered = this.link.welcome.version >= 4 ? bases : null;
    const request = this.link.open(
      manifestAnswers("a manifest", offered, (need) => {
        for (const [start, count] of need.ranges) for (let i = start; i < start + count; i++) needed.push(i);
        if (need.last) needDone();
      }),
    );
    const conn = this.link.conn;
    const diff = new ManifestDiff(base?.chunks ?? null);
    conn.send(
      MessageType.MANIFEST_BEGIN,
      request.id,
      encodeHistory.manifestBegin({
        ...header,
        base: base?.sha256 ?? Buffer.alloc(0),
        chunkCount: chunks.length,
      }),
    );
    // The ops travel a batch at a time: a huge file's manifest is never whole in memory.
    for (let i = 0; i < chunks.length; i++) {
      diff.push(chunks, i);
      if (diff.pending < MANIFEST_BATCH_OPS && i < chunks.length - 1) continue;
      for (const payload of encodeHistory.manifestData(diff.take(), this.link.welcome.maxFrame)) {
        await conn.sendAndWait(MessageType.MANIFEST_DATA, request.id, payload);
      }
    }
    conn.send(MessageType.MANIFEST_END, request.id);
    this.reporter.emit({ kind: "file-start", path: header.path, size: header.size });
    // Either the server lists what it needs, or it refuses (the answer settles first).
    await Promise.race([allNeeds, request.answer]);
    let sent = 0;
    let refused = false;
    request.answer.catch(() => {
      refused = true;
    });
    // The server checks every chunk against its hash (and refuses the file with
    // KW_HASH_MISMATCH when the file changed since it was chunked): no need to hash it here.
    for await (const piece of neededChunks(fd, chunks, needed)) {
      // The server refused the request (it then ignores the chunks on their way), or left.
      if (refused || this.link.isLost) break;
      if (piece === null) {
        conn.send(
          MessageType.PUT_ABORT,
          request.id,
          encode.putAbort({ reason: "the file changed while it was read" }),
        );
        await request.answer.catch(() => {});
        return null;
      }
      sent += await this.sendChunk(request.id, piece.index, piece.data, bases.get(piece.index));
      this.reporter.emit({ kind: "file-progress", path: header.path, bytes: sent, size: header.size });
    }
    await request.answer;
    return sent;
  }
}
