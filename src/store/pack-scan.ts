// Reading pack files without the chunk store: checking one record as `get` does, and
// walking a whole pack record by record (finding the next record again after damage). For
// verify, which must read a store that a running server holds open, and never write.

import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { type FileHandle, open, readdir } from "node:fs/promises";
import { join } from "node:path";
import { type ChunkCodecContext, ChunkDecodeError } from "./chunk-codec.js";
import {
  type ChunkCodecValue,
  crc32,
  decodePackHeader,
  decodeRecordHeader,
  PACK_HEADER_BYTES,
  PackFormatError,
  RECORD_HEADER_BYTES,
  RECORD_MAGIC,
  type RecordHeader,
} from "./pack-format.js";
import { packIdFromName } from "./pack-writer.js";

/** What the index says a record holds; checked against the record's own header. */
export interface ExpectedRecord {
  id: Buffer;
  codec: number;
  rawLength: number;
  storedLength: number;
}

export type RecordCheck = { ok: true; header: RecordHeader; data: Buffer } | { ok: false; problem: string };

/**
 * Check a record read from a pack (header and stored bytes): the header decodes and, when
 * `expected` is given, agrees with it; the stored bytes pass their CRC-32, decode to the
 * raw length, and hash to the chunk id. The same checks, in the same order, as
 * LocalChunkStore.get.
 */
export function checkRecord(
  record: Buffer,
  codec: ChunkCodecContext,
  expected?: ExpectedRecord,
): RecordCheck {
  let header: RecordHeader;
  try {
    header = decodeRecordHeader(record);
  } catch (error) {
    if (error instanceof PackFormatError) return { ok: false, problem: error.message };
    throw error;
  }
  if (expected) {
    if (!header.id.equals(expected.id)) return { ok: false, problem: "the record there holds another chunk" };
    if (
      header.codec !== expected.codec ||
      header.rawLength !== expected.rawLength ||
      header.storedLength !== expected.storedLength
    ) {
      return { ok: false, problem: "the record header disagrees with the index" };
    }
  }
  const stored = record.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + header.storedLength);
  if (stored.length !== header.storedLength)
    return { ok: false, problem: "the pack file ends inside the record" };
  if (crc32(stored) !== header.storedCrc) return { ok: false, problem: "the stored bytes fail their CRC-32" };
  let data: Buffer;
  try {
    data = codec.decode(header.codec as ChunkCodecValue, stored, header.rawLength);
  } catch (error) {
    if (error instanceof ChunkDecodeError) return { ok: false, problem: error.message };
    throw error;
  }
  if (!createHash("sha256").update(data).digest().equals(header.id)) {
    return { ok: false, problem: "its SHA-256 does not match" };
  }
  return { ok: true, header, data };
}

/** What walking a pack finds, in file order. */
export type WalkedRecord =
  /** A record that checks out. */
  | { kind: "sound"; offset: number; header: RecordHeader }
  /** Bytes that are not a sound record; `id` when the record's header could still be read. */
  | { kind: "damaged"; offset: number; length: number; id?: Buffer; problem: string }
  /** The file ends inside a record: one still being written, or a file cut short. */
  | { kind: "tail"; offset: number; length: number };

/** Bytes searched at a time for the next record after damage. */
const SEARCH_BLOCK = 1024 * 1024;
const MAGIC = Buffer.from([
  (RECORD_MAGIC >>> 24) & 0xff,
  (RECORD_MAGIC >>> 16) & 0xff,
  (RECORD_MAGIC >>> 8) & 0xff,
  RECORD_MAGIC & 0xff,
]);

/** Reads a pack file from start to end, record by record, with positioned reads. */
export class PackWalker {
  private constructor(
    private readonly handle: FileHandle,
    /** Bytes of the file when it was opened; a pack being written may grow meanwhile. */
    readonly size: number,
  ) {}

  /**
   * Open the pack at `path`. Throws PackFormatError when the file has a complete header
   * that is not a pack's (a shorter file is taken for one whose header is not written yet:
   * its walk yields a single tail).
   */
  static async open(path: string): Promise<PackWalker> {
    const handle = await open(path, constants.O_RDONLY);
    try {
      const size = (await handle.stat()).size;
      if (size >= PACK_HEADER_BYTES) decodePackHeader(await readAt(handle, 0, PACK_HEADER_BYTES));
      return new PackWalker(handle, size);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  /** Every record up to `end` (default: the size at open), with the bytes of each sound one. */
  async *records(
    codec: ChunkCodecContext,
    end = this.size,
  ): AsyncGenerator<WalkedRecord & { data?: Buffer }> {
    let offset = PACK_HEADER_BYTES;
    if (end < PACK_HEADER_BYTES) {
      if (end > 0) yield { kind: "tail", offset: 0, length: end };
      return;
    }
    while (offset < end) {
      if (end - offset < RECORD_HEADER_BYTES) {
        yield { kind: "tail", offset, length: end - offset };
        return;
      }
      const head = await readAt(this.handle, offset, RECORD_HEADER_BYTES);
      let header: RecordHeader | undefined;
      try {
        header = decodeRecordHeader(head);
      } catch (error) {
        if (!(error instanceof PackFormatError)) throw error;
        const next = await this.nextRecord(offset + 1, end);
        // Damage that runs to the end of a file may be a record still being written.
        if (next === null) yield { kind: "tail", offset, length: end - offset };
        else yield { kind: "damaged", offset, length: next - offset, problem: error.message };
        if (next === null) return;
        offset = next;
        continue;
      }
      const length = RECORD_HEADER_BYTES + header.storedLength;
      if (offset + length > end) {
        yield { kind: "tail", offset, length: end - offset };
        return;
      }
      const record = Buffer.concat([
        head,
        await readAt(this.handle, offset + RECORD_HEADER_BYTES, header.storedLength),
      ]);
      const check = checkRecord(record, codec);
      if (check.ok) yield { kind: "sound", offset, header, data: check.data };
      else yield { kind: "damaged", offset, length, id: header.id, problem: check.problem };
      offset += length;
    }
  }

  /** Up to `length` bytes from `offset`; fewer when the file ends first. */
  read(offset: number, length: number): Promise<Buffer> {
    return readAt(this.handle, offset, length);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  /** The offset of the next valid record header at or after `from`, or null before `end`. */
  private async nextRecord(from: number, end: number): Promise<number | null> {
    for (let block = from; block < end; block += SEARCH_BLOCK) {
      // Overlap blocks by the magic's length less one, so a magic across a boundary is found.
      const length = Math.min(SEARCH_BLOCK + MAGIC.length - 1, end - block);
      const bytes = await readAt(this.handle, block, length);
      for (let at = bytes.indexOf(MAGIC); at >= 0; at = bytes.indexOf(MAGIC, at + 1)) {
        const candidate = block + at;
        if (candidate + RECORD_HEADER_BYTES > end) return null;
        try {
          decodeRecordHeader(await readAt(this.handle, candidate, RECORD_HEADER_BYTES));
          return candidate;
        } catch (error) {
          if (!(error instanceof PackFormatError)) throw error;
        }
      }
    }
    return null;
  }
}

/** Up to `length` bytes of the file from `offset`; fewer when it ends first. */
export async function readAt(handle: FileHandle, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(out, done, length - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done === length ? out : out.subarray(0, done);
}

/** The pack files under `packsFolder` (paths relative to its parent, as the index has them). */
export async function listPackFiles(packsFolder: string, prefix: string): Promise<string[]> {
  const out: string[] = [];
  let fans: string[];
  try {
    fans = await readdir(packsFolder);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return out;
    throw error;
  }
  for (const fan of fans.sort()) {
    if (!/^[0-9a-f]{2}$/.test(fan)) continue;
    let names: string[];
    try {
      names = await readdir(join(packsFolder, fan));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOTDIR") continue;
      throw error;
    }
    for (const name of names.sort()) {
      if (packIdFromName(name)?.toString("hex").startsWith(fan)) out.push(join(prefix, fan, name));
    }
  }
  return out;
}
