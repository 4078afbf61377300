// A hand-made keepwatch client for tests: real frames from the real encoders on a real
// socket (TLS by default), with helpers to wait for and check the server's answers.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { connect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { encodeFrame, type Frame, FrameDecoder, MAGIC } from "../src/protocol/frame.js";
import {
  decode,
  encode,
  MessageType,
  messageTypeName,
  PROTOCOL_VERSION,
  type Welcome,
} from "../src/protocol/messages.js";
import { readLocalAccess } from "../src/security/local-access.js";
import { LOOPBACK, sleep } from "./helpers.js";

/** How long an answer may take before a case fails. */
export const ANSWER_MS = 3000;

export interface RawClient {
  readonly socket: Socket;
  /** The TCP socket under the TLS one (the same as `socket` for plain TCP). */
  readonly tcp: Socket;
  /** Resolves when the socket is closed (by the server, or by us). */
  readonly closed: Promise<void>;
  readonly isClosed: boolean;
  /** PINGs the server sent (each was answered with a PONG). */
  readonly pings: number;
  /** Frames received and not taken yet by nextFrame/waitFor. */
  readonly queued: readonly Frame[];
  send(type: number, id: number, payload?: Buffer): void;
  /** Raw bytes, for broken frames and several frames in one write. */
  write(bytes: Buffer): void;
  nextFrame(timeoutMs?: number): Promise<Frame>;
  waitFor(what: string, predicate: (frame: Frame) => boolean, timeoutMs?: number): Promise<Frame>;
  /** HELLO with this build's protocol version and the client's token; resolves with the WELCOME. */
  hello(set: string): Promise<Welcome>;
  destroy(): void;
}

const openClients = new Set<RawClient>();

export function closeAllClients(): void {
  for (const client of openClients) client.destroy();
  openClients.clear();
}

export interface RawClientOptions {
  /** Send the preamble (default true). */
  magic?: boolean;
  /** Plain TCP, for a server started with --insecure (default: TLS, any certificate). */
  plain?: boolean;
  /** The HELLO token `hello()` sends (default: the one given to setRawToken). */
  token?: Buffer;
  /** Told of every set that got a WELCOME. */
  onWelcome?: (set: string) => void;
  /** Answer the server's PINGs (default true); false plays a peer that went silent. */
  answerPings?: boolean;
}

let defaultToken: Buffer = Buffer.alloc(0);

/** The token every raw client's hello() sends unless told otherwise. */
export function setRawToken(token: Buffer): void {
  defaultToken = token;
}

/** The secret a server wrote for its own user (src/security/local-access.ts), as a token. */
export async function localToken(configDir: string, port: number): Promise<Buffer> {
  const access = await readLocalAccess(configDir, port);
  if (!access) throw new Error(`no local-access file for port ${port} in ${configDir}`);
  return Buffer.from(access.secret, "utf8");
}

/**
 * Connect to 127.0.0.1:`port` over TLS (accepting any certificate: these tests are about
 * what comes after) or plain TCP, and send the preamble (unless `magic` is false).
 */
export async function rawClient(port: number, options: RawClientOptions = {}): Promise<RawClient> {
  const tcp = connect({ host: LOOPBACK, port });
  const socket: Socket = options.plain
    ? tcp
    : tlsConnect({ socket: tcp, rejectUnauthorized: false, minVersion: "TLSv1.3" });
  const token = options.token ?? defaultToken;
  const decoder = new FrameDecoder();
  const queue: Frame[] = [];
  let waiters: (() => void)[] = [];
  let isClosed = false;
  let decodeError: unknown = null;
  let pings = 0;
  const wake = () => {
    const now = waiters;
    waiters = [];
    for (const fn of now) fn();
  };
  const changed = () => new Promise<void>((resolvePromise) => waiters.push(resolvePromise));
  socket.on("error", () => {
    // ECONNRESET and the like: "closed" says it.
  });
  const closed = new Promise<void>((resolvePromise) =>
    socket.on("close", () => {
      isClosed = true;
      wake();
      resolvePromise();
    }),
  );
  socket.on("data", (chunk: Buffer) => {
    let frames: Frame[];
    try {
      frames = decoder.push(chunk);
    } catch (error) {
      decodeError = error;
      socket.destroy();
      wake();
      return;
    }
    for (const frame of frames) {
      if (frame.type === MessageType.PING) {
        pings++;
        if ((options.answerPings ?? true) && socket.writable) {
          socket.write(encodeFrame(MessageType.PONG, frame.requestId));
        }
        continue;
      }
      queue.push(frame);
    }
    wake();
  });
  await new Promise<void>((resolvePromise, reject) => {
    socket.once(options.plain ? "connect" : "secureConnect", () => resolvePromise());
    socket.once("error", reject);
  });
  if (options.magic ?? true) socket.write(MAGIC);

  const take = async (
    what: string,
    predicate: (frame: Frame) => boolean,
    timeoutMs: number,
  ): Promise<Frame> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = queue.findIndex(predicate);
      if (index >= 0) return queue.splice(index, 1)[0] as Frame;
      if (decodeError !== null) {
        throw new Error(`waiting for ${what}: the server's bytes did not decode: ${String(decodeError)}`);
      }
      const received = queue.length === 0 ? "nothing" : queue.map(showFrame).join(" | ");
      if (isClosed) throw new Error(`waiting for ${what}: the connection closed; received ${received}`);
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`waiting for ${what}: nothing within ${timeoutMs} ms; received ${received}`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        changed(),
        new Promise<void>((resolvePromise) => {
          timer = setTimeout(resolvePromise, left);
        }),
      ]);
      clearTimeout(timer);
    }
  };

  const client: RawClient = {
    socket,
    tcp,
    closed,
    get isClosed() {
      return isClosed;
    },
    get pings() {
      return pings;
    },
    get queued() {
      return queue;
    },
    send(type, id, payload) {
      socket.write(encodeFrame(type, id, payload));
    },
    write(bytes) {
      socket.write(bytes);
    },
    nextFrame(timeoutMs = ANSWER_MS) {
      return take("the next frame", () => true, timeoutMs);
    },
    waitFor(what, predicate, timeoutMs = ANSWER_MS) {
      return take(what, predicate, timeoutMs);
    },
    async hello(set) {
      client.send(MessageType.HELLO, 0, helloPayload(set, PROTOCOL_VERSION, PROTOCOL_VERSION, token));
      const frame = await client.nextFrame();
      assert.equal(
        showFrame(frame),
        `WELCOME id 0`,
        `HELLO for set ${JSON.stringify(set)} (${errorText(frame)})`,
      );
      options.onWelcome?.(set);
      return decode.welcome(frame.payload);
    },
    destroy() {
      socket.destroy();
      openClients.delete(client);
    },
  };
  openClients.add(client);
  return client;
}

export function helloPayload(
  setName: string,
  minVersion = PROTOCOL_VERSION,
  maxVersion = PROTOCOL_VERSION,
  token: Buffer = defaultToken,
): Buffer {
  return encode.hello({ minVersion, maxVersion, clientName: "raw-test-client", setName, token });
}

/** "ERROR id 3 KW_BAD_PATH", "ACK id 2", "WELCOME id 0": what a frame is, for assertions. */
export function showFrame(frame: Frame): string {
  const name = messageTypeName(frame.type);
  if (frame.type === MessageType.ERROR) {
    try {
      return `ERROR id ${frame.requestId} ${decode.error(frame.payload).code}`;
    } catch (error) {
      return `ERROR id ${frame.requestId} (undecodable: ${String(error)})`;
    }
  }
  return `${name} id ${frame.requestId}`;
}

export function errorText(frame: Frame): string {
  try {
    return frame.type === MessageType.ERROR ? decode.error(frame.payload).message : "";
  } catch {
    return "";
  }
}

/** The next frame must be ERROR `code` for request `id`. */
export async function expectError(client: RawClient, id: number, code: string, what: string): Promise<Frame> {
  const frame = await client.nextFrame();
  assert.equal(showFrame(frame), `ERROR id ${id} ${code}`, `${what} (message: ${errorText(frame)})`);
  return frame;
}

/** The answer for request `id` (answers may come in any order) must be an ACK. */
export async function expectAck(client: RawClient, id: number, what: string): Promise<void> {
  const frame = await client.waitFor(`the answer to request ${id} (${what})`, (f) => f.requestId === id);
  assert.equal(showFrame(frame), `ACK id ${id}`, `${what} (message: ${errorText(frame)})`);
  assert.equal(frame.payload.length, 0, `${what}: ACK has an empty payload`);
}

/** The server closes the connection within `timeoutMs`, having sent nothing more. */
export async function expectClosed(client: RawClient, what: string, timeoutMs = ANSWER_MS): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    client.closed.then(() => false),
    new Promise<boolean>((resolvePromise) => {
      timer = setTimeout(() => resolvePromise(true), timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  assert.equal(timedOut, false, `${what}: the server should close the connection within ${timeoutMs} ms`);
  assert.deepEqual(client.queued.map(showFrame), [], `${what}: nothing more after the ERROR`);
  client.destroy();
}

/** Nothing arrives for `ms` and the connection stays open. */
export async function expectSilence(client: RawClient, ms: number, what: string): Promise<void> {
  await sleep(ms);
  assert.deepEqual(client.queued.map(showFrame), [], `${what}: no further frame`);
  assert.equal(client.isClosed, false, `${what}: the connection stays open`);
}

// ---------------------------------------------------------------------------------------
// Request frames, built with the real encoders

/** PUT_DATA frames carry at most this much (the reference client's piece size). */
export const DATA_CHUNK = 256 * 1024;

export function sha256(content: Buffer): Buffer {
  return createHash("sha256").update(content).digest();
}

export interface PutOptions {
  mtimeMs?: number;
  mode?: number;
  /** Digest to send in PUT_END (default: the content's). */
  digest?: Buffer;
  /** Size to announce (default: the content's). */
  size?: number;
}

export function putBegin(id: number, path: string, size: number, options: PutOptions = {}): Buffer {
  return encodeFrame(
    MessageType.PUT_BEGIN,
    id,
    encode.putBegin({
      path,
      size,
      mtimeMs: options.mtimeMs ?? 1_600_000_000_000,
      mode: options.mode ?? 0o644,
    }),
  );
}

export function putData(id: number, content: Buffer): Buffer[] {
  const frames: Buffer[] = [];
  for (let off = 0; off < content.length; off += DATA_CHUNK) {
    frames.push(encodeFrame(MessageType.PUT_DATA, id, content.subarray(off, off + DATA_CHUNK)));
  }
  return frames;
}

export function putEnd(id: number, digest: Buffer): Buffer {
  return encodeFrame(MessageType.PUT_END, id, encode.putEnd({ sha256: digest }));
}

export function putAbort(id: number, reason = "the test gave up"): Buffer {
  return encodeFrame(MessageType.PUT_ABORT, id, encode.putAbort({ reason }));
}

/** All frames of one PUT: BEGIN, DATA..., END. */
export function putFrames(id: number, path: string, content: Buffer, options: PutOptions = {}): Buffer {
  return Buffer.concat([
    putBegin(id, path, options.size ?? content.length, options),
    ...putData(id, content),
    putEnd(id, options.digest ?? sha256(content)),
  ]);
}

export function mkdirFrame(id: number, path: string, mode = 0o755): Buffer {
  return encodeFrame(MessageType.MKDIR, id, encode.mkdir({ path, mode }));
}

export function deleteFrame(id: number, path: string): Buffer {
  return encodeFrame(MessageType.DELETE, id, encode.delete({ path }));
}
