// The messages that carry chunked content and read the history (protocol version 2):
// content by reference (PUT_REF), chunk manifests as edits of a base content
// (MANIFEST_*), the server's list of chunks it lacks (NEED), the chunks (CHUNK), and the
// read side (LIST, RESTORE, their ENTRY and FILE_DATA answers); since version 4 also the
// delta inside a chunk (BASIS, CHUNK_DELTA). docs/protocol.md is the specification.

import { blockCount, SUM_BYTES } from "../chunking/block-delta.js";
import { CHUNK_SIZE_LIMIT } from "../chunking/fastcdc.js";
import { ProtocolError } from "../errors.js";
import { FieldReader, FieldWriter } from "./fields.js";
import { MAX_WIRE_PATH_BYTES, SHA256_BYTES } from "./messages.js";

/** Most chunks one content may have (64 GiB at the largest chunk size of 256 KiB... and more at 64 KiB average). */
export const MAX_CHUNKS_PER_FILE = 4 * 1024 * 1024;

/** The attributes every file-writing request carries. */
export interface FileHeader {
  path: string;
  size: number;
  mtimeMs: number;
  mode: number;
  sha256: Buffer;
}

export interface ManifestBegin extends FileHeader {
  /** SHA-256 of a content the server holds, whose chunk list the edits refer to; empty for none. */
  base: Buffer;
  chunkCount: number;
}

/**
 * MANIFEST_STREAM (version 5): a manifest sent while the file is still being read, so
 * without the file's SHA-256 and exact chunk count, which MANIFEST_CLOSE then carries.
 */
export interface ManifestStream {
  path: string;
  size: number;
  mtimeMs: number;
  mode: number;
  /** SHA-256 of a content the server holds, whose chunk list the edits refer to; empty for none. */
  base: Buffer;
  /** The most chunks the manifest will describe (the server reserves room for them). */
  maxChunks: number;
}

/** MANIFEST_CLOSE (version 5): what a streamed manifest could say only at its end. */
export interface ManifestClose {
  sha256: Buffer;
  chunkCount: number;
}

/** One edit of a manifest: take `count` chunks of the base from `start`, or one new chunk. */
export type ManifestOp =
  | { op: "copy"; start: number; count: number }
  | { op: "new"; length: number; id: Buffer };

/**
 * BASIS (version 4): the checksums of the blocks of a chunk the server holds, offered as
 * the basis of a delta for the needed chunk `index` (see chunking/block-delta.ts).
 */
export interface Basis {
  index: number;
  blockSize: number;
  /** The basis chunk's length in bytes. */
  length: number;
  /** SUM_BYTES per block: weak u32, then the strong checksum. */
  sums: Buffer;
}

/** The block sizes a BASIS may use. */
export const MIN_DELTA_BLOCK = 64;
export const MAX_DELTA_BLOCK = 64 * 1024;

export interface NeedRanges {
  /** True on the last NEED frame of the request. */
  last: boolean;
  /** Chunk indices (of the new chunk list) the server lacks, as [start, count] pairs. */
  ranges: [number, number][];
}

export const EntryKind = { file: 1, dir: 2, deleted: 3 } as const;
export type EntryKindName = keyof typeof EntryKind;

export interface Entry {
  path: string;
  kind: EntryKindName;
  size: number;
  mtimeMs: number;
  mode: number;
  /** Files only; empty otherwise. */
  sha256: Buffer;
  versionId: number;
  /** When the server committed this version (ms since the epoch). */
  time: number;
}

/** The `time` of LIST and RESTORE that means "now". */
export const TIME_NOW = -1;

export interface ListRequest {
  /** Set-relative path; "" for the whole set. */
  path: string;
  /** The moment to look at (ms since the epoch); -1 for now. */
  time: number;
  /** 0: the tree at `time`; 1: every version of `path` and below (time ignored). */
  mode: 0 | 1;
}

export interface RestoreRequest {
  path: string;
  time: number;
}

const OP_COPY = 1;
const OP_NEW = 2;
/** Bytes of an encoded op: tag + two u32, or tag + u32 + hash. */
const OP_COPY_BYTES = 9;
const OP_NEW_BYTES = 5 + SHA256_BYTES;

function fileHeader(w: FieldWriter, m: FileHeader): FieldWriter {
  return w.str(m.path).u64(m.size).f64(m.mtimeMs).u32(m.mode).bytes(m.sha256);
}

function readFileHeader(r: FieldReader): FileHeader {
  return {
    path: r.str("path", MAX_WIRE_PATH_BYTES),
    size: r.u64("size"),
    mtimeMs: r.time("mtimeMs"),
    mode: r.u32("mode"),
    sha256: r.fixed("sha256", SHA256_BYTES),
  };
}

const kindNames = new Map<number, EntryKindName>(
  Object.entries(EntryKind).map(([name, value]) => [value, name as EntryKindName]),
);

export const encodeHistory = {
  putRef(m: FileHeader): Buffer {
    return fileHeader(new FieldWriter(), m).finish();
  },
  manifestBegin(m: ManifestBegin): Buffer {
    return fileHeader(new FieldWriter(), m).bytes(m.base).u32(m.chunkCount).finish();
  },
  manifestStream(m: ManifestStream): Buffer {
    return new FieldWriter()
      .str(m.path)
      .u64(m.size)
      .f64(m.mtimeMs)
      .u32(m.mode)
      .bytes(m.base)
      .u32(m.maxChunks)
      .finish();
  },
  manifestClose(m: ManifestClose): Buffer {
    return new FieldWriter().bytes(m.sha256).u32(m.chunkCount).finish();
  },
  /** Ops packed into payloads of at most `maxPayload` bytes; no op is split. */
  manifestData(ops: ManifestOp[], maxPayload: number): Buffer[] {
    const payloads: Buffer[] = [];
    let current: Buffer[] = [];
    let size = 0;
    for (const op of ops) {
      const bytes = Buffer.allocUnsafe(op.op === "copy" ? OP_COPY_BYTES : OP_NEW_BYTES);
      if (op.op === "copy") {
        bytes.writeUInt8(OP_COPY, 0);
        bytes.writeUInt32BE(op.start, 1);
        bytes.writeUInt32BE(op.count, 5);
      } else {
        bytes.writeUInt8(OP_NEW, 0);
        bytes.writeUInt32BE(op.length, 1);
        op.id.copy(bytes, 5);
      }
      if (size + bytes.length > maxPayload) {
        payloads.push(Buffer.concat(current, size));
        current = [];
        size = 0;
      }
      current.push(bytes);
      size += bytes.length;
    }
    if (size > 0) payloads.push(Buffer.concat(current, size));
    return payloads;
  },
  need(m: NeedRanges): Buffer {
    const ranges = Buffer.allocUnsafe(m.ranges.length * 8);
    m.ranges.forEach(([start, count], i) => {
      ranges.writeUInt32BE(start, i * 8);
      ranges.writeUInt32BE(count, i * 8 + 4);
    });
    return new FieldWriter()
      .u8(m.last ? 1 : 0)
      .bytes(ranges)
      .finish();
  },
  /** A CHUNK payload: the chunk's index in the new list, then its bytes. */
  chunk(index: number, data: Buffer): Buffer {
    return Buffer.concat(encodeHistory.chunkParts(index, data), 4 + data.length);
  },
  /** The same payload as `chunk`, in two parts: the index, and `data` itself (not copied). */
  chunkParts(index: number, data: Buffer): [Buffer, Buffer] {
    const head = Buffer.allocUnsafe(4);
    head.writeUInt32BE(index, 0);
    return [head, data];
  },
  /** A CHUNK_DELTA payload: the chunk's index in the new list, then the delta's ops. */
  chunkDelta(index: number, ops: Buffer): Buffer {
    return encodeHistory.chunk(index, ops);
  },
  basis(m: Basis): Buffer {
    return new FieldWriter().u32(m.index).u32(m.blockSize).u32(m.length).bytes(m.sums).finish();
  },
  list(m: ListRequest): Buffer {
    return new FieldWriter().str(m.path).f64(m.time).u8(m.mode).finish();
  },
  entry(m: Entry): Buffer {
    return new FieldWriter()
      .str(m.path)
      .u8(EntryKind[m.kind])
      .u64(m.size)
      .f64(m.mtimeMs)
      .u32(m.mode)
      .bytes(m.sha256)
      .u64(m.versionId)
      .f64(m.time)
      .finish();
  },
  restore(m: RestoreRequest): Buffer {
    return new FieldWriter().str(m.path).f64(m.time).finish();
  },
};

export const decodeHistory = {
  putRef(payload: Buffer): FileHeader {
    const r = new FieldReader(payload, "PUT_REF");
    const m = readFileHeader(r);
    r.end();
    return m;
  },
  manifestBegin(payload: Buffer): ManifestBegin {
    const r = new FieldReader(payload, "MANIFEST_BEGIN");
    const header = readFileHeader(r);
    const base = r.bytes("base", SHA256_BYTES);
    if (base.length !== 0 && base.length !== SHA256_BYTES) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        "The MANIFEST_BEGIN message's base must be empty or 32 bytes.",
      );
    }
    const chunkCount = r.u32("chunkCount");
    r.end();
    if (chunkCount > MAX_CHUNKS_PER_FILE) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `A manifest of ${chunkCount} chunks exceeds the limit of ${MAX_CHUNKS_PER_FILE}.`,
      );
    }
    return { ...header, base, chunkCount };
  },
  manifestStream(payload: Buffer): ManifestStream {
    const r = new FieldReader(payload, "MANIFEST_STREAM");
    const path = r.str("path", MAX_WIRE_PATH_BYTES);
    const size = r.u64("size");
    const mtimeMs = r.time("mtimeMs");
    const mode = r.u32("mode");
    const base = r.bytes("base", SHA256_BYTES);
    const maxChunks = r.u32("maxChunks");
    r.end();
    if (base.length !== 0 && base.length !== SHA256_BYTES) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        "The MANIFEST_STREAM message's base must be empty or 32 bytes.",
      );
    }
    if (maxChunks > MAX_CHUNKS_PER_FILE) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `A manifest of up to ${maxChunks} chunks exceeds the limit of ${MAX_CHUNKS_PER_FILE}.`,
      );
    }
    return { path, size, mtimeMs, mode, base, maxChunks };
  },
  manifestClose(payload: Buffer): ManifestClose {
    const r = new FieldReader(payload, "MANIFEST_CLOSE");
    const m = { sha256: r.fixed("sha256", SHA256_BYTES), chunkCount: r.u32("chunkCount") };
    r.end();
    return m;
  },
  manifestData(payload: Buffer): ManifestOp[] {
    const ops: ManifestOp[] = [];
    let offset = 0;
    while (offset < payload.length) {
      const tag = payload[offset];
      if (tag === OP_COPY && offset + OP_COPY_BYTES <= payload.length) {
        const count = payload.readUInt32BE(offset + 5);
        if (count === 0) throw new ProtocolError("KW_BAD_MESSAGE", "A manifest COPY op has a count of zero.");
        ops.push({ op: "copy", start: payload.readUInt32BE(offset + 1), count });
        offset += OP_COPY_BYTES;
      } else if (tag === OP_NEW && offset + OP_NEW_BYTES <= payload.length) {
        ops.push({
          op: "new",
          length: payload.readUInt32BE(offset + 1),
          id: Buffer.from(payload.subarray(offset + 5, offset + OP_NEW_BYTES)),
        });
        offset += OP_NEW_BYTES;
      } else {
        throw new ProtocolError(
          "KW_BAD_MESSAGE",
          `A MANIFEST_DATA message has a bad or cut op at byte ${offset}.`,
        );
      }
    }
    return ops;
  },
  need(payload: Buffer): NeedRanges {
    const r = new FieldReader(payload, "NEED");
    const last = r.u8("last");
    const raw = r.bytes("ranges", payload.length);
    r.end();
    if (last > 1 || raw.length % 8 !== 0) {
      throw new ProtocolError("KW_BAD_MESSAGE", "The NEED message is malformed.");
    }
    const ranges: [number, number][] = [];
    for (let i = 0; i < raw.length; i += 8) ranges.push([raw.readUInt32BE(i), raw.readUInt32BE(i + 4)]);
    return { last: last === 1, ranges };
  },
  /** A CHUNK payload, given in parts (payloadParts): its index, and its bytes in parts, not copied. */
  chunk(payload: readonly Buffer[]): { index: number; data: Buffer[] } {
    const data: Buffer[] = [];
    const head = Buffer.alloc(4);
    let headBytes = 0;
    for (const part of payload) {
      const use = Math.min(4 - headBytes, part.length);
      if (use > 0) {
        part.copy(head, headBytes, 0, use);
        headBytes += use;
      }
      if (use < part.length) data.push(use > 0 ? part.subarray(use) : part);
    }
    if (headBytes < 4)
      throw new ProtocolError("KW_BAD_MESSAGE", "A CHUNK message is shorter than its index.");
    return { index: head.readUInt32BE(0), data };
  },
  chunkDelta(payload: Buffer): { index: number; ops: Buffer } {
    if (payload.length < 4)
      throw new ProtocolError("KW_BAD_MESSAGE", "A CHUNK_DELTA message is shorter than its index.");
    return { index: payload.readUInt32BE(0), ops: payload.subarray(4) };
  },
  basis(payload: Buffer): Basis {
    const r = new FieldReader(payload, "BASIS");
    const index = r.u32("index");
    const blockSize = r.u32("blockSize");
    const length = r.u32("length");
    const sums = r.bytes("sums", payload.length);
    r.end();
    if (
      blockSize < MIN_DELTA_BLOCK ||
      blockSize > MAX_DELTA_BLOCK ||
      length === 0 ||
      length > CHUNK_SIZE_LIMIT ||
      sums.length !== blockCount(length, blockSize) * SUM_BYTES
    ) {
      throw new ProtocolError("KW_BAD_MESSAGE", "The BASIS message is malformed.");
    }
    return { index, blockSize, length, sums };
  },
  list(payload: Buffer): ListRequest {
    const r = new FieldReader(payload, "LIST");
    const path = r.str("path", MAX_WIRE_PATH_BYTES);
    const time = r.time("time");
    const mode = r.u8("mode");
    r.end();
    if (mode !== 0 && mode !== 1)
      throw new ProtocolError("KW_BAD_MESSAGE", `The LIST mode ${mode} is unknown.`);
    return { path, time, mode };
  },
  entry(payload: Buffer): Entry {
    const r = new FieldReader(payload, "ENTRY");
    const path = r.str("path", MAX_WIRE_PATH_BYTES);
    const kindNumber = r.u8("kind");
    const kind = kindNames.get(kindNumber);
    if (!kind) throw new ProtocolError("KW_BAD_MESSAGE", `The ENTRY kind ${kindNumber} is unknown.`);
    const m: Entry = {
      path,
      kind,
      size: r.u64("size"),
      mtimeMs: r.time("mtimeMs"),
      mode: r.u32("mode"),
      sha256: r.bytes("sha256", SHA256_BYTES),
      versionId: r.u64("versionId"),
      time: r.time("time"),
    };
    r.end();
    return m;
  },
  restore(payload: Buffer): RestoreRequest {
    const r = new FieldReader(payload, "RESTORE");
    const m = { path: r.str("path", MAX_WIRE_PATH_BYTES), time: r.time("time") };
    r.end();
    return m;
  },
};
