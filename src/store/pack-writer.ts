// Appends records to one new pack file through a buffer of a few MiB, so the disk sees big
// sequential writes. Bytes once written are never rewritten: the file only grows, and
// `sync` makes everything appended so far durable, file and folder entry alike.

import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { type FileHandle, mkdir, open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type Bytes, bytesOf, partsOf } from "../bytes.js";
import { ChunkCodecContext } from "./chunk-codec.js";
import {
  type ChunkCodecValue,
  crc32,
  encodePackHeader,
  encodeRecordHeader,
  PACK_HEADER_BYTES,
  PACK_ID_BYTES,
  RECORD_HEADER_BYTES,
} from "./pack-format.js";
import { syncFolder } from "./path-syncer.js";

/** Where a record sits in its pack. */
export interface RecordPlace {
  /** Offset of the record header in the pack file. */
  offset: number;
  codec: ChunkCodecValue;
  rawLength: number;
  storedLength: number;
}

/** The path of a pack, relative to the store folder: packs/<first 2 hex digits>/<32 hex digits>.pack. */
export function packPath(packId: Buffer): string {
  const hex = packId.toString("hex");
  return join("packs", hex.slice(0, 2), `${hex}.pack`);
}

/** The pack id a pack file name stands for, or undefined when the name is not one of ours. */
export function packIdFromName(name: string): Buffer | undefined {
  const match = /^([0-9a-f]{32})\.pack$/.exec(name);
  return match ? Buffer.from(match[1] as string, "hex") : undefined;
}

export class PackWriter {
  readonly id: Buffer;
  /** Relative to the store folder. */
  readonly path: string;
  private readonly absPath: string;
  private handle: FileHandle | undefined;
  private readonly buffer: Buffer;
  /** Bytes at the start of `buffer` not yet written to the file. */
  private used = 0;
  /** Bytes already written to the file. */
  private written = 0;
  /** True once the file and its folder entry have been fsynced. */
  private synced = false;
  private closed = false;

  /**
   * `reuse`, when given, is the buffer of a pack writer closed before (see `close`), of
   * `bufferBytes` or more: a new 4 MiB buffer per pack is 128 MiB of garbage per GiB stored.
   */
  constructor(
    private readonly storeFolder: string,
    bufferBytes: number,
    reuse?: Buffer,
  ) {
    this.id = randomBytes(PACK_ID_BYTES);
    this.path = packPath(this.id);
    this.absPath = join(storeFolder, this.path);
    const size = Math.max(bufferBytes, PACK_HEADER_BYTES);
    this.buffer = reuse && reuse.length >= size ? reuse : Buffer.allocUnsafe(size);
    encodePackHeader(this.id, this.buffer, 0);
    this.used = PACK_HEADER_BYTES;
  }

  /** Bytes the pack holds: written to the file and still buffered. */
  get size(): number {
    return this.written + this.used;
  }

  /** Compress and append a chunk (whole or in parts); returns where its record starts. */
  async appendChunk(id: Buffer, data: Bytes, codec: ChunkCodecContext): Promise<RecordPlace> {
    const length = bytesOf(partsOf(data));
    const room = RECORD_HEADER_BYTES + ChunkCodecContext.bound(length);
    if (room > this.buffer.length - this.used) await this.spill();
    // A chunk bigger than the buffer goes through a buffer of its own ("plus one chunk").
    const target = room <= this.buffer.length ? this.buffer : Buffer.allocUnsafe(room);
    const at = target === this.buffer ? this.used : 0;
    const encoded = codec.encode(data, target, at + RECORD_HEADER_BYTES);
    const stored = target.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + encoded.storedLength);
    encodeRecordHeader(
      {
        id,
        codec: encoded.codec,
        rawLength: length,
        storedLength: encoded.storedLength,
        storedCrc: crc32(stored),
      },
      target,
      at,
    );
    const offset = this.size;
    const recordLength = RECORD_HEADER_BYTES + encoded.storedLength;
    if (target === this.buffer) this.used += recordLength;
    else await this.writeOut(target.subarray(0, recordLength));
    return { offset, codec: encoded.codec, rawLength: length, storedLength: encoded.storedLength };
  }

  /** Append a record exactly as read from another pack (repacking); returns its offset. */
  async appendRecord(record: Buffer): Promise<number> {
    if (record.length > this.buffer.length - this.used) await this.spill();
    const offset = this.size;
    if (record.length <= this.buffer.length - this.used) {
      record.copy(this.buffer, this.used);
      this.used += record.length;
    } else {
      await this.writeOut(record);
    }
    return offset;
  }

  /**
   * The bytes at `offset` when they are still in the buffer (not yet in the file), else
   * undefined. A copy: the buffer is reused.
   */
  buffered(offset: number, length: number): Buffer | undefined {
    if (offset < this.written) return undefined;
    const start = offset - this.written;
    return Buffer.from(this.buffer.subarray(start, start + length));
  }

  /** Write out the buffer, fsync the file and, the first time, its folder entries. */
  async sync(): Promise<void> {
    await this.spill();
    const handle = await this.file();
    await handle.sync();
    if (!this.synced) {
      await syncFolder(dirname(this.absPath));
      await syncFolder(join(this.storeFolder, "packs"));
      this.synced = true;
    }
  }

  /**
   * Release the file; what was not synced may or may not be on disk. Returns the buffer, free
   * for the next pack writer: every write from it has finished, and `buffered` copies.
   */
  async close(): Promise<Buffer | undefined> {
    if (this.closed) return undefined;
    this.closed = true;
    await this.handle?.close();
    this.handle = undefined;
    return this.buffer;
  }

  private async spill(): Promise<void> {
    if (this.used === 0) return;
    await this.writeOut(this.buffer.subarray(0, this.used));
    this.used = 0;
  }

  /** Write `bytes` at the end of the file (the buffer must be empty or be `bytes`). */
  private async writeOut(bytes: Buffer): Promise<void> {
    const handle = await this.file();
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, this.written + done);
      done += bytesWritten;
    }
    this.written += bytes.length;
  }

  private async file(): Promise<FileHandle> {
    if (this.closed) throw new Error("the pack writer is closed");
    if (!this.handle) {
      await mkdir(dirname(this.absPath), { recursive: true });
      this.handle = await open(
        this.absPath,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL,
        0o600,
      );
    }
    return this.handle;
  }
}
