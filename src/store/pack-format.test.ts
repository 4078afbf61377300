import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";
import { crc32 as zlibCrc32 } from "node:zlib";
import fc from "fast-check";
import { ChunkCodecContext, ChunkDecodeError, MIN_GAIN } from "./chunk-codec.js";
import {
  ChunkCodec,
  crc32,
  decodePackHeader,
  decodeRecordHeader,
  encodePackHeader,
  encodeRecordHeader,
  MAX_CHUNK_BYTES,
  PACK_HEADER_BYTES,
  PackFormatError,
  RECORD_HEADER_BYTES,
  type RecordHeader,
  tableCrc32,
} from "./pack-format.js";

const ID = Buffer.from("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", "hex");

function header(overrides: Partial<RecordHeader> = {}): RecordHeader {
  return {
    id: ID,
    codec: ChunkCodec.zstd,
    rawLength: 65_536,
    storedLength: 300,
    storedCrc: 0xdeadbeef,
    ...overrides,
  };
}

function encoded(h: RecordHeader): Buffer {
  const out = Buffer.alloc(RECORD_HEADER_BYTES);
  encodeRecordHeader(h, out, 0);
  return out;
}

/** A header whose own CRC is right but whose fields are whatever `edit` made them. */
function forged(edit: (bytes: Buffer) => void): Buffer {
  const bytes = encoded(header());
  edit(bytes);
  bytes.writeUInt32BE(crc32(bytes.subarray(0, 52)), 52);
  return bytes;
}

test("a record header is laid out byte by byte as docs/store.md says", () => {
  const bytes = encoded(header());
  assert.equal(
    bytes.subarray(0, 52).toString("hex"),
    [
      "4b57434b", // "KWCK"
      ID.toString("hex"),
      "01000000", // codec zstd, 3 reserved bytes
      "00010000", // raw length 65,536
      "0000012c", // stored length 300
      "deadbeef", // CRC-32 of the stored bytes
    ].join(""),
  );
  assert.equal(bytes.readUInt32BE(52), zlibCrc32(bytes.subarray(0, 52)));
  assert.deepEqual(decodeRecordHeader(bytes), header());
});

test("a pack header is the magic, the version, reserved zeros and the pack id", () => {
  const id = Buffer.from("0123456789abcdef0123456789abcdef", "hex");
  const bytes = Buffer.alloc(PACK_HEADER_BYTES);
  encodePackHeader(id, bytes);
  assert.equal(bytes.toString("hex"), `4b57504b01000000${id.toString("hex")}`);
  assert.deepEqual(decodePackHeader(bytes), id);
  for (let i = 0; i < 8; i++) {
    const bad = Buffer.from(bytes);
    bad[i] = (bad[i] as number) ^ 1;
    assert.throws(() => decodePackHeader(bad), PackFormatError, `byte ${i}`);
  }
  assert.throws(() => decodePackHeader(bytes.subarray(0, 23)), PackFormatError);
});

test("every single flipped bit of a record header is rejected", () => {
  const good = encoded(header());
  for (let bit = 0; bit < RECORD_HEADER_BYTES * 8; bit++) {
    const bad = Buffer.from(good);
    bad[bit >> 3] = (bad[bit >> 3] as number) ^ (1 << (bit & 7));
    let decoded: RecordHeader | undefined;
    try {
      decoded = decodeRecordHeader(bad);
    } catch (error) {
      assert.ok(error instanceof PackFormatError);
      continue;
    }
    assert.fail(`bit ${bit} went unnoticed: ${JSON.stringify(decoded)}`);
  }
});

test("headers that check out but break a rule are rejected", () => {
  assert.throws(() => decodeRecordHeader(encoded(header()).subarray(0, 55)), /truncated/);
  assert.throws(() => decodeRecordHeader(forged((b) => b.writeUInt32BE(0x4b57434c, 0))), /no record/);
  assert.throws(() => decodeRecordHeader(forged((b) => b.fill(7, 36, 37))), /unknown codec/);
  assert.throws(() => decodeRecordHeader(forged((b) => b.fill(1, 38, 39))), /reserved/);
  assert.throws(
    () => decodeRecordHeader(forged((b) => b.writeUInt32BE(MAX_CHUNK_BYTES + 1, 40))),
    /over the limit/,
  );
  assert.throws(() => decodeRecordHeader(forged((b) => b.writeUInt32BE(65_537, 44))), /stored bytes/);
  const rawButShort = forged((b) => b.fill(ChunkCodec.raw, 36, 37).writeUInt32BE(10, 44));
  assert.throws(() => decodeRecordHeader(rawButShort), /raw record/);
});

test("any header the encoder accepts decodes to itself", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.boolean(),
      fc.integer({ min: 0, max: MAX_CHUNK_BYTES }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      fc.integer({ min: 0, max: 0xffffffff }),
      (id, compressed, rawLength, fraction, storedCrc) => {
        const h: RecordHeader = {
          id: Buffer.from(id),
          codec: compressed ? ChunkCodec.zstd : ChunkCodec.raw,
          rawLength,
          storedLength: compressed ? Math.floor(rawLength * fraction) : rawLength,
          storedCrc,
        };
        const bytes = Buffer.alloc(RECORD_HEADER_BYTES + 3);
        encodeRecordHeader(h, bytes, 3);
        assert.deepEqual(decodeRecordHeader(bytes.subarray(3)), h);
      },
    ),
  );
});

test("random bytes never decode as a record header", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: RECORD_HEADER_BYTES, maxLength: RECORD_HEADER_BYTES }),
      (bytes) => {
        assert.throws(() => decodeRecordHeader(Buffer.from(bytes)), PackFormatError);
      },
    ),
  );
});

test("crc32, and the table version for Nodes without zlib.crc32, are zlib's CRC-32", () => {
  assert.equal(crc32(Buffer.from("123456789")), 0xcbf43926);
  assert.equal(tableCrc32(Buffer.from("123456789")), 0xcbf43926);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      assert.equal(crc32(bytes), zlibCrc32(bytes));
      assert.equal(tableCrc32(bytes), zlibCrc32(bytes));
    }),
  );
});

test("the codec keeps zstd only when it saves at least MIN_GAIN, and round-trips either way", () => {
  const codec = new ChunkCodecContext();
  const cases: [string, Buffer, number][] = [
    ["empty", Buffer.alloc(0), ChunkCodec.raw],
    ["one byte", Buffer.from([7]), ChunkCodec.raw],
    ["random", randomBytes(65_536), ChunkCodec.raw],
    ["zeros", Buffer.alloc(65_536), ChunkCodec.zstd],
    ["text", Buffer.from("all work and no play makes jack a dull boy ".repeat(500)), ChunkCodec.zstd],
  ];
  // Random bytes with a compressible tail just under and just over the threshold.
  const barely = Buffer.concat([randomBytes(60_000), Buffer.alloc(5_536)]);
  cases.push(["random with an 8 % zero tail", barely, ChunkCodec.zstd]);
  cases.push([
    "random with a 1 % zero tail",
    Buffer.concat([randomBytes(64_880), Buffer.alloc(656)]),
    ChunkCodec.raw,
  ]);
  for (const [name, data, codecExpected] of cases) {
    const room = Buffer.alloc(ChunkCodecContext.bound(data.length) + 10);
    const out = codec.encode(data, room, 10);
    assert.equal(out.codec, codecExpected, name);
    if (out.codec === ChunkCodec.zstd) assert.ok(out.storedLength <= data.length * (1 - MIN_GAIN), name);
    const stored = room.subarray(10, 10 + out.storedLength);
    assert.ok(codec.decode(out.codec, Buffer.from(stored), data.length).equals(data), name);
  }
});

test("decoding garbage, or a frame of another length than the index says, fails cleanly", () => {
  const codec = new ChunkCodecContext();
  const data = Buffer.alloc(100_000, 1);
  const room = Buffer.alloc(ChunkCodecContext.bound(data.length));
  const out = codec.encode(data, room, 0);
  const frame = Buffer.from(room.subarray(0, out.storedLength));
  assert.throws(() => codec.decode(ChunkCodec.zstd, frame, 99_999), ChunkDecodeError);
  assert.throws(() => codec.decode(ChunkCodec.zstd, frame, 100_001), ChunkDecodeError);
  assert.throws(() => codec.decode(ChunkCodec.zstd, randomBytes(200), 1000), ChunkDecodeError);
  assert.throws(() => codec.decode(ChunkCodec.raw, Buffer.alloc(10), 11), ChunkDecodeError);
  const damaged = Buffer.from(frame);
  const middle = Math.floor(damaged.length / 2);
  damaged[middle] = (damaged[middle] as number) ^ 0xff;
  const survived = (() => {
    try {
      return codec.decode(ChunkCodec.zstd, damaged, data.length);
    } catch (error) {
      assert.ok(error instanceof ChunkDecodeError);
      return undefined;
    }
  })();
  // zstd without its own checksum may decode damage into other bytes: the store's CRC-32
  // and SHA-256 catch that; here it must at least not come back as the original.
  if (survived)
    assert.notDeepEqual(
      createHash("sha256").update(survived).digest(),
      createHash("sha256").update(data).digest(),
    );
});

test("zstd levels outside zstd's range are refused", () => {
  assert.throws(() => new ChunkCodecContext(100), RangeError);
  assert.throws(() => new ChunkCodecContext(1.5), RangeError);
});
