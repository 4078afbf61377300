// Appends records to one new pack file through a buffer of a few MiB, so the disk sees big
// sequential writes, their whole blocks past the page cache (block-appender.ts). Bytes once
// written are never rewritten: the file only grows, and `sync` makes everything appended so
// far durable, file and folder entry alike.

import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type Bytes, bytesOf, partsOf } from "../bytes.js";
import { type AppendTarget, BlockAppender, openDirect } from "./block-appender.js";
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
  private target: AppendTarget | undefined;
  /** The records not yet written, and where the file stands. */
  private readonly out: BlockAppender;
  /** True once the file and its folder entry have been fsynced. */
  private synced = false;
  private closed = false;

  constructor(
    private readonly storeFolder: string,
    bufferBytes: number,
  ) {
    this.id = randomBytes(PACK_ID_BYTES);
    this.path = packPath(this.id);
    this.absPath = join(storeFolder, this.path);
    // Two buffers when two slabs are free: one is written while records go into the other.
    // Writes stay one at a time: a ring of buffers that let two writes of one pack run at
    // once failed the repack kill test (a committed pack without its first record), for a
    // reason not found (docs/performance.md).
    const bytes = Math.max(bufferBytes, PACK_HEADER_BYTES);
    this.out = BlockAppender.ifAligned(bytes, 2) ?? new BlockAppender(bytes, true);
    encodePackHeader(this.id, this.out.buffer, 0);
    this.out.advance(PACK_HEADER_BYTES);
  }

  /** Bytes the pack holds: written to the file and still buffered. */
  get size(): number {
    return this.out.size;
  }

  /** Compress and append a chunk (whole or in parts); returns where its record starts. */
  async appendChunk(id: Buffer, data: Bytes, codec: ChunkCodecContext): Promise<RecordPlace> {
    const length = bytesOf(partsOf(data));
    const room = RECORD_HEADER_BYTES + ChunkCodecContext.bound(length);
    if (room > this.out.room) await this.out.spill(await this.file());
    // A chunk bigger than the buffer goes through a buffer of its own ("plus one chunk").
    const inPlace = room <= this.out.room;
    const target = inPlace ? this.out.buffer : Buffer.allocUnsafe(room);
    const at = inPlace ? this.out.used : 0;
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
    if (inPlace) this.out.advance(recordLength);
    else await this.writeWhole(target.subarray(0, recordLength));
    return { offset, codec: encoded.codec, rawLength: length, storedLength: encoded.storedLength };
  }

  /** Append a record exactly as read from another pack (repacking); returns its offset. */
  async appendRecord(record: Buffer): Promise<number> {
    if (record.length > this.out.room) await this.out.spill(await this.file());
    const offset = this.size;
    if (record.length <= this.out.room) {
      record.copy(this.out.buffer, this.out.used);
      this.out.advance(record.length);
    } else {
      await this.writeWhole(record);
    }
    return offset;
  }

  /**
   * Append a record larger than the buffer and wait until all of it is in the file: a
   * record partly written and partly in memory could not be read back (see `buffered`).
   */
  private async writeWhole(record: Buffer): Promise<void> {
    const target = await this.file();
    await this.out.write(target, [record]);
    await this.out.spill(target);
    await this.out.settle();
  }

  /**
   * The bytes at `offset` when they are still in the buffer (not yet in the file), else
   * undefined. A copy: the buffer is reused.
   */
  buffered(offset: number, length: number): Buffer | undefined {
    return this.out.held(offset, length);
  }

  /** Write out the buffer, fsync the file and, the first time, its folder entries. */
  async sync(): Promise<void> {
    const target = await this.file();
    await this.out.spill(target);
    await this.out.settle();
    await target.handle.sync();
    if (!this.synced) {
      await syncFolder(dirname(this.absPath));
      await syncFolder(join(this.storeFolder, "packs"));
      this.synced = true;
    }
  }

  /** Release the file and the buffer; what was not synced may or may not be on disk. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const target = this.target;
    this.target = undefined;
    // A write that failed was the caller's to hear of (sync); only its end matters here.
    await this.out.settle().catch(() => {});
    await target?.direct?.close();
    await target?.handle.close();
    this.out.release();
  }

  private async file(): Promise<AppendTarget> {
    if (this.closed) throw new Error("the pack writer is closed");
    if (!this.target) {
      await mkdir(dirname(this.absPath), { recursive: true });
      const handle = await open(
        this.absPath,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL,
        0o600,
      );
      this.target = { handle, direct: this.out.aligned ? await openDirect(this.absPath) : null };
    }
    return this.target;
  }
}
