// The byte layout of a pack file: a 24-byte file header, then records, each a 56-byte header
// followed by the chunk's stored bytes. Pure encoding and strict decoding, no I/O;
// docs/store.md has the same layout as a table.

import { crc32 as zlibCrc32 } from "node:zlib";

/** "KWPK": the first 4 bytes of every pack file. */
export const PACK_MAGIC = 0x4b57504b;
/** The pack format this code writes and reads. */
export const PACK_VERSION = 1;
/** Bytes of the pack file header: magic, version, 3 reserved bytes, the 16-byte pack id. */
export const PACK_HEADER_BYTES = 24;
/** Bytes of a pack id (random), also the base of the file name. */
export const PACK_ID_BYTES = 16;

/** "KWCK": the first 4 bytes of every record. */
export const RECORD_MAGIC = 0x4b57434b;
/** Bytes of a record header. */
export const RECORD_HEADER_BYTES = 56;
/** The largest chunk a pack holds (the chunker's own limit). */
export const MAX_CHUNK_BYTES = 64 * 1024 * 1024;

/** How a record's stored bytes relate to the chunk. */
export const ChunkCodec = {
  /** The chunk's bytes as they are. */
  raw: 0,
  /** One zstd frame that holds the chunk's size in its header. */
  zstd: 1,
} as const;
export type ChunkCodecValue = (typeof ChunkCodec)[keyof typeof ChunkCodec];

export function isChunkCodec(value: number): value is ChunkCodecValue {
  return value === ChunkCodec.raw || value === ChunkCodec.zstd;
}

export interface RecordHeader {
  /** SHA-256 of the chunk's uncompressed bytes. */
  id: Buffer;
  codec: ChunkCodecValue;
  rawLength: number;
  storedLength: number;
  /** CRC-32 of the stored bytes. */
  storedCrc: number;
}

/** CRC-32 (ISO-HDLC, as zlib): node:zlib's from Node 20.15 and 22.2, a table before that. */
export const crc32: (data: Uint8Array) => number =
  typeof zlibCrc32 === "function" ? (data) => zlibCrc32(data) : tableCrc32;

let crcTable: Uint32Array | undefined;

export function tableCrc32(data: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++)
    crc = (crcTable[(crc ^ (data[i] as number)) & 0xff] as number) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** Write a pack file header for `packId` into `target` at `offset`. */
export function encodePackHeader(packId: Buffer, target: Buffer, offset = 0): void {
  if (packId.length !== PACK_ID_BYTES) throw new RangeError(`a pack id has ${PACK_ID_BYTES} bytes`);
  target.writeUInt32BE(PACK_MAGIC, offset);
  target[offset + 4] = PACK_VERSION;
  target.fill(0, offset + 5, offset + 8);
  packId.copy(target, offset + 8);
}

/** Bytes that are not a valid pack or record header; the message says what is wrong. */
export class PackFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PackFormatError";
  }
}

/** The pack id in a pack file header; throws PackFormatError unless the header is valid. */
export function decodePackHeader(bytes: Buffer): Buffer {
  if (bytes.length < PACK_HEADER_BYTES) throw new PackFormatError("the pack header is truncated");
  if (bytes.readUInt32BE(0) !== PACK_MAGIC) throw new PackFormatError("not a keepwatch pack file");
  if (bytes[4] !== PACK_VERSION) throw new PackFormatError(`unknown pack format version ${bytes[4]}`);
  if (bytes[5] !== 0 || bytes[6] !== 0 || bytes[7] !== 0) throw new PackFormatError("reserved bytes are set");
  return Buffer.from(bytes.subarray(8, PACK_HEADER_BYTES));
}

/** Write a record header into `target` at `offset`. */
export function encodeRecordHeader(header: RecordHeader, target: Buffer, offset: number): void {
  if (header.id.length !== 32) throw new RangeError("a chunk id has 32 bytes");
  target.writeUInt32BE(RECORD_MAGIC, offset);
  header.id.copy(target, offset + 4);
  target[offset + 36] = header.codec;
  target.fill(0, offset + 37, offset + 40);
  target.writeUInt32BE(header.rawLength, offset + 40);
  target.writeUInt32BE(header.storedLength, offset + 44);
  target.writeUInt32BE(header.storedCrc >>> 0, offset + 48);
  target.writeUInt32BE(crc32(target.subarray(offset, offset + 52)), offset + 52);
}

/**
 * Decode the record header at the start of `bytes`. Strict: the magic, the header's own
 * CRC, the reserved bytes, the codec and both lengths (against MAX_CHUNK_BYTES, and raw
 * records must store exactly their length) are all checked; throws PackFormatError.
 */
export function decodeRecordHeader(bytes: Buffer): RecordHeader {
  if (bytes.length < RECORD_HEADER_BYTES) throw new PackFormatError("the record header is truncated");
  if (bytes.readUInt32BE(0) !== RECORD_MAGIC) throw new PackFormatError("no record starts here");
  if (crc32(bytes.subarray(0, 52)) !== bytes.readUInt32BE(52)) {
    throw new PackFormatError("the record header's checksum does not match");
  }
  if (bytes[37] !== 0 || bytes[38] !== 0 || bytes[39] !== 0)
    throw new PackFormatError("reserved bytes are set");
  const codec = bytes[36] as number;
  if (!isChunkCodec(codec)) throw new PackFormatError(`unknown codec ${codec}`);
  const rawLength = bytes.readUInt32BE(40);
  const storedLength = bytes.readUInt32BE(44);
  if (rawLength > MAX_CHUNK_BYTES)
    throw new PackFormatError(`a chunk of ${rawLength} bytes is over the limit`);
  if (storedLength > maxStoredLength(rawLength)) {
    throw new PackFormatError(`${storedLength} stored bytes for a chunk of ${rawLength}`);
  }
  if (codec === ChunkCodec.raw && storedLength !== rawLength) {
    throw new PackFormatError("a raw record stores other than its length");
  }
  return {
    id: Buffer.from(bytes.subarray(4, 36)),
    codec,
    rawLength,
    storedLength,
    storedCrc: bytes.readUInt32BE(48),
  };
}

/**
 * The most bytes a record may store for a chunk of `rawLength`: a compressed record is only
 * kept when it is smaller than the chunk, so no record is ever longer than its chunk.
 */
export function maxStoredLength(rawLength: number): number {
  return rawLength;
}
