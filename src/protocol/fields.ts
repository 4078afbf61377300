// Typed field encoding for control messages: big-endian integers, length-prefixed UTF-8
// strings and byte strings. Decoding is strict: every length is bounded, strings must be
// valid UTF-8, and a message must be consumed exactly.

import { ProtocolError } from "../errors.js";

/** The largest time (ms since the epoch, either side) a message may carry: that of a Date. */
export const MAX_TIME_MS = 8.64e15;

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export class FieldWriter {
  private parts: Buffer[] = [];
  private length = 0;

  private push(part: Buffer): this {
    this.parts.push(part);
    this.length += part.length;
    return this;
  }

  u8(value: number): this {
    const b = Buffer.allocUnsafe(1);
    b.writeUInt8(value);
    return this.push(b);
  }

  u16(value: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16BE(value);
    return this.push(b);
  }

  u32(value: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(value);
    return this.push(b);
  }

  /** Unsigned 64-bit integer; values above 2^53-1 cannot be represented and are refused. */
  u64(value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(`u64 field out of range: ${value}`);
    }
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(BigInt(value));
    return this.push(b);
  }

  f64(value: number): this {
    if (!Number.isFinite(value)) throw new RangeError(`f64 field is not finite: ${value}`);
    const b = Buffer.allocUnsafe(8);
    b.writeDoubleBE(value);
    return this.push(b);
  }

  /** u32 byte length, then UTF-8 bytes. */
  str(value: string): this {
    const bytes = Buffer.from(value, "utf8");
    this.u32(bytes.length);
    return this.push(bytes);
  }

  /** u32 byte length, then the bytes. */
  bytes(value: Uint8Array): this {
    this.u32(value.length);
    return this.push(Buffer.from(value.buffer, value.byteOffset, value.length));
  }

  finish(): Buffer {
    return Buffer.concat(this.parts, this.length);
  }
}

export class FieldReader {
  private offset = 0;

  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}

  private take(n: number, field: string): Buffer {
    if (this.offset + n > this.buf.length) {
      throw new ProtocolError("KW_BAD_MESSAGE", `The ${this.what} message ends inside its ${field} field.`);
    }
    const out = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return out;
  }

  u8(field: string): number {
    return this.take(1, field).readUInt8(0);
  }

  u16(field: string): number {
    return this.take(2, field).readUInt16BE(0);
  }

  u32(field: string): number {
    return this.take(4, field).readUInt32BE(0);
  }

  u64(field: string): number {
    const v = this.take(8, field).readBigUInt64BE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ProtocolError("KW_BAD_MESSAGE", `The ${this.what} message's ${field} is larger than 2^53-1.`);
    }
    return Number(v);
  }

  f64(field: string): number {
    const v = this.take(8, field).readDoubleBE(0);
    if (!Number.isFinite(v)) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `The ${this.what} message's ${field} is not a finite number.`,
      );
    }
    return v;
  }

  /**
   * A time in milliseconds since the epoch: a finite f64 within ±8.64e15, the range of a
   * date (100,000,000 days either side of 1970). Beyond it no clock or file system can
   * hold the value.
   */
  time(field: string): number {
    const v = this.f64(field);
    if (Math.abs(v) > MAX_TIME_MS) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `The ${this.what} message's ${field} (${v}) lies beyond the range of a date (±8.64e15 ms).`,
      );
    }
    return v;
  }

  str(field: string, maxBytes: number): string {
    const n = this.u32(field);
    if (n > maxBytes) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `The ${this.what} message's ${field} is ${n} bytes long; at most ${maxBytes} are allowed.`,
      );
    }
    const raw = this.take(n, field);
    try {
      return utf8.decode(raw);
    } catch {
      throw new ProtocolError("KW_BAD_MESSAGE", `The ${this.what} message's ${field} is not valid UTF-8.`);
    }
  }

  bytes(field: string, maxBytes: number): Buffer {
    const n = this.u32(field);
    if (n > maxBytes) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `The ${this.what} message's ${field} is ${n} bytes long; at most ${maxBytes} are allowed.`,
      );
    }
    return Buffer.from(this.take(n, field));
  }

  /** Fixed-length byte string (for example a SHA-256 digest). */
  fixed(field: string, length: number): Buffer {
    const n = this.u32(field);
    if (n !== length) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `The ${this.what} message's ${field} must be ${length} bytes, not ${n}.`,
      );
    }
    return Buffer.from(this.take(n, field));
  }

  end(): void {
    if (this.offset !== this.buf.length) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `The ${this.what} message has ${this.buf.length - this.offset} unexpected trailing bytes.`,
      );
    }
  }
}
