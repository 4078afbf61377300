// The fuzzer's second mode: a storm of requests whose path field is mutated (characters
// inserted, deleted, replaced, doubled; dot segments, slashes, NUL, backslashes, long
// runs, lone surrogates), each in a frame that is otherwise well formed, so that the
// connection lives on and every mutated frame reaches the path rules of its message
// type (MKDIR, DELETE, PUT_REF, LIST, RESTORE, PUT_BEGIN, MANIFEST_BEGIN). Each answer
// must be an ERROR or an ACK for that request, never for request 0 and never twice;
// whatever a path makes, it must land inside the set's folder (the caller checks DEST).
// fuzz-lib.ts's mixed mode covers whole conversations and byte-level damage.

import { createHash, randomBytes } from "node:crypto";
import { connect } from "node:net";
import { encodeFrame, type Frame, FrameDecoder, MAGIC } from "../src/protocol/frame.js";
import { encodeHistory } from "../src/protocol/history-messages.js";
import {
  decode,
  encode,
  MAX_WIRE_PATH_BYTES,
  MessageType,
  messageTypeName,
  PROTOCOL_VERSION,
} from "../src/protocol/messages.js";
import { Rng } from "./fuzz-lib.js";

export interface StormOptions {
  port: number;
  token: Buffer;
  seed: number;
  /** Mutated frames to deliver (answered by the server). */
  frames: number;
  /** The prefix of the sets the connections bind to (one set per connection). */
  set: string;
  /** Connections at once (default 4). */
  concurrency?: number;
  signal?: AbortSignal;
}

export interface StormStats {
  /** Mutated frames the server answered. */
  mutated: number;
  /** Frames sent in all (mutated ones, and the PUT_ABORT / MANIFEST_END that close refused requests). */
  frames: number;
  connections: number;
  elapsedMs: number;
  /** Answers by type and code. */
  answers: Map<string, number>;
  /** What broke the rules: a request answered twice or not at all, an ERROR for the connection. */
  findings: string[];
  /** The first few distinct KW_SERVER_IO sentences: the server failed at something. */
  serverIo: string[];
}

/** Requests in flight per connection: half the server's window. */
const BATCH = 32;
/**
 * Batches per connection, each connection on a set of its own: the PUTs whose mutated path
 * is valid fill the set, and a LIST or RESTORE of a short path answers with all of it, so
 * a set that grew without end would slow the storm down more and more.
 */
const BATCHES_PER_CONNECTION = 40;
const ANSWER_MS = 10_000;
const SEEDS_PATHS = ["a.txt", "docs/notes.md", "deep/er/still/file.bin", "x", "ünï/cødé.txt", "dir"];
const PIECES = [
  "..",
  ".",
  "/",
  "//",
  "\0",
  "\\",
  " ",
  "~",
  ":",
  "%2e",
  "\u202e",
  "\ud800",
  "\udfff",
  "é",
  "\n",
  "\t",
];

/**
 * A few mutations of a valid path. Any string encodes (a lone surrogate becomes U+FFFD)
 * and stays within the decoder's 16 KiB for a path field, so the frame itself is sound.
 */
export function mutatePath(rng: Rng): string {
  for (;;) {
    const path = mutateOnce(rng);
    if (Buffer.byteLength(path, "utf8") <= MAX_WIRE_PATH_BYTES) return path;
  }
}

function mutateOnce(rng: Rng): string {
  let path = rng.pick(SEEDS_PATHS);
  const steps = rng.between(1, 4);
  for (let i = 0; i < steps; i++) {
    const at = rng.int(path.length + 1);
    switch (rng.int(6)) {
      case 0:
        path = path.slice(0, at) + rng.pick(PIECES) + path.slice(at);
        break;
      case 1:
        path = path.slice(0, at) + path.slice(at + rng.between(1, 3));
        break;
      case 2:
        path = `${rng.pick(["../", "/", "./", "", ".keepwatch/", "../../"])}${path}`;
        break;
      case 3:
        path = `${path}${rng.pick(["/..", "/.", "/", "/../..", "\0"])}`;
        break;
      case 4:
        path =
          path.slice(0, at) +
          rng.pick(["x", "/", "é"]).repeat(rng.pick([64, 255, 256, 4097])) +
          path.slice(at);
        break;
      default:
        path = path.slice(0, at) + String.fromCharCode(rng.int(0x80)) + path.slice(at);
    }
  }
  return path;
}

/** A request of a random kind carrying `path`: its frames (the first is the mutated one). */
function request(rng: Rng, id: number, path: string): Buffer[] {
  const header = { path, size: 3, mtimeMs: 1.7e12, mode: 0o644, sha256: randomBytes(32) };
  switch (rng.int(7)) {
    case 0:
      return [encodeFrame(MessageType.MKDIR, id, encode.mkdir({ path, mode: 0o755 }))];
    case 1:
      return [encodeFrame(MessageType.DELETE, id, encode.delete({ path }))];
    case 2:
      return [encodeFrame(MessageType.PUT_REF, id, encodeHistory.putRef(header))];
    case 3:
      return [
        encodeFrame(MessageType.LIST, id, encodeHistory.list({ path, time: -1, mode: rng.int(2) as 0 | 1 })),
      ];
    case 4:
      return [encodeFrame(MessageType.RESTORE, id, encodeHistory.restore({ path, time: -1 }))];
    case 5: {
      // A PUT whose three bytes all arrive: refused for its path, or stored inside the set.
      const data = Buffer.from("abc");
      const sha256 = encode.putEnd({ sha256: sha(data) });
      return [
        encodeFrame(
          MessageType.PUT_BEGIN,
          id,
          encode.putBegin({ path, size: 3, mtimeMs: 1.7e12, mode: 0o644 }),
        ),
        encodeFrame(MessageType.PUT_DATA, id, data),
        encodeFrame(MessageType.PUT_END, id, sha256),
      ];
    }
    default:
      return [
        encodeFrame(
          MessageType.MANIFEST_BEGIN,
          id,
          encodeHistory.manifestBegin({ ...header, base: Buffer.alloc(0), chunkCount: 0, size: 0 }),
        ),
        encodeFrame(MessageType.PUT_ABORT, id, encode.putAbort({ reason: "storm" })),
      ];
  }
}

function sha(data: Buffer): Buffer {
  return createHash("sha256").update(data).digest();
}

/** One connection on `set`: HELLO, then batches of mutated requests, each answered before the next. */
async function stormConnection(
  options: StormOptions,
  set: string,
  rng: Rng,
  stats: StormStats,
  quota: () => boolean,
): Promise<void> {
  const socket = connect({ host: "127.0.0.1", port: options.port });
  const decoder = new FrameDecoder();
  const queue: Frame[] = [];
  let wake: (() => void) | null = null;
  let closed = false;
  socket.on("error", () => {});
  socket.on("close", () => {
    closed = true;
    wake?.();
  });
  socket.on("data", (chunk: Buffer) => {
    try {
      for (const frame of decoder.push(chunk)) {
        if (frame.type === MessageType.PING) socket.write(encodeFrame(MessageType.PONG, frame.requestId));
        else queue.push(frame);
      }
    } catch (error) {
      stats.findings.push(`the server's bytes did not decode: ${String(error)}`);
      socket.destroy();
    }
    wake?.();
  });
  const next = async (): Promise<Frame | null> => {
    const deadline = Date.now() + ANSWER_MS;
    while (queue.length === 0) {
      if (closed) return null;
      if (Date.now() > deadline) throw new Error("no answer within 10 s");
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 100);
      });
      wake = null;
    }
    return queue.shift() as Frame;
  };
  const count = (frame: Frame): string => {
    let key = messageTypeName(frame.type);
    if (frame.type === MessageType.ERROR) {
      const error = decode.error(frame.payload);
      key = `ERROR${frame.requestId === 0 ? "/0" : ""} ${error.code}`;
      if (
        error.code === "KW_SERVER_IO" &&
        stats.serverIo.length < 10 &&
        !stats.serverIo.includes(error.message)
      ) {
        stats.serverIo.push(error.message);
      }
    }
    stats.answers.set(key, (stats.answers.get(key) ?? 0) + 1);
    return key;
  };
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    stats.connections++;
    socket.write(
      Buffer.concat([
        MAGIC,
        encodeFrame(
          MessageType.HELLO,
          0,
          encode.hello({
            minVersion: PROTOCOL_VERSION,
            maxVersion: PROTOCOL_VERSION,
            clientName: "fuzz-storm",
            setName: set,
            token: options.token,
          }),
        ),
      ]),
    );
    const welcome = await next();
    if (welcome?.type !== MessageType.WELCOME) {
      stats.findings.push(`HELLO was answered ${welcome ? count(welcome) : "by a close"}`);
      return;
    }
    let id = 1;
    for (let batch = 0; batch < BATCHES_PER_CONNECTION && quota() && !options.signal?.aborted; batch++) {
      const open = new Set<number>();
      const bytes: Buffer[] = [];
      for (let i = 0; i < BATCH; i++, id++) {
        const frames = request(rng, id, mutatePath(rng));
        bytes.push(...frames);
        stats.frames += frames.length;
        open.add(id);
      }
      socket.write(Buffer.concat(bytes));
      while (open.size > 0) {
        const frame = await next();
        if (!frame) {
          stats.findings.push(`the server closed the connection with ${open.size} requests unanswered`);
          return;
        }
        const key = count(frame);
        if (frame.type === MessageType.ENTRY || frame.type === MessageType.FILE_DATA) continue;
        if (frame.requestId === 0) {
          stats.findings.push(
            `the server ended the connection: ${key}: ${frame.type === MessageType.ERROR ? decode.error(frame.payload).message : ""}`,
          );
          return;
        }
        if (!open.delete(frame.requestId)) {
          stats.findings.push(`request ${frame.requestId} was answered twice (${key}), or was never asked`);
          return;
        }
        stats.mutated++;
      }
    }
  } finally {
    socket.destroy();
  }
}

/** Deliver `frames` mutated frames over `concurrency` connections; findings are collected, not thrown. */
export async function runStorm(options: StormOptions): Promise<StormStats> {
  const stats: StormStats = {
    mutated: 0,
    frames: 0,
    connections: 0,
    elapsedMs: 0,
    answers: new Map(),
    findings: [],
    serverIo: [],
  };
  const started = performance.now();
  const quota = () => stats.mutated < options.frames && stats.findings.length === 0;
  const workers = Array.from({ length: options.concurrency ?? 4 }, async (_, i) => {
    const rng = new Rng((options.seed * 31 + i) >>> 0);
    let round = 0;
    while (quota() && !options.signal?.aborted) {
      try {
        await stormConnection(options, `${options.set}-${i}-${round++}`, rng, stats, quota);
      } catch (error) {
        stats.findings.push(`connection ${i}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  });
  await Promise.all(workers);
  stats.elapsedMs = performance.now() - started;
  return stats;
}

export function formatStorm(s: StormStats): string {
  const answers = [...s.answers.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  return `${s.mutated} mutated frames answered (${s.frames} sent), ${s.connections} connections, ${(s.elapsedMs / 1000).toFixed(1)} s, ${Math.round(s.mutated / Math.max(s.elapsedMs / 1000, 0.001))} mutated frames/s; answers: ${answers}`;
}
