// Byte-level tests of the frame codec: known frames as hex, random frame sequences split at
// random points, every limit the decoder enforces, and a fuzz test on arbitrary bytes.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { ProtocolError } from "../errors.js";
import {
  encodeFrame,
  type Frame,
  FrameDecoder,
  HEADER_SIZE,
  MAGIC,
  MAX_FRAME_PAYLOAD,
  payloadParts,
} from "./frame.js";

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");

/** Asserts that `fn` throws a ProtocolError with `code`. */
function throwsCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof ProtocolError, `expected a ProtocolError, got ${String(error)}`);
    assert.equal(error.code, code);
    return true;
  });
}

/** Cuts `bytes` at the given offsets (taken modulo its length) and returns the pieces in order. */
function split(bytes: Buffer, cuts: number[]): Buffer[] {
  if (bytes.length === 0) return [];
  const points = [...new Set(cuts.map((c) => c % bytes.length))].filter((c) => c > 0).sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let start = 0;
  for (const p of [...points, bytes.length]) {
    pieces.push(bytes.subarray(start, p));
    start = p;
  }
  return pieces;
}

function decodeAll(decoder: FrameDecoder, pieces: Buffer[]): Frame[] {
  const frames: Frame[] = [];
  for (const piece of pieces) frames.push(...decoder.push(piece));
  return frames;
}

/** A header as the wire carries it, for frames the encoder would never produce. */
function rawHeader(length: number, type: number, flags: number, requestId: number): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  h.writeUInt32BE(length, 0);
  h.writeUInt16BE(type, 4);
  h.writeUInt16BE(flags, 6);
  h.writeUInt32BE(requestId, 8);
  return h;
}

const frameArb = fc
  .record({
    type: fc.integer({ min: 0, max: 0xffff }),
    requestId: fc.integer({ min: 0, max: 0xffffffff }),
    payload: fc.uint8Array({ maxLength: 4096 }).map((a) => Buffer.from(a)),
  })
  .map((f): Frame => ({ ...f }));

describe("frame encoding", () => {
  test("the preamble is KWATCH CR LF", () => {
    assert.deepEqual(MAGIC, hex("4b 57 41 54 43 48 0d 0a"));
  });

  test("a frame is a big-endian length, type, zero flags and request id, then the payload", () => {
    const bytes = encodeFrame(0x10, 0x01020304, Buffer.from("hi"));
    assert.deepEqual(bytes, hex("00000002 0010 0000 01020304 6869"));
  });

  test("an empty payload gives a header alone", () => {
    assert.deepEqual(encodeFrame(0x04, 7), hex("00000000 0004 0000 00000007"));
  });

  test("the largest request id and type survive", () => {
    assert.deepEqual(encodeFrame(0xffff, 0xffffffff), hex("00000000 ffff 0000 ffffffff"));
  });

  test("a payload over MAX_FRAME_PAYLOAD is refused, one of exactly that size is not", () => {
    assert.throws(() => encodeFrame(0x11, 1, Buffer.alloc(MAX_FRAME_PAYLOAD + 1)), RangeError);
    const ok = encodeFrame(0x11, 1, Buffer.alloc(MAX_FRAME_PAYLOAD));
    assert.equal(ok.length, HEADER_SIZE + MAX_FRAME_PAYLOAD);
    assert.equal(ok.readUInt32BE(0), MAX_FRAME_PAYLOAD);
  });

  test("a type that does not fit 16 bits is refused", () => {
    assert.throws(() => encodeFrame(0x10000, 1), RangeError);
  });
});

describe("FrameDecoder", () => {
  test("decodes a known frame given as hex", () => {
    const decoder = new FrameDecoder();
    const frames = decoder.push(hex("4b57415443480d0a 00000003 0012 0000 0000002a 616263"));
    assert.deepEqual(frames, [{ type: 0x12, requestId: 42, payload: Buffer.from("abc") }]);
    assert.equal(decoder.atBoundary, true);
  });

  test("decodes the same frame fed one byte at a time, completing it on the last byte", () => {
    const decoder = new FrameDecoder();
    const bytes = hex("4b57415443480d0a 00000002 0010 0000 00000001 ff00");
    for (let i = 0; i < bytes.length - 1; i++) {
      assert.deepEqual(decoder.push(bytes.subarray(i, i + 1)), [], `byte ${i}`);
    }
    assert.deepEqual(decoder.push(bytes.subarray(bytes.length - 1)), [
      { type: 0x10, requestId: 1, payload: hex("ff00") },
    ]);
  });

  test("yields nothing before the preamble is complete and nothing for the preamble alone", () => {
    const decoder = new FrameDecoder();
    assert.deepEqual(decoder.push(MAGIC.subarray(0, 3)), []);
    assert.equal(decoder.atBoundary, false);
    assert.deepEqual(decoder.push(MAGIC.subarray(3)), []);
    assert.equal(decoder.atBoundary, true);
  });

  test("an empty push changes nothing", () => {
    const decoder = new FrameDecoder();
    assert.deepEqual(decoder.push(Buffer.alloc(0)), []);
    assert.deepEqual(decoder.push(Buffer.concat([MAGIC, encodeFrame(1, 0)])), [
      { type: 1, requestId: 0, payload: Buffer.alloc(0) },
    ]);
    assert.deepEqual(decoder.push(Buffer.alloc(0)), []);
  });

  test("property: any frame sequence split anywhere decodes to exactly the same frames", () => {
    fc.assert(
      fc.property(
        fc.array(frameArb, { maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 40 }),
        (frames, cuts) => {
          const stream = Buffer.concat([
            MAGIC,
            ...frames.map((f) => encodeFrame(f.type, f.requestId, f.payload)),
          ]);
          const decoder = new FrameDecoder();
          const got = decodeAll(decoder, split(stream, cuts));
          assert.deepEqual(got, frames);
          assert.equal(decoder.atBoundary, true);
          assert.equal(decoder.buffered, 0);
        },
      ),
      { numRuns: 200 },
    );
  });

  test("property: the types told to stay in parts arrive as views of the pieces, the rest as before", () => {
    const parted = new Set([0, 1, 2]);
    fc.assert(
      fc.property(
        fc.array(
          frameArb.map((f) => ({ ...f, type: f.type % 5 })),
          { maxLength: 12 },
        ),
        fc.array(fc.nat(), { maxLength: 40 }),
        (frames, cuts) => {
          const stream = Buffer.concat([
            MAGIC,
            ...frames.map((f) => encodeFrame(f.type, f.requestId, f.payload)),
          ]);
          // Each piece in memory of its own, so that a view can be told from a copy.
          const pieces = split(stream, cuts).map((piece) => {
            const own = Buffer.allocUnsafeSlow(piece.length);
            piece.copy(own);
            return own;
          });
          const decoder = new FrameDecoder(MAX_FRAME_PAYLOAD, parted);
          const got = decodeAll(decoder, pieces);
          assert.equal(got.length, frames.length);
          for (const [i, frame] of got.entries()) {
            const want = frames[i] as Frame;
            assert.equal(frame.type, want.type);
            assert.equal(frame.requestId, want.requestId);
            if (parted.has(frame.type)) {
              const parts = frame.parts as readonly Buffer[];
              assert.ok(parts, `frame ${i} of type ${frame.type} has its parts`);
              assert.deepEqual(Buffer.concat(parts), want.payload);
              for (const part of parts) {
                assert.ok(
                  pieces.some((piece) => piece.buffer === part.buffer),
                  "a part is a view of a piece, not a copy",
                );
              }
            } else {
              assert.equal(frame.parts, undefined);
            }
            assert.deepEqual(frame.payload, want.payload);
            assert.deepEqual(Buffer.concat(payloadParts(frame)), want.payload);
          }
          assert.equal(decoder.atBoundary, true);
        },
      ),
      { numRuns: 200 },
    );
  });

  test("property: a frame sequence fed in 1-byte pieces decodes to the same frames", () => {
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 4 }), (frames) => {
        const stream = Buffer.concat([
          MAGIC,
          ...frames.map((f) => encodeFrame(f.type, f.requestId, f.payload)),
        ]);
        const pieces: Buffer[] = [];
        for (let i = 0; i < stream.length; i++) pieces.push(stream.subarray(i, i + 1));
        const decoder = new FrameDecoder();
        assert.deepEqual(decodeAll(decoder, pieces), frames);
        assert.equal(decoder.atBoundary, true);
      }),
      { numRuns: 30 },
    );
  });

  test("a header announcing more than the limit is refused as soon as the header arrives", () => {
    const decoder = new FrameDecoder();
    decoder.push(MAGIC);
    const header = rawHeader(MAX_FRAME_PAYLOAD + 1, 0x11, 0, 1);
    // Nothing yet with 11 of the 12 header bytes...
    assert.deepEqual(decoder.push(header.subarray(0, HEADER_SIZE - 1)), []);
    // ...and the 12th byte alone, with no payload sent, is the violation.
    throwsCode(() => decoder.push(header.subarray(HEADER_SIZE - 1)), "KW_FRAME_TOO_LARGE");
  });

  test("a header of exactly the limit is accepted and waits for its payload", () => {
    const decoder = new FrameDecoder();
    assert.deepEqual(decoder.push(Buffer.concat([MAGIC, rawHeader(MAX_FRAME_PAYLOAD, 0x11, 0, 1)])), []);
    assert.equal(decoder.atBoundary, false);
  });

  test("a decoder's own smaller limit applies, and 0xffffffff is refused", () => {
    const small = new FrameDecoder(100);
    small.push(MAGIC);
    assert.deepEqual(small.push(rawHeader(100, 1, 0, 1)), []);
    assert.equal(small.push(Buffer.alloc(100)).length, 1);
    throwsCode(() => small.push(rawHeader(101, 1, 0, 1)), "KW_FRAME_TOO_LARGE");

    const big = new FrameDecoder();
    throwsCode(() => big.push(Buffer.concat([MAGIC, rawHeader(0xffffffff, 1, 0, 1)])), "KW_FRAME_TOO_LARGE");
  });

  test("property: any non-zero flags are refused with KW_BAD_FRAME", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 0xffff }), (flags) => {
        const decoder = new FrameDecoder();
        throwsCode(() => decoder.push(Buffer.concat([MAGIC, rawHeader(0, 1, flags, 1)])), "KW_BAD_FRAME");
      }),
    );
  });

  test("a frame before a bad header is not delivered with it", () => {
    // The violation fails the whole push; the connection closes, so nothing may be acted on.
    const decoder = new FrameDecoder();
    const stream = Buffer.concat([MAGIC, encodeFrame(1, 1, Buffer.from("x")), rawHeader(0, 1, 1, 2)]);
    throwsCode(() => decoder.push(stream), "KW_BAD_FRAME");
  });

  test("an HTTP request is refused with KW_BAD_MAGIC", () => {
    throwsCode(
      () => new FrameDecoder().push(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
      "KW_BAD_MAGIC",
    );
  });

  test("a wrong preamble is refused on its first wrong byte", () => {
    const decoder = new FrameDecoder();
    throwsCode(() => decoder.push(Buffer.from("G")), "KW_BAD_MAGIC");

    const late = new FrameDecoder();
    assert.deepEqual(late.push(Buffer.from("KWATCH\r")), []);
    throwsCode(() => late.push(Buffer.from("\r")), "KW_BAD_MAGIC");
  });

  test("property: any wrong 8-byte preamble fed bytewise fails exactly at its first differing byte", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 8, maxLength: 8 }).filter((a) => !MAGIC.equals(Buffer.from(a))),
        (arr) => {
          const bytes = Buffer.from(arr);
          let firstBad = 0;
          while (bytes[firstBad] === MAGIC[firstBad]) firstBad++;
          const decoder = new FrameDecoder();
          for (let i = 0; i < firstBad; i++) assert.deepEqual(decoder.push(bytes.subarray(i, i + 1)), []);
          throwsCode(() => decoder.push(bytes.subarray(firstBad, firstBad + 1)), "KW_BAD_MAGIC");
        },
      ),
    );
  });

  test("atBoundary is false inside the preamble, a header or a payload (true before any byte)", () => {
    const stream = Buffer.concat([MAGIC, encodeFrame(0x11, 9, Buffer.from("payload"))]);
    for (let cut = 0; cut <= stream.length; cut++) {
      const decoder = new FrameDecoder();
      decoder.push(stream.subarray(0, cut));
      const expected = cut === 0 || cut === MAGIC.length || cut === stream.length;
      assert.equal(decoder.atBoundary, expected, `after ${cut} bytes`);
    }
  });

  test("buffered counts the bytes of an incomplete frame", () => {
    const decoder = new FrameDecoder();
    decoder.push(Buffer.concat([MAGIC, rawHeader(10, 1, 0, 1), Buffer.alloc(4)]));
    assert.equal(decoder.buffered, 4);
  });

  test("after a failure the decoder stays failed", () => {
    const decoder = new FrameDecoder();
    throwsCode(() => decoder.push(Buffer.from("HTTP")), "KW_BAD_MAGIC");
    assert.equal(decoder.buffered, 0);
    assert.equal(decoder.atBoundary, false);
    // Even a perfectly good stream is refused from now on.
    throwsCode(() => decoder.push(Buffer.concat([MAGIC, encodeFrame(1, 1)])), "KW_BAD_FRAME");
    throwsCode(() => decoder.push(Buffer.alloc(0)), "KW_BAD_FRAME");
    assert.equal(decoder.atBoundary, false);
  });

  test("fuzz: arbitrary bytes after the preamble only ever yield frames or a ProtocolError", () => {
    const codes = new Set(["KW_FRAME_TOO_LARGE", "KW_BAD_FRAME"]);
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 2048 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        fc.integer({ min: 0, max: 4096 }),
        (arr, cuts, maxPayload) => {
          const decoder = new FrameDecoder(maxPayload);
          decoder.push(MAGIC);
          try {
            for (const f of decodeAll(decoder, split(Buffer.from(arr), cuts))) {
              assert.ok(f.payload.length <= maxPayload);
            }
          } catch (error) {
            assert.ok(error instanceof ProtocolError, String(error));
            assert.ok(codes.has(error.code), error.code);
          }
          assert.ok(decoder.buffered <= HEADER_SIZE + maxPayload);
        },
      ),
      { numRuns: 500 },
    );
  });
});
