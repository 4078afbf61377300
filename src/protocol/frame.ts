// The frame layer: an 8-byte magic preamble, then frames of a 12-byte header and a payload.
// The decoder is an explicit state machine with hard limits; it never buffers more than one
// frame (at most MAX_FRAME_PAYLOAD bytes) whatever the peer claims in a header.

import { ProtocolError } from "../errors.js";

/** Sent first by both sides: "KWATCH" followed by CR LF, so a person reading a capture sees it. */
export const MAGIC = Buffer.from("KWATCH\r\n", "latin1");

export const HEADER_SIZE = 12;

/** Hard upper bound of a frame's payload, in bytes, for every protocol version. */
export const MAX_FRAME_PAYLOAD = 1024 * 1024;

export interface Frame {
  type: number;
  requestId: number;
  payload: Buffer;
  /**
   * The payload as it arrived, in the pieces of the reads that carried it (not copied into
   * one buffer); set only for the types the decoder was told to leave in parts.
   */
  parts?: readonly Buffer[];
}

/**
 * A frame whose payload was left in the pieces it arrived in: a chunk's bytes are hashed,
 * stored and written from them. `payload` joins them the first time it is read.
 */
class PartedFrame implements Frame {
  private joined: Buffer | undefined;

  constructor(
    readonly type: number,
    readonly requestId: number,
    readonly parts: readonly Buffer[],
  ) {}

  get payload(): Buffer {
    this.joined ??= this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts);
    return this.joined;
  }
}

/** The payload of `frame` in parts: those it arrived in, or the one payload. */
export function payloadParts(frame: Frame): readonly Buffer[] {
  return frame.parts ?? [frame.payload];
}

export function encodeFrame(type: number, requestId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = encodeFrameHeader(type, requestId, payload.length);
  return payload.length === 0 ? header : Buffer.concat([header, payload], HEADER_SIZE + payload.length);
}

/** The 12-byte header of a frame whose payload is `length` bytes (sent apart from it). */
export function encodeFrameHeader(type: number, requestId: number, length: number): Buffer {
  if (!Number.isInteger(requestId) || requestId < 0 || requestId > 0xffffffff) {
    throw new RangeError(`request id out of range: ${requestId}`);
  }
  if (length > MAX_FRAME_PAYLOAD) {
    throw new RangeError(`frame payload of ${length} bytes exceeds ${MAX_FRAME_PAYLOAD}`);
  }
  const header = Buffer.allocUnsafe(HEADER_SIZE);
  header.writeUInt32BE(length, 0);
  header.writeUInt16BE(type, 4);
  header.writeUInt16BE(0, 6); // flags: none defined in v1
  header.writeUInt32BE(requestId, 8);
  return header;
}

type DecoderState = "magic" | "header" | "payload" | "failed";

/**
 * Turns a byte stream into frames. `push` returns the frames completed by the bytes given;
 * input may be split anywhere. After a violation it throws once and stays failed.
 */
export class FrameDecoder {
  private state: DecoderState = "magic";
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private header: { length: number; type: number; requestId: number } | null = null;

  /**
   * `parted`: the frame types whose payloads are given in the pieces they arrived in
   * (`Frame.parts`) rather than copied into one buffer.
   */
  constructor(
    private readonly maxPayload: number = MAX_FRAME_PAYLOAD,
    private readonly parted: ReadonlySet<number> = new Set(),
  ) {}

  get buffered(): number {
    return this.pendingBytes;
  }

  push(chunk: Buffer): Frame[] {
    if (this.state === "failed") {
      throw new ProtocolError("KW_BAD_FRAME", "The connection already broke the protocol.");
    }
    if (chunk.length > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
    }
    const frames: Frame[] = [];
    try {
      for (;;) {
        if (this.state === "magic") {
          if (this.pendingBytes < MAGIC.length) {
            // Reject a wrong preamble as early as its first differing byte.
            this.checkMagicPrefix();
            break;
          }
          const got = this.take(MAGIC.length);
          if (!got.equals(MAGIC)) throw notKeepwatch();
          this.state = "header";
        } else if (this.state === "header") {
          if (this.pendingBytes < HEADER_SIZE) break;
          const h = this.take(HEADER_SIZE);
          const length = h.readUInt32BE(0);
          const type = h.readUInt16BE(4);
          const flags = h.readUInt16BE(6);
          const requestId = h.readUInt32BE(8);
          if (length > this.maxPayload) {
            throw new ProtocolError(
              "KW_FRAME_TOO_LARGE",
              `A frame announced ${length} bytes of payload; the limit is ${this.maxPayload}.`,
            );
          }
          if (flags !== 0) {
            throw new ProtocolError(
              "KW_BAD_FRAME",
              `A frame carried flags 0x${flags.toString(16)}; none are defined.`,
            );
          }
          this.header = { length, type, requestId };
          this.state = "payload";
        } else {
          const h = this.header as { length: number; type: number; requestId: number };
          if (this.pendingBytes < h.length) break;
          frames.push(
            this.parted.has(h.type)
              ? new PartedFrame(h.type, h.requestId, this.takeParts(h.length))
              : { type: h.type, requestId: h.requestId, payload: this.take(h.length) },
          );
          this.header = null;
          this.state = "header";
        }
      }
    } catch (error) {
      this.state = "failed";
      this.pending = [];
      this.pendingBytes = 0;
      throw error;
    }
    return frames;
  }

  /** True when the stream ended exactly between two frames (or before its first byte). */
  get atBoundary(): boolean {
    return (this.state === "header" || this.state === "magic") && this.pendingBytes === 0;
  }

  private checkMagicPrefix(): void {
    const got = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending);
    if (got && !MAGIC.subarray(0, got.length).equals(got)) throw notKeepwatch();
  }

  private take(n: number): Buffer {
    const first = this.pending[0];
    if (first && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.pending.shift();
      else this.pending[0] = first.subarray(n);
      this.pendingBytes -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const head = this.pending[0] as Buffer;
      const use = Math.min(head.length, n - filled);
      head.copy(out, filled, 0, use);
      filled += use;
      if (use === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(use);
    }
    this.pendingBytes -= n;
    return out;
  }

  /** The next `n` bytes as views of the pieces that hold them (no copy). */
  private takeParts(n: number): Buffer[] {
    const parts: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const head = this.pending[0] as Buffer;
      if (head.length <= left) {
        parts.push(head);
        this.pending.shift();
        left -= head.length;
      } else {
        parts.push(head.subarray(0, left));
        this.pending[0] = head.subarray(left);
        left = 0;
      }
    }
    this.pendingBytes -= n;
    return parts;
  }
}

function notKeepwatch(): ProtocolError {
  return new ProtocolError(
    "KW_BAD_MAGIC",
    "The peer does not speak the keepwatch protocol (wrong preamble); check the host and port.",
  );
}
