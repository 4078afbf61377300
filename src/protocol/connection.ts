// One keepwatch connection over a byte stream (TCP now, TLS later): sends the preamble,
// decodes frames, hands them one at a time to an async handler (pausing the socket while
// the handler is behind, which is the protocol's flow control), keeps the link alive with
// PING/PONG and closes it with a typed error when the peer breaks the rules or goes silent.

import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { TLSSocket } from "node:tls";
import { type Bytes, bytesOf, partsOf } from "../bytes.js";
import { ErrorCodes, KeepwatchError, ProtocolError } from "../errors.js";
import { encodeFrameHeader, type Frame, FrameDecoder, MAGIC, MAX_FRAME_PAYLOAD } from "./frame.js";
import { decode, encode, MessageType } from "./messages.js";

export interface ConnectionOptions {
  /** Close the connection when nothing arrives for this long (ms). */
  idleTimeoutMs: number;
  /** Send a PING when nothing was sent for this long (ms). */
  keepaliveMs: number;
  /** Largest payload accepted from the peer. */
  maxPayload?: number;
}

export type FrameHandler = (frame: Frame) => void | Promise<void>;

/**
 * The frames whose payloads are handed over in the pieces they arrived in: a chunk is
 * hashed, stored and written from the TLS records that carried it, not first copied out.
 */
const PARTED_TYPES: ReadonlySet<number> = new Set([MessageType.CHUNK]);

/** Frames decoded but not yet handled before the socket is paused. */
const QUEUE_HIGH_WATER = 64;

// Typed "close" listeners; the class below implements them through EventEmitter.
export interface Connection {
  on(event: "close", listener: (error: KeepwatchError | null) => void): this;
  once(event: "close", listener: (error: KeepwatchError | null) => void): this;
}

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: see the interface above
export class Connection extends EventEmitter {
  readonly socket: Socket;
  private readonly decoder: FrameDecoder;
  private readonly queue: Frame[] = [];
  private handler: FrameHandler | null = null;
  private draining = false;
  private closed = false;
  private closeError: KeepwatchError | null = null;
  private lastReceived = Date.now();
  private lastSent = Date.now();
  private timer: NodeJS.Timeout | undefined;
  private bytesIn = 0;
  private bytesOut = 0;
  private handshaken: boolean;

  constructor(
    socket: Socket,
    private options: ConnectionOptions,
  ) {
    super();
    this.socket = socket;
    this.decoder = new FrameDecoder(options.maxPayload ?? MAX_FRAME_PAYLOAD, PARTED_TYPES);
    socket.setNoDelay(true);
    this.handshaken = !(socket instanceof TLSSocket);
    if (!this.handshaken) {
      const done = () => {
        this.handshaken = true;
      };
      socket.once("secure", done);
      socket.once("secureConnect", done);
    }
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("end", () => {
      if (!this.closed) {
        const clean = this.decoder.atBoundary;
        this.finish(
          clean
            ? null
            : new ProtocolError("KW_BAD_FRAME", "The peer closed the connection in the middle of a frame."),
        );
      }
    });
    socket.on("error", (error: Error) => this.finish(describeSocketError(error)));
    socket.on("close", () => this.finish(this.closeError));
    this.write(MAGIC);
    this.timer = this.startTimer();
  }

  /** The keep-alive and idle check runs four times per the shorter of the two periods. */
  private startTimer(): NodeJS.Timeout {
    const tick = Math.max(20, Math.min(this.options.keepaliveMs, this.options.idleTimeoutMs) / 4);
    const timer = setInterval(() => this.onTick(), tick);
    timer.unref();
    return timer;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** False while a TLS handshake is under way: nothing can reach the peer yet. */
  get isHandshaken(): boolean {
    return this.handshaken;
  }

  get counters(): { bytesIn: number; bytesOut: number } {
    return { bytesIn: this.bytesIn, bytesOut: this.bytesOut };
  }

  /** Change the timing after the handshake negotiated it. */
  setTiming(options: Pick<ConnectionOptions, "idleTimeoutMs" | "keepaliveMs">): void {
    this.options = { ...this.options, ...options };
    if (this.closed) return;
    clearInterval(this.timer);
    this.timer = this.startTimer();
  }

  /** Start delivering frames; the handler sees them in order, one at a time. */
  setHandler(handler: FrameHandler): void {
    this.handler = handler;
    void this.drain();
  }

  /**
   * Queue a frame; false means the socket's buffer is full and the caller should wait. A
   * payload given in parts goes out as they are, after the header, without being joined
   * first (a chunk's bytes are not copied into a frame of their own).
   */
  send(type: number, requestId: number, payload?: Bytes): boolean {
    if (this.closed) return false;
    const parts = payload === undefined ? [] : partsOf(payload);
    const header = encodeFrameHeader(type, requestId, bytesOf(parts));
    if (parts.length === 0) return this.write(header);
    this.socket.cork();
    this.write(header);
    let room = true;
    for (const part of parts) room = this.write(part);
    this.socket.uncork();
    return room;
  }

  /** Send a frame and wait until the socket can take more (the sender's flow control). */
  async sendAndWait(type: number, requestId: number, payload?: Bytes): Promise<void> {
    if (this.send(type, requestId, payload) || this.closed) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off("drain", done);
        this.off("close", done);
        resolve();
      };
      this.socket.on("drain", done);
      this.once("close", done);
    });
  }

  /** Report `error` to the peer; a code that is not part of the protocol goes out as KW_SERVER_IO. */
  sendError(requestId: number, error: KeepwatchError): void {
    const onWire = ErrorCodes[error.code].wire;
    this.send(
      MessageType.ERROR,
      requestId,
      encode.error({ code: onWire ? error.code : "KW_SERVER_IO", message: error.message }),
    );
  }

  /**
   * Close because of `error`: tell the peer with an ERROR for request 0 when it is a code
   * the wire knows, then end the stream. No further frame is handled.
   */
  fail(error: KeepwatchError): void {
    if (this.closed) return;
    this.closeError = error;
    this.queue.length = 0;
    this.sendError(0, error);
    this.socket.end();
    // A peer that never reads must not keep the socket open forever.
    setTimeout(() => this.socket.destroy(), 2000).unref();
    this.finish(error);
  }

  /** End the connection without an error (after BYE, or on shutdown). */
  end(): void {
    if (this.closed) return;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2000).unref();
    this.finish(null);
  }

  destroy(error: KeepwatchError | null = null): void {
    this.socket.destroy();
    this.finish(error);
  }

  private write(bytes: Buffer): boolean {
    this.lastSent = Date.now();
    this.bytesOut += bytes.length;
    return this.socket.write(bytes);
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.lastReceived = Date.now();
    this.bytesIn += chunk.length;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (error) {
      this.fail(error instanceof KeepwatchError ? error : new ProtocolError("KW_BAD_FRAME", String(error)));
      return;
    }
    for (const frame of frames) {
      // Keep-alive traffic is answered here so that a busy handler cannot starve it.
      if (frame.type === MessageType.PING) {
        if (frame.payload.length !== 0) {
          this.fail(new ProtocolError("KW_BAD_MESSAGE", "A PING message carried a payload."));
          return;
        }
        this.send(MessageType.PONG, frame.requestId);
        continue;
      }
      if (frame.type === MessageType.PONG) {
        if (frame.payload.length !== 0) {
          this.fail(new ProtocolError("KW_BAD_MESSAGE", "A PONG message carried a payload."));
          return;
        }
        continue;
      }
      this.queue.push(frame);
    }
    if (this.queue.length >= QUEUE_HIGH_WATER) this.socket.pause();
    void this.drain();
  }

  private async drain(): Promise<void> {
    if (this.draining || !this.handler) return;
    this.draining = true;
    try {
      while (!this.closed && this.queue.length > 0) {
        const frame = this.queue.shift() as Frame;
        try {
          await this.handler(frame);
        } catch (error) {
          if (error instanceof KeepwatchError) {
            this.fail(error);
          } else {
            this.fail(
              new KeepwatchError(
                "KW_SERVER_IO",
                `An internal error stopped the connection: ${String(error)}.`,
              ),
            );
          }
          return;
        }
        if (this.queue.length < QUEUE_HIGH_WATER / 2 && this.socket.isPaused()) {
          this.lastReceived = Date.now();
          this.socket.resume();
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private onTick(): void {
    if (this.closed) return;
    const now = Date.now();
    // While we hold the socket paused, silence is ours, not the peer's.
    if (this.socket.isPaused()) this.lastReceived = now;
    if (now - this.lastReceived > this.options.idleTimeoutMs) {
      this.fail(
        new KeepwatchError(
          "KW_TIMEOUT",
          `The peer sent nothing for ${formatSeconds(this.options.idleTimeoutMs)}, so the connection was closed.`,
        ),
      );
      return;
    }
    if (now - this.lastSent >= this.options.keepaliveMs) this.send(MessageType.PING, 0);
  }

  private finish(error: KeepwatchError | null): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    this.closeError = error;
    clearInterval(this.timer);
    this.queue.length = 0;
    this.emit("close", error);
  }
}

function formatSeconds(ms: number): string {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}

/** Decode an ERROR payload into the error the peer reported. */
export function decodeRemoteError(payload: Buffer): { code: string; message: string } {
  return decode.error(payload);
}

/** A socket's error as one sentence; a TLS failure says what most likely caused it. */
function describeSocketError(error: Error): KeepwatchError {
  const reason = tlsFailureReason(error);
  if (reason !== null) {
    return new KeepwatchError(
      "KW_TLS_FAILED",
      `The TLS handshake failed (${reason}); the peer may not speak TLS 1.3, for example a keepwatch started with --insecure.`,
    );
  }
  return new KeepwatchError("KW_CONNECTION_LOST", `The connection failed: ${error.message}.`);
}

/**
 * OpenSSL's short reason ("wrong version number") when `error` comes from the TLS layer,
 * else null. Node reports some as ERR_SSL_* and some as a system error EPROTO whose
 * message holds OpenSSL's text.
 */
export function tlsFailureReason(error: Error): string | null {
  const code = (error as { code?: unknown }).code;
  const isTls =
    (typeof code === "string" && (code === "EPROTO" || /^ERR_(SSL|TLS)_/.test(code))) ||
    error.message.includes("SSL routines");
  if (!isTls) return null;
  const reason = (error as { reason?: unknown }).reason;
  if (typeof reason === "string") return reason;
  const match = /SSL routines:[^:]*:([^:]+):/.exec(error.message);
  return match?.[1] ?? (typeof code === "string" ? code : "TLS error");
}
