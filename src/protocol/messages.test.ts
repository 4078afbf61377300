// Tests of the v1 message codecs: property round trips for every message, and the strict
// decoder's refusals (truncation, trailing bytes, over-long or malformed fields).

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { type ErrorCode, ErrorCodes, KeepwatchError, ProtocolError } from "../errors.js";
import { FieldWriter, MAX_TIME_MS } from "./fields.js";
import { MAX_FRAME_PAYLOAD } from "./frame.js";
import {
  decode,
  encode,
  MAX_NAME_BYTES,
  MAX_PATH_BYTES,
  MAX_TEXT_BYTES,
  MAX_TOKEN_BYTES,
  MAX_WIRE_NAME_BYTES,
  MAX_WIRE_PATH_BYTES,
  MessageType,
  MIN_IDLE_TIMEOUT_MS,
  MIN_MAX_FRAME,
  messageTypeName,
  SHA256_BYTES,
  truncateUtf8,
} from "./messages.js";
import { assertValidPath, pathProblem, setNameProblem } from "./paths.js";

function throwsBadMessage(fn: () => unknown, why = ""): void {
  assert.throws(
    fn,
    (error: unknown) => {
      assert.ok(error instanceof ProtocolError, `expected a ProtocolError, got ${String(error)} ${why}`);
      assert.equal(error.code, "KW_BAD_MESSAGE", why);
      return true;
    },
    why,
  );
}

/** Any Unicode string (no lone surrogates) whose UTF-8 form fits in `maxBytes`. */
function text(maxBytes: number): fc.Arbitrary<string> {
  return fc.oneof(
    fc.string({ unit: "binary", maxLength: Math.floor(maxBytes / 4) }),
    fc.string({ unit: "grapheme", maxLength: Math.floor(maxBytes / 16) }),
    fc.string({ unit: "binary-ascii", maxLength: maxBytes }),
    // Right at the limit, in multi-byte characters.
    fc.constant("é".repeat(Math.floor(maxBytes / 2))),
  );
}

const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u64 = fc.oneof(fc.maxSafeNat(), fc.constantFrom(0, Number.MAX_SAFE_INTEGER, 2 ** 32, 2 ** 32 - 1));
/** Times: any finite double within the range of a date (fields.ts MAX_TIME_MS). */
const f64 = fc.double({ noNaN: true, noDefaultInfinity: true, min: -MAX_TIME_MS, max: MAX_TIME_MS });
const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));
const sha = fc.uint8Array({ minLength: SHA256_BYTES, maxLength: SHA256_BYTES }).map((a) => Buffer.from(a));
const errorCode = fc.constantFrom(...(Object.keys(ErrorCodes) as ErrorCode[]));

/** A plain copy: fc.record builds null-prototype objects, which deepEqual tells apart. */
const copy = <T extends object>(v: T): T => ({ ...v });

interface Codec<T> {
  name: string;
  arb: fc.Arbitrary<T>;
  enc: (m: T) => Buffer;
  dec: (payload: Buffer) => T;
}

function codec<T>(
  name: string,
  arb: fc.Arbitrary<T>,
  enc: (m: T) => Buffer,
  dec: (p: Buffer) => T,
): Codec<T> {
  return { name, arb, enc, dec };
}

const codecs = [
  codec(
    "HELLO",

    fc
      .record({
        minVersion: u16,
        maxVersion: u16,
        clientName: text(MAX_NAME_BYTES),
        setName: text(MAX_NAME_BYTES),
        token: bytes(MAX_TOKEN_BYTES),
      })
      .map(copy),
    encode.hello,
    decode.hello,
  ),
  codec(
    "WELCOME",

    fc
      .record({
        version: u16,
        storeId: fc.oneof(fc.uuid(), text(MAX_NAME_BYTES)),
        maxFrame: fc.integer({ min: MIN_MAX_FRAME, max: MAX_FRAME_PAYLOAD }),
        window: fc.integer({ min: 1, max: 0xffff }),
        idleTimeoutMs: fc.integer({ min: MIN_IDLE_TIMEOUT_MS, max: 0xffffffff }),
        serverName: text(MAX_NAME_BYTES),
      })
      .map(copy),
    encode.welcome,
    decode.welcome,
  ),
  codec(
    "ERROR",
    fc.record({ code: errorCode, message: text(MAX_TEXT_BYTES) }).map(copy),
    encode.error,
    decode.error,
  ),
  codec(
    "PUT_BEGIN",
    fc.record({ path: text(MAX_PATH_BYTES), size: u64, mtimeMs: f64, mode: u32 }).map(copy),
    encode.putBegin,
    decode.putBegin,
  ),
  codec("PUT_END", fc.record({ sha256: sha }).map(copy), encode.putEnd, decode.putEnd),
  codec("PUT_ABORT", fc.record({ reason: text(MAX_TEXT_BYTES) }).map(copy), encode.putAbort, decode.putAbort),
  codec("MKDIR", fc.record({ path: text(MAX_PATH_BYTES), mode: u32 }).map(copy), encode.mkdir, decode.mkdir),
  codec("DELETE", fc.record({ path: text(MAX_PATH_BYTES) }).map(copy), encode.delete, decode.delete),
] as Codec<unknown>[];

describe("message type numbers", () => {
  test("are the ones docs/protocol.md lists (they are wire format: never renumber)", () => {
    assert.deepEqual(
      { ...MessageType },
      {
        HELLO: 0x01,
        WELCOME: 0x02,
        ERROR: 0x03,
        PING: 0x04,
        PONG: 0x05,
        BYE: 0x06,
        PUT_BEGIN: 0x10,
        PUT_DATA: 0x11,
        PUT_END: 0x12,
        PUT_ABORT: 0x13,
        MKDIR: 0x14,
        DELETE: 0x15,
        PUT_REF: 0x16,
        MANIFEST_BEGIN: 0x17,
        MANIFEST_DATA: 0x18,
        MANIFEST_END: 0x19,
        CHUNK: 0x1a,
        CHUNK_DELTA: 0x1b,
        MANIFEST_STREAM: 0x1c,
        MANIFEST_CLOSE: 0x1d,
        ACK: 0x20,
        NEED: 0x21,
        BASIS: 0x22,
        LIST: 0x30,
        ENTRY: 0x31,
        RESTORE: 0x32,
        FILE_DATA: 0x33,
      },
    );
  });

  test("have names for logs, unknown ones shown in hex", () => {
    assert.equal(messageTypeName(0x10), "PUT_BEGIN");
    assert.equal(messageTypeName(0x99), "0x0099");
  });
});

describe("known encodings", () => {
  test("PUT_BEGIN is str path, u64 size, f64 mtimeMs, u32 mode, all big-endian", () => {
    const payload = encode.putBegin({ path: "ü", size: 258, mtimeMs: 1.5, mode: 0o644 });
    assert.deepEqual(
      payload,
      Buffer.from("00000002c3bc" + "0000000000000102" + "3ff8000000000000" + "000001a4", "hex"),
    );
  });

  test("HELLO is u16 min, u16 max, str client, str set, bytes token", () => {
    const payload = encode.hello({
      minVersion: 1,
      maxVersion: 2,
      clientName: "h",
      setName: "s",
      token: Buffer.alloc(0),
    });
    assert.deepEqual(payload, Buffer.from("0001" + "0002" + "0000000168" + "0000000173" + "00000000", "hex"));
  });

  test("an empty message is zero bytes and decode.empty refuses any byte", () => {
    assert.equal(encode.empty().length, 0);
    decode.empty(Buffer.alloc(0), "BYE");
    throwsBadMessage(() => decode.empty(Buffer.from([0]), "BYE"));
  });
});

for (const c of codecs) {
  describe(`${c.name} codec`, () => {
    test("property: decode(encode(m)) equals m", () => {
      fc.assert(
        fc.property(c.arb, (m) => {
          assert.deepEqual(c.dec(c.enc(m)), m);
        }),
        { numRuns: 150 },
      );
    });

    test("property: trailing bytes are refused", () => {
      fc.assert(
        fc.property(
          c.arb,
          bytes(8).filter((b) => b.length > 0),
          (m, extra) => {
            throwsBadMessage(() => c.dec(Buffer.concat([c.enc(m), extra])));
          },
        ),
        { numRuns: 50 },
      );
    });

    test("property: every proper prefix of a valid encoding is refused", () => {
      fc.assert(
        fc.property(c.arb, (m) => {
          const full = c.enc(m);
          for (let n = 0; n < full.length; n++) {
            throwsBadMessage(() => c.dec(full.subarray(0, n)), `prefix of ${n}/${full.length} bytes`);
          }
        }),
        { numRuns: 15 },
      );
    });
  });
}

/** Builds a payload field by field, for encodings the encoders would never make. */
const w = () => new FieldWriter();

/** A string field with `n` bytes of UTF-8 ("x" repeated). */
const strOf = (n: number) => "x".repeat(n);

describe("string and byte limits", () => {
  const cases: { what: string; at: (n: number) => Buffer; limit: number; dec: (p: Buffer) => unknown }[] = [
    {
      what: "HELLO clientName",
      limit: MAX_NAME_BYTES,
      at: (n) => w().u16(1).u16(1).str(strOf(n)).str("s").bytes(Buffer.alloc(0)).finish(),
      dec: decode.hello,
    },
    {
      what: "HELLO setName",
      limit: MAX_WIRE_NAME_BYTES,
      at: (n) => w().u16(1).u16(1).str("c").str(strOf(n)).bytes(Buffer.alloc(0)).finish(),
      dec: decode.hello,
    },
    {
      what: "HELLO token",
      limit: MAX_TOKEN_BYTES,
      at: (n) => w().u16(1).u16(1).str("c").str("s").bytes(Buffer.alloc(n)).finish(),
      dec: decode.hello,
    },
    {
      what: "WELCOME storeId",
      limit: MAX_NAME_BYTES,
      at: (n) => w().u16(1).str(strOf(n)).u32(MAX_FRAME_PAYLOAD).u16(64).u32(30000).str("kw").finish(),
      dec: decode.welcome,
    },
    {
      what: "WELCOME serverName",
      limit: MAX_NAME_BYTES,
      at: (n) => w().u16(1).str("id").u32(MAX_FRAME_PAYLOAD).u16(64).u32(30000).str(strOf(n)).finish(),
      dec: decode.welcome,
    },
    {
      what: "ERROR code",
      limit: 64,
      at: (n) =>
        w()
          .str(`KW_${strOf(n - 3)}`)
          .str("m")
          .finish(),
      dec: decode.error,
    },
    {
      what: "ERROR message",
      limit: MAX_TEXT_BYTES,
      at: (n) => w().str("KW_BAD_PATH").str(strOf(n)).finish(),
      dec: decode.error,
    },
    {
      what: "PUT_BEGIN path",
      limit: MAX_WIRE_PATH_BYTES,
      at: (n) => w().str(strOf(n)).u64(0).f64(0).u32(0).finish(),
      dec: decode.putBegin,
    },
    {
      what: "PUT_ABORT reason",
      limit: MAX_TEXT_BYTES,
      at: (n) => w().str(strOf(n)).finish(),
      dec: decode.putAbort,
    },
    {
      what: "MKDIR path",
      limit: MAX_WIRE_PATH_BYTES,
      at: (n) => w().str(strOf(n)).u32(0).finish(),
      dec: decode.mkdir,
    },
    {
      what: "DELETE path",
      limit: MAX_WIRE_PATH_BYTES,
      at: (n) => w().str(strOf(n)).finish(),
      dec: decode.delete,
    },
  ];

  for (const c of cases) {
    test(`${c.what}: ${c.limit} bytes accepted, ${c.limit + 1} refused`, () => {
      c.dec(c.at(c.limit));
      throwsBadMessage(() => c.dec(c.at(c.limit + 1)));
    });
  }

  test("a huge announced length is refused without reading past the payload", () => {
    throwsBadMessage(() => decode.delete(Buffer.from("ffffffff", "hex")));
    throwsBadMessage(() => decode.putAbort(Buffer.from("00000fff41", "hex")));
  });

  test("PUT_END's sha256 must be exactly 32 bytes", () => {
    for (const n of [0, 31, 33, 64]) {
      throwsBadMessage(() => decode.putEnd(w().bytes(Buffer.alloc(n)).finish()), `${n} bytes`);
    }
  });
});

describe("strict field values", () => {
  const invalidUtf8 = {
    "a lone continuation byte": "80",
    "an 0xff byte": "ff",
    "an overlong NUL": "c080",
    "an overlong slash": "c0af",
    "a UTF-16 surrogate": "eda080",
    "a truncated sequence": "e282",
    "a code point above U+10FFFF": "f4908080",
  };
  for (const [what, hexBytes] of Object.entries(invalidUtf8)) {
    test(`a string with ${what} is refused`, () => {
      const raw = Buffer.from(`61${hexBytes}62`, "hex");
      const field = Buffer.concat([w().u32(raw.length).finish(), raw]);
      throwsBadMessage(() => decode.delete(field));
      throwsBadMessage(() =>
        decode.hello(
          Buffer.concat([w().u16(1).u16(1).finish(), field, w().str("s").bytes(Buffer.alloc(0)).finish()]),
        ),
      );
    });
  }

  test("a byte-order mark is kept, not stripped", () => {
    assert.equal(decode.delete(encode.delete({ path: "\ufeffa" })).path, "\ufeffa");
  });

  const putBeginWith = (size: Buffer, mtime: Buffer) =>
    Buffer.concat([w().str("a").finish(), size, mtime, w().u32(0o644).finish()]);
  const u64Bytes = (v: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    return b;
  };
  const f64Bytes = (v: number) => {
    const b = Buffer.alloc(8);
    b.writeDoubleBE(v);
    return b;
  };

  test("u64 up to 2^53-1 is accepted, anything above refused", () => {
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    assert.equal(decode.putBegin(putBeginWith(u64Bytes(max), f64Bytes(0))).size, Number.MAX_SAFE_INTEGER);
    for (const v of [max + 1n, max + 2n, 2n ** 63n, 2n ** 64n - 1n]) {
      throwsBadMessage(() => decode.putBegin(putBeginWith(u64Bytes(v), f64Bytes(0))), `size ${v}`);
    }
  });

  test("non-finite f64 is refused", () => {
    for (const v of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      throwsBadMessage(() => decode.putBegin(putBeginWith(u64Bytes(0n), f64Bytes(v))), `mtimeMs ${v}`);
    }
    // Every NaN bit pattern, not only the canonical one.
    throwsBadMessage(() =>
      decode.putBegin(putBeginWith(u64Bytes(0n), Buffer.from("7ff0000000000001", "hex"))),
    );
    throwsBadMessage(() =>
      decode.putBegin(putBeginWith(u64Bytes(0n), Buffer.from("fff8000000000000", "hex"))),
    );
  });

  test("negative zero, negative and subnormal mtimes survive", () => {
    for (const mtimeMs of [-0, -1.5e12, Number.MIN_VALUE, MAX_TIME_MS, -MAX_TIME_MS]) {
      const m = decode.putBegin(encode.putBegin({ path: "a", size: 0, mtimeMs, mode: 0 }));
      assert.ok(Object.is(m.mtimeMs, mtimeMs), `${mtimeMs}`);
    }
  });

  test("a time beyond the range of a date is refused", () => {
    for (const mtimeMs of [Number.MAX_VALUE, 1e300, MAX_TIME_MS * 1.0000001, -1e17]) {
      throwsBadMessage(() => decode.putBegin(encode.putBegin({ path: "a", size: 0, mtimeMs, mode: 0 })));
    }
  });

  test("the encoder refuses a u64 it cannot represent exactly", () => {
    for (const size of [2 ** 53, -1, 1.5, Number.NaN]) {
      assert.throws(() => encode.putBegin({ path: "a", size, mtimeMs: 0, mode: 0 }), RangeError, `${size}`);
    }
  });

  test("a WELCOME with a window of zero, or limits out of range, is refused", () => {
    const good = {
      version: 1,
      storeId: "id",
      maxFrame: MAX_FRAME_PAYLOAD,
      window: 64,
      idleTimeoutMs: 30000,
      serverName: "kw",
    };
    assert.equal(decode.welcome(encode.welcome(good)).window, 64);
    for (const bad of [
      { window: 0 },
      { maxFrame: MIN_MAX_FRAME - 1 },
      { maxFrame: MAX_FRAME_PAYLOAD + 1 },
      { idleTimeoutMs: MIN_IDLE_TIMEOUT_MS - 1 },
    ]) {
      throwsBadMessage(() => decode.welcome(encode.welcome({ ...good, ...bad })));
    }
  });

  test("an ERROR with a code this version does not know is kept as KW_BAD_MESSAGE with its text", () => {
    const m = decode.error(w().str("KW_FROM_THE_FUTURE").str("Something new went wrong.").finish());
    assert.deepEqual(m, { code: "KW_BAD_MESSAGE", message: "Something new went wrong." });
  });
});

describe("ERROR messages the peers actually send", () => {
  // assertValidPath quotes the whole path (JSON-escaped), so the text can exceed the ERROR
  // message limit; encode.error must cut it, or the receiver rejects the whole ERROR and a
  // per-request KW_BAD_PATH turns into a closed connection.
  test("the KW_BAD_PATH error for a 4096-byte path still decodes", () => {
    const path = `${"a".repeat(256)}/${"\u0001".repeat(MAX_PATH_BYTES - 257)}`;
    assert.equal(Buffer.byteLength(path), MAX_PATH_BYTES);
    let error: unknown;
    try {
      assertValidPath(path);
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof KeepwatchError && error.code === "KW_BAD_PATH");
    assert.ok(Buffer.byteLength(error.message) > MAX_TEXT_BYTES);
    const m = decode.error(encode.error({ code: error.code, message: error.message }));
    assert.equal(m.code, "KW_BAD_PATH");
    assert.ok(Buffer.byteLength(m.message) <= MAX_TEXT_BYTES);
    assert.ok(m.message.startsWith("The path "));
  });

  test("property: truncateUtf8 fits the limit, keeps short texts and cuts at a character", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ unit: "binary", maxLength: 80 }),
          fc.string({ unit: "grapheme", maxLength: 30 }),
        ),
        fc.integer({ min: 3, max: 120 }),
        (textIn, max) => {
          const out = truncateUtf8(textIn, max);
          assert.ok(Buffer.byteLength(out) <= max, `${Buffer.byteLength(out)} > ${max}`);
          if (Buffer.byteLength(textIn) <= max) {
            assert.equal(out, textIn);
          } else {
            assert.ok(out.endsWith("…"));
            assert.ok(textIn.startsWith(out.slice(0, -1)), "not a prefix: a character was cut or changed");
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

/** Any sequence of UTF-16 code units, lone surrogates included, with "/" and "." common. */
const codeUnits = fc.string({
  unit: fc.oneof(
    fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)),
    fc.constantFrom("/", ".", "a", "\ud83d", "\ude00", "\ud83d\ude00"),
  ),
  maxLength: 12,
});

describe("names reach the peer unchanged", () => {
  // FieldWriter.str turns a lone surrogate into U+FFFD; the name rules must refuse such
  // strings, or the server would act on a different name from the one validated.
  test("a lone surrogate makes a path or set name invalid", () => {
    for (const bad of ["a\ud800b", "\udc00", "x/\ud83d", "\ude00\ud83d"]) {
      assert.notEqual(pathProblem(bad), null, JSON.stringify(bad));
      assert.notEqual(setNameProblem(bad), null, JSON.stringify(bad));
    }
    assert.equal(pathProblem("\ud83d\ude00"), null);
    assert.equal(setNameProblem("\ud83d\ude00"), null);
  });

  test("property: every path pathProblem accepts survives encode and decode exactly", () => {
    fc.assert(
      fc.property(codeUnits, (path) => {
        if (pathProblem(path) !== null) return;
        assert.equal(decode.delete(encode.delete({ path })).path, path);
        assert.equal(decode.putBegin(encode.putBegin({ path, size: 0, mtimeMs: 0, mode: 0 })).path, path);
      }),
      { numRuns: 2000 },
    );
  });

  test("property: every set name setNameProblem accepts survives HELLO exactly", () => {
    fc.assert(
      fc.property(codeUnits, (setName) => {
        if (setNameProblem(setName) !== null) return;
        const hello = { minVersion: 1, maxVersion: 1, clientName: "c", setName, token: Buffer.alloc(0) };
        assert.equal(decode.hello(encode.hello(hello)).setName, setName);
      }),
      { numRuns: 2000 },
    );
  });
});
