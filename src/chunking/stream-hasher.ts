// The SHA-256 of a whole stream and of each of its chunks, computed on a worker thread
// while the caller's thread reads and chunks the next piece: chunking and hashing then take
// a core each instead of sharing one (docs/performance.md). The caller sends each piece
// after chunking it, with the positions where chunks ended in it; the worker hashes the
// bytes once into the stream's hash and, cut by cut, into the chunks' hashes.

import { createHash } from "node:crypto";
import { Worker } from "node:worker_threads";

/** Pieces sent to the worker and not yet hashed; sending more waits (bounds memory). */
const PIECES_IN_FLIGHT = 3;
/** The largest piece a hasher takes. */
export const PIECE_BYTES = 1024 * 1024;

export interface StreamHashes {
  /**
   * The SHA-256 of each chunk, in stream order, packed: 32 bytes each (not a Buffer per id,
   * an object and an allocation each, on the hashing thread and then on this one).
   */
  chunkIds: Buffer;
  /** The SHA-256 of the whole stream. */
  sha256: Buffer;
}

/** Hashes one stream at a time; `start` begins the next one. */
export interface StreamHasher {
  start(): void;
  /**
   * A buffer of `size` bytes (at most PIECE_BYTES) for the caller to read the next piece
   * into; its memory is reused once the hasher is done with it.
   */
  pieceBuffer(size: number): Buffer;
  /**
   * The next piece of the stream (from `pieceBuffer`, possibly shortened), and the stream
   * positions where chunks ended within it (ascending), or null when the caller hashes the
   * chunks itself and wants the stream's hash only (then `finish` gives no chunk hashes).
   * The piece must not be used afterwards: it may be handed to another thread. Resolves
   * when another piece may be sent.
   */
  push(piece: Buffer, cutEnds: readonly number[] | null): Promise<void>;
  /** The stream ended at `end` (the last chunk's end): its hashes. */
  finish(end: number): Promise<StreamHashes>;
  /** Let the thread go (the hasher cannot be used again). */
  close(): Promise<void>;
}

/** The state of one stream's hashing (see CUT_HASHING). */
interface CutHashing {
  update(piece: Uint8Array, cutEnds: readonly number[] | null): void;
  /** The hashes, and a fresh start; throws when the stream did not end at `end`. */
  finish(end: number): StreamHashes;
}

// The hashing both hashers share, as the body of a function of `createHash` that returns a
// CutHashing: bytes go into the stream's hash and the current chunk's, whose digest is taken
// at each cut. It is source text because the worker thread runs it as given (a worker
// started from a module file would need that file compiled, and under tsx, in the tests and
// `npm start`, worker threads do not get its TypeScript loader); this thread builds the same
// function from it, so both run the very same code.
const CUT_HASHING = `
  let whole = createHash("sha256");
  let chunk = createHash("sha256");
  let position = 0;
  let chunkBytes = 0;
  let ids = Buffer.alloc(32 * 256);
  let idCount = 0;
  const keep = (digest) => {
    if ((idCount + 1) * 32 > ids.length) {
      const more = Buffer.alloc(ids.length * 2);
      ids.copy(more);
      ids = more;
    }
    digest.copy(ids, idCount * 32);
    idCount++;
  };
  return {
    update(piece, cutEnds) {
      whole.update(piece);
      if (cutEnds === null) {
        position += piece.length;
        return;
      }
      let from = 0;
      for (const end of cutEnds) {
        const to = end - position;
        chunk.update(piece.subarray(from, to));
        keep(chunk.digest());
        chunk = createHash("sha256");
        chunkBytes = 0;
        from = to;
      }
      chunk.update(piece.subarray(from));
      chunkBytes += piece.length - from;
      position += piece.length;
    },
    finish(end) {
      if (end !== position) throw new Error("the stream ends at " + end + ", not at " + position);
      if (chunkBytes > 0) keep(chunk.digest());
      const result = { chunkIds: ids.subarray(0, idCount * 32), sha256: whole.digest() };
      whole = createHash("sha256");
      chunk = createHash("sha256");
      position = 0;
      chunkBytes = 0;
      ids = Buffer.alloc(32 * 256);
      idCount = 0;
      return result;
    },
  };
`;

const cutHashing = new Function("createHash", CUT_HASHING) as (hash: typeof createHash) => CutHashing;

/** Hashes on the caller's thread (where no worker thread can be started). */
export class InlineStreamHasher implements StreamHasher {
  private hasher = cutHashing(createHash);
  /** Two, taken in turn: the caller reads the next piece while it chunks this one. */
  private readonly buffers = [Buffer.allocUnsafe(PIECE_BYTES), Buffer.allocUnsafe(PIECE_BYTES)];
  private turn = 0;

  pieceBuffer(size: number): Buffer {
    if (size > PIECE_BYTES) throw new RangeError(`a piece holds at most ${PIECE_BYTES} bytes, not ${size}`);
    return (this.buffers[this.turn++ % 2] as Buffer).subarray(0, size);
  }

  start(): void {
    this.hasher = cutHashing(createHash);
  }

  async push(piece: Buffer, cutEnds: readonly number[] | null): Promise<void> {
    this.hasher.update(piece, cutEnds);
  }

  async finish(end: number): Promise<StreamHashes> {
    return this.hasher.finish(end);
  }

  async close(): Promise<void> {}
}

// The worker's code (CommonJS, run as given: see CUT_HASHING).
const WORKER_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
function cutHashing(createHash) {${CUT_HASHING}}
let hashing = cutHashing(createHash);
parentPort.on("message", (message) => {
  if (message.kind === "start") {
    hashing = cutHashing(createHash);
  } else if (message.kind === "piece") {
    hashing.update(new Uint8Array(message.bytes, message.offset, message.length), message.cutEnds);
    parentPort.postMessage({ kind: "hashed", bytes: message.bytes }, [message.bytes]);
  } else if (message.kind === "finish") {
    let hashes;
    try {
      hashes = hashing.finish(message.end);
    } catch (error) {
      hashing = cutHashing(createHash);
      parentPort.postMessage({ kind: "failed", message: error.message });
      return;
    }
    const packed = hashes.chunkIds;
    // The ids' memory is handed over, not copied (it is the worker's own, not pooled).
    parentPort.postMessage(
      { kind: "finished", ids: packed.buffer, idsOffset: packed.byteOffset, count: packed.length / 32, sha256: hashes.sha256 },
      [packed.buffer],
    );
  }
});
`;

interface Finished {
  kind: "finished";
  ids: ArrayBuffer;
  idsOffset: number;
  count: number;
  sha256: Uint8Array;
}

type FromWorker = { kind: "hashed"; bytes: ArrayBuffer } | Finished | { kind: "failed"; message: string };

/** Hashes on a worker thread. */
export class WorkerStreamHasher implements StreamHasher {
  private readonly worker: Worker;
  private inFlight = 0;
  private roomWaiter: (() => void) | null = null;
  private finishWaiter: { resolve: (h: StreamHashes) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  /** Piece memory the worker has given back, for the next pieces. */
  private readonly free: ArrayBuffer[] = [];

  constructor() {
    this.worker = new Worker(WORKER_SOURCE, { eval: true });
    this.worker.unref();
    this.worker.on("message", (message: FromWorker) => this.onMessage(message));
    this.worker.on("error", (error) => this.fail(error));
    this.worker.on("exit", () => this.fail(new Error("the hashing thread stopped")));
  }

  start(): void {
    // A stream given up half way leaves the worker's hashes begun: they start again.
    this.worker.postMessage({ kind: "start" });
  }

  pieceBuffer(size: number): Buffer {
    if (size > PIECE_BYTES) throw new RangeError(`a piece holds at most ${PIECE_BYTES} bytes, not ${size}`);
    const memory = this.free.pop() ?? new ArrayBuffer(PIECE_BYTES);
    return Buffer.from(memory, 0, size);
  }

  /** Whether the thread failed (the hasher is of no more use). */
  get failed(): boolean {
    return this.failure !== null;
  }

  async push(piece: Buffer, cutEnds: readonly number[] | null): Promise<void> {
    if (this.failure) throw this.failure;
    // The piece's memory (from pieceBuffer) is handed over, not copied, and comes back.
    const memory = piece.buffer;
    if (!(memory instanceof ArrayBuffer) || memory.byteLength !== PIECE_BYTES) {
      throw new Error("a piece must come from pieceBuffer");
    }
    this.inFlight++;
    this.worker.postMessage(
      { kind: "piece", bytes: memory, offset: piece.byteOffset, length: piece.byteLength, cutEnds },
      [memory],
    );
    if (this.inFlight >= PIECES_IN_FLIGHT) {
      await new Promise<void>((resolve) => {
        this.roomWaiter = resolve;
      });
      if (this.failure) throw this.failure;
    }
  }

  finish(end: number): Promise<StreamHashes> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.finishWaiter = { resolve, reject };
      this.worker.postMessage({ kind: "finish", end });
    });
  }

  async close(): Promise<void> {
    this.failure ??= new Error("the hasher was closed");
    await this.worker.terminate();
  }

  private onMessage(message: FromWorker): void {
    if (message.kind === "hashed") {
      if (this.free.length <= PIECES_IN_FLIGHT) this.free.push(message.bytes);
      this.inFlight--;
      if (this.inFlight < PIECES_IN_FLIGHT && this.roomWaiter) {
        const resolve = this.roomWaiter;
        this.roomWaiter = null;
        resolve();
      }
      return;
    }
    const waiter = this.finishWaiter;
    this.finishWaiter = null;
    if (message.kind === "failed") {
      waiter?.reject(new Error(message.message));
      return;
    }
    const chunkIds = Buffer.from(message.ids, message.idsOffset, message.count * 32);
    waiter?.resolve({ chunkIds, sha256: Buffer.from(message.sha256) });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const room = this.roomWaiter;
    this.roomWaiter = null;
    room?.();
    const waiter = this.finishWaiter;
    this.finishWaiter = null;
    waiter?.reject(this.failure);
  }
}

/** A worker-thread hasher, or one on this thread when no worker can be started. */
export function createStreamHasher(): StreamHasher {
  try {
    return new WorkerStreamHasher();
  } catch {
    return new InlineStreamHasher();
  }
}

let shared: StreamHasher | null = null;
let sharedTail: Promise<unknown> = Promise.resolve();

/**
 * Run `work` with this process's hasher (one worker thread for the whole process, streams
 * one after the other). A hasher whose thread failed is replaced by one on this thread,
 * and `work` runs again with it.
 */
export function withStreamHasher<T>(work: (hasher: StreamHasher) => Promise<T>): Promise<T> {
  const run = sharedTail.then(async () => {
    shared ??= createStreamHasher();
    const hasher = shared;
    hasher.start();
    try {
      return await work(hasher);
    } catch (error) {
      if (!(hasher instanceof WorkerStreamHasher) || !hasher.failed) throw error;
      await hasher.close().catch(() => {});
      shared = new InlineStreamHasher();
      shared.start();
      return work(shared);
    }
  });
  sharedTail = run.catch(() => {});
  return run;
}
