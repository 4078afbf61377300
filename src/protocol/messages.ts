// Every message of protocol v1: its type number, its fields, and its encoder and decoder.
// Wire types are converted to domain values here, at the edge; docs/protocol.md is the
// specification this file implements.

import { type ErrorCode, isErrorCode, ProtocolError } from "../errors.js";
import { FieldReader, FieldWriter } from "./fields.js";
import { MAX_FRAME_PAYLOAD } from "./frame.js";

/** The TCP port both sides use unless told otherwise. */
export const DEFAULT_PORT = 7468;
export const PROTOCOL_VERSION = 5;
export const MIN_PROTOCOL_VERSION = 3;

/** Longest path (in UTF-8 bytes) a message may carry; see paths.ts for the full rules. */
export const MAX_PATH_BYTES = 4096;
export const MAX_NAME_BYTES = 255;
/**
 * What a decoder accepts for a path or set-name field. It is larger than the rules
 * allow so that an overlong name is refused by those rules with KW_BAD_PATH or
 * KW_BAD_SET_NAME (a typed answer) rather than as a malformed message.
 */
export const MAX_WIRE_PATH_BYTES = 16 * 1024;
export const MAX_WIRE_NAME_BYTES = 1024;
/** Smallest maximum frame payload and idle timeout a server may announce. */
export const MIN_MAX_FRAME = 64 * 1024;
export const MIN_IDLE_TIMEOUT_MS = 1000;
export const MAX_TEXT_BYTES = 4096;
export const MAX_TOKEN_BYTES = 1024;
export const SHA256_BYTES = 32;

export const MessageType = {
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
} as const;

export type MessageTypeName = keyof typeof MessageType;

const typeNames = new Map<number, MessageTypeName>(
  Object.entries(MessageType).map(([name, value]) => [value, name as MessageTypeName]),
);

export function messageTypeName(type: number): string {
  return typeNames.get(type) ?? `0x${type.toString(16).padStart(4, "0")}`;
}

export interface Hello {
  minVersion: number;
  maxVersion: number;
  clientName: string;
  setName: string;
  /** The client's secret in UTF-8 (protocol section 12.2). */
  token: Buffer;
}

export interface Welcome {
  version: number;
  /** Identifies the server's storage; client state is kept per store and set. */
  storeId: string;
  maxFrame: number;
  /** Most requests a client may have in flight. */
  window: number;
  /** The server closes a connection that sends nothing for this long. */
  idleTimeoutMs: number;
  serverName: string;
}

export interface ErrorMessage {
  code: ErrorCode;
  message: string;
}

export interface PutBegin {
  path: string;
  size: number;
  mtimeMs: number;
  mode: number;
}

export interface PutEnd {
  sha256: Buffer;
}

export interface PutAbort {
  reason: string;
}

export interface Mkdir {
  path: string;
  mode: number;
}

export interface Delete {
  path: string;
}

/** `text` cut to at most `maxBytes` of UTF-8, never inside a character. */
export function truncateUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text, "utf8") <= maxBytes) return text;
  const ellipsis = "…";
  const cut = Buffer.from(text, "utf8").subarray(0, maxBytes - Buffer.byteLength(ellipsis));
  // A character cut in two decodes as U+FFFD at the very end: drop it.
  const head = cut.toString("utf8").replace(/\uFFFD$/, "");
  return `${head}${ellipsis}`;
}

export const encode = {
  hello(m: Hello): Buffer {
    return new FieldWriter()
      .u16(m.minVersion)
      .u16(m.maxVersion)
      .str(m.clientName)
      .str(m.setName)
      .bytes(m.token)
      .finish();
  },
  welcome(m: Welcome): Buffer {
    return new FieldWriter()
      .u16(m.version)
      .str(m.storeId)
      .u32(m.maxFrame)
      .u16(m.window)
      .u32(m.idleTimeoutMs)
      .str(m.serverName)
      .finish();
  },
  error(m: ErrorMessage): Buffer {
    return new FieldWriter().str(m.code).str(truncateUtf8(m.message, MAX_TEXT_BYTES)).finish();
  },
  putBegin(m: PutBegin): Buffer {
    return new FieldWriter().str(m.path).u64(m.size).f64(m.mtimeMs).u32(m.mode).finish();
  },
  putEnd(m: PutEnd): Buffer {
    return new FieldWriter().bytes(m.sha256).finish();
  },
  putAbort(m: PutAbort): Buffer {
    return new FieldWriter().str(m.reason).finish();
  },
  mkdir(m: Mkdir): Buffer {
    return new FieldWriter().str(m.path).u32(m.mode).finish();
  },
  delete(m: Delete): Buffer {
    return new FieldWriter().str(m.path).finish();
  },
  empty(): Buffer {
    return Buffer.alloc(0);
  },
};

export const decode = {
  hello(payload: Buffer): Hello {
    const r = new FieldReader(payload, "HELLO");
    const m: Hello = {
      minVersion: r.u16("minVersion"),
      maxVersion: r.u16("maxVersion"),
      clientName: r.str("clientName", MAX_NAME_BYTES),
      setName: r.str("setName", MAX_WIRE_NAME_BYTES),
      token: r.bytes("token", MAX_TOKEN_BYTES),
    };
    r.end();
    return m;
  },
  welcome(payload: Buffer): Welcome {
    const r = new FieldReader(payload, "WELCOME");
    const m: Welcome = {
      version: r.u16("version"),
      storeId: r.str("storeId", MAX_NAME_BYTES),
      maxFrame: r.u32("maxFrame"),
      window: r.u16("window"),
      idleTimeoutMs: r.u32("idleTimeoutMs"),
      serverName: r.str("serverName", MAX_NAME_BYTES),
    };
    r.end();
    if (m.window < 1) throw new ProtocolError("KW_BAD_MESSAGE", "The WELCOME message's window is zero.");
    if (m.maxFrame < MIN_MAX_FRAME || m.maxFrame > MAX_FRAME_PAYLOAD) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `The WELCOME message's maxFrame ${m.maxFrame} is outside ${MIN_MAX_FRAME}-${MAX_FRAME_PAYLOAD}.`,
      );
    }
    if (m.idleTimeoutMs < MIN_IDLE_TIMEOUT_MS) {
      throw new ProtocolError(
        "KW_BAD_MESSAGE",
        `The WELCOME message's idleTimeoutMs ${m.idleTimeoutMs} is below ${MIN_IDLE_TIMEOUT_MS}.`,
      );
    }
    return m;
  },
  error(payload: Buffer): ErrorMessage {
    const r = new FieldReader(payload, "ERROR");
    const code = r.str("code", 64);
    const message = r.str("message", MAX_TEXT_BYTES);
    r.end();
    // An unknown code from a newer peer is still an error; keep its text, map its code.
    return { code: isErrorCode(code) ? code : "KW_BAD_MESSAGE", message };
  },
  putBegin(payload: Buffer): PutBegin {
    const r = new FieldReader(payload, "PUT_BEGIN");
    const m: PutBegin = {
      path: r.str("path", MAX_WIRE_PATH_BYTES),
      size: r.u64("size"),
      mtimeMs: r.time("mtimeMs"),
      mode: r.u32("mode"),
    };
    r.end();
    return m;
  },
  putEnd(payload: Buffer): PutEnd {
    const r = new FieldReader(payload, "PUT_END");
    const m: PutEnd = { sha256: r.fixed("sha256", SHA256_BYTES) };
    r.end();
    return m;
  },
  putAbort(payload: Buffer): PutAbort {
    const r = new FieldReader(payload, "PUT_ABORT");
    const m: PutAbort = { reason: r.str("reason", MAX_TEXT_BYTES) };
    r.end();
    return m;
  },
  mkdir(payload: Buffer): Mkdir {
    const r = new FieldReader(payload, "MKDIR");
    const m: Mkdir = { path: r.str("path", MAX_WIRE_PATH_BYTES), mode: r.u32("mode") };
    r.end();
    return m;
  },
  delete(payload: Buffer): Delete {
    const r = new FieldReader(payload, "DELETE");
    const m: Delete = { path: r.str("path", MAX_WIRE_PATH_BYTES) };
    r.end();
    return m;
  },
  empty(payload: Buffer, what: string): void {
    new FieldReader(payload, what).end();
  },
};
