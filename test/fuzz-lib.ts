// A protocol fuzzer for the keepwatch server. It builds realistic client conversations with
// the real encoders (a whole PUT, a manifest exchange answered chunk by chunk, LIST, RESTORE…),
// mutates a share of their frames (bytes, headers, fields, paths, order), drives many
// connections at once against a real server on 127.0.0.1, and checks that everything the
// server sends back is well-formed. A connection's frames depend only on the run's seed and
// the connection's index, so a finding is replayed from those two numbers.

import { createHash } from "node:crypto";
import { chmod, lstat, readdir, readFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { chunkBuffer } from "../src/chunking/fastcdc.js";
import { ErrorCodes, errnoCode } from "../src/errors.js";
import { FieldWriter } from "../src/protocol/fields.js";
import {
  encodeFrame,
  type Frame,
  FrameDecoder,
  HEADER_SIZE,
  MAGIC,
  MAX_FRAME_PAYLOAD,
} from "../src/protocol/frame.js";
import { decodeHistory, encodeHistory, type ManifestOp } from "../src/protocol/history-messages.js";
import { decode, encode, MessageType, messageTypeName, PROTOCOL_VERSION } from "../src/protocol/messages.js";
import { pathProblem, setNameProblem } from "../src/protocol/paths.js";
import { CONTROL_DIR } from "../src/server/destination.js";

/** The only address the fuzzer ever connects to. */
const FUZZ_HOST = "127.0.0.1";

/**
 * The set names a well-formed HELLO of the run with `seed` uses: a few, and new for each
 * seed, so that a set's history (which LIST and RESTORE answer from) grows with one seed's
 * run only, and a seed meets the same state on a fresh server as in a long run.
 */
export function fuzzSets(seed: number): string[] {
  return [1, 2, 3].map((n) => `fz${n}-${seed}`);
}

// ---------------------------------------------------------------------------------------
// Seeded randomness

/** mulberry32: a small 32-bit generator; the same seed gives the same numbers everywhere. */
export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** In [0, 1). */
  float(): number {
    return this.u32() / 0x1_0000_0000;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }

  /** An integer in [lo, hi]. */
  between(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }

  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (v >>> (8 * j)) & 0xff;
    }
    return out;
  }
}

/** The generator of connection `index` of the run with `seed`; no two connections share one. */
export function connectionRng(seed: number, index: number): Rng {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = (h ^ Math.imul(index + 1, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0x27d4eb2f) >>> 0;
  const rng = new Rng((h ^ (h >>> 16)) >>> 0);
  rng.u32();
  return rng;
}

// ---------------------------------------------------------------------------------------
// Contents and names

function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

interface Content {
  data: Buffer;
  sha256: Buffer;
  /** The chunks the server cuts this content into (the same FastCDC it uses). */
  chunks: { data: Buffer; id: Buffer }[];
}

function content(data: Buffer): Content {
  const chunks = chunkBuffer(data).map((c) => ({ data: Buffer.from(c.data), id: sha256(c.data) }));
  return { data, sha256: sha256(data), chunks };
}

/**
 * Contents every run and every seed shares, so PUT_REF and manifest bases often name a
 * content the server already holds. Fixed seed: they must not depend on the run's.
 */
const POOL: readonly Content[] = (() => {
  const rng = new Rng(0x6b77_6675);
  return [0, 1, 13, 100, 1000, 4096, 20_000, 70_000].map((size) => content(rng.bytes(size)));
})();
/** Over the server's small-file size (256 KiB): it goes through a temporary file in DEST. */
const LARGE = content(new Rng(0x6c61_7267).bytes(300_000));

/** Valid set-relative paths; some are a file in one op and a folder in another. */
const PATHS = [
  "a.txt",
  "b",
  "d1",
  "d1/x.bin",
  "d1/sub",
  "d1/sub/y",
  "d2/ü.txt",
  "d2/new\nline",
  "sp ace",
  "-lead",
  ".hidden",
  "back\\slash",
  "d3/deep/er/file",
  "d3/deep",
  ".keepwatch/x",
  "x".repeat(255),
];

/** Paths a server must refuse (or keep inside the set), as strings. */
const HOSTILE_PATHS = [
  "..",
  "../x",
  "../../../../../../etc/passwd",
  "/etc/passwd",
  "/",
  "a\u0000b",
  "",
  ".",
  "./a",
  "a//b",
  "a/./b",
  "a/../../b",
  "d1/..",
  "a/",
  "../.keepwatch/index.db",
  "..\\..\\x",
  "%2e%2e/x",
  "x".repeat(5000),
  "x".repeat(256),
  "é".repeat(128),
  `${"a/".repeat(2100)}b`,
  "\ud800",
  "\u202egnp.exe",
  "~/x",
  "C:\\x",
];

/** Paths whose bytes are not well-formed UTF-8 (the decoder must refuse them). */
const INVALID_UTF8: readonly Buffer[] = [
  Buffer.from([0xff]),
  Buffer.from([0xc0, 0xaf]),
  Buffer.from([0x2e, 0x2e, 0xc0, 0xaf, 0x78]),
  Buffer.from([0xed, 0xa0, 0x80]),
  Buffer.from([0xf4, 0x90, 0x80, 0x80]),
  Buffer.from([0x61, 0xe2, 0x82]),
  Buffer.from([0x80, 0x2f, 0x2e, 0x2e]),
];

const HOSTILE_SET_NAMES = [
  "",
  ".",
  "..",
  ".keepwatch",
  "../fz1",
  "a/b",
  "/",
  "fz\u0001",
  "fz\u007f",
  "x".repeat(256),
  "x".repeat(1025),
  "\ud800",
  " ",
  "fz1 ",
  "ü",
];

const INTERESTING_U32 = [
  0,
  1,
  0x7f,
  0x80,
  0xff,
  0x7fff,
  0x8000,
  0xffff,
  0x1_0000,
  MAX_FRAME_PAYLOAD,
  MAX_FRAME_PAYLOAD + 1,
  0x7fff_ffff,
  0x8000_0000,
  0xffff_fffe,
  0xffff_ffff,
];
const INTERESTING_U8 = [0, 1, 0x2e, 0x2f, 0x7f, 0x80, 0xfe, 0xff];
const ODD_MTIMES = [0, -0, -1, 1.5, -1e15, 8.64e15, 1e300, -1e300, Number.MAX_VALUE, Number.MIN_VALUE];
const ODD_MODES = [0, 0o7777, 0o4755, 0o1000, 0o170777, 0xffff_ffff];
const ODD_SIZES = [0, 1, 2 ** 32, 2 ** 53 - 1];
const CLIENT_TYPES = [
  MessageType.HELLO,
  MessageType.ERROR,
  MessageType.PING,
  MessageType.PONG,
  MessageType.BYE,
  MessageType.PUT_BEGIN,
  MessageType.PUT_DATA,
  MessageType.PUT_END,
  MessageType.PUT_ABORT,
  MessageType.MKDIR,
  MessageType.DELETE,
  MessageType.PUT_REF,
  MessageType.MANIFEST_BEGIN,
  MessageType.MANIFEST_DATA,
  MessageType.MANIFEST_END,
  MessageType.CHUNK,
  MessageType.CHUNK_DELTA,
  MessageType.MANIFEST_STREAM,
  MessageType.MANIFEST_CLOSE,
  MessageType.LIST,
  MessageType.RESTORE,
];
const SERVER_TYPES = [
  MessageType.WELCOME,
  MessageType.ACK,
  MessageType.NEED,
  MessageType.BASIS,
  MessageType.ENTRY,
  MessageType.FILE_DATA,
];
const UNKNOWN_TYPES = [0, 0x07, 0x0f, 0x1e, 0x23, 0x34, 0x40, 0x7fff, 0x8000, 0xffff];

/** Request ids at and above this are the runner's barriers, never a plan's requests. */
const BARRIER_ID_BASE = 0x7f00_0000;
/** Most requests a plan starts on one connection, below the v2 server's window of 64. */
const REQUESTS_PER_CONNECTION = 56;

// ---------------------------------------------------------------------------------------
// Plans: what one connection sends

export interface PlannedFrame {
  bytes: Buffer;
  /** What the frame is, for a finding's report: "PUT_BEGIN id 3 [path ../x]". */
  label: string;
  mutated: boolean;
}

type Step =
  /** Write these frames. */
  | { kind: "write"; frames: PlannedFrame[] }
  /** Wait for WELCOME (or the end). */
  | { kind: "welcome" }
  /** Wait for the NEED of manifest `id`, then send the CHUNK of each index it lists. */
  | { kind: "chunks"; id: number; chunks: PlannedFrame[]; extra: PlannedFrame[] }
  /** A LIST whose answer proves that the server handled every frame before it. */
  | { kind: "barrier"; id: number; frame: PlannedFrame }
  /** How the connection ends. */
  | { kind: "finish"; how: "bye" | "error" | "end" | "reset" | "partial"; frames: PlannedFrame[] };

export interface ConnectionPlan {
  seed: number;
  index: number;
  /** The set of the HELLO as planned ("" binds to no set; null for a HELLO that is not one). */
  set: string | null;
  /**
   * No byte- or stream-level mutation and no request id used twice: every frame is what
   * its label says, and each request id starts one request.
   */
  exact: boolean;
  steps: Step[];
}

function frameOf(type: number, id: number, payload: Buffer, label?: string): PlannedFrame {
  return {
    bytes: encodeFrame(type, id, payload),
    label: label ?? `${messageTypeName(type)} id ${id}`,
    mutated: false,
  };
}

/** Mark `frame` as mutated, saying how in its label. */
function markMutated(frame: PlannedFrame, what: string): PlannedFrame {
  frame.mutated = true;
  frame.label += ` [${what}]`;
  return frame;
}

function u32be(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(value >>> 0, 0);
  return b;
}

/** `payload` with its `str`/`bytes` field at `offset` replaced by `raw`. */
function replaceField(payload: Buffer, offset: number, raw: Buffer): Buffer {
  const length = payload.readUInt32BE(offset);
  return Buffer.concat([
    payload.subarray(0, offset),
    u32be(raw.length),
    raw,
    payload.subarray(offset + 4 + length),
  ]);
}

/** Rewrite a frame's header after its payload changed. */
function withPayload(frame: PlannedFrame, payload: Buffer): PlannedFrame {
  const header = frame.bytes.subarray(0, HEADER_SIZE);
  const bytes = Buffer.concat([header, payload]);
  bytes.writeUInt32BE(payload.length, 0);
  return { ...frame, bytes };
}

/** Builds the plan of one connection from its own generator. */
class Planner {
  private nextId = 1;
  private barriers = 0;
  private readonly steps: Step[] = [];
  private current: PlannedFrame[] = [];
  /** Frames of this plan so far, for payload swaps and id reuse. */
  private readonly sent: PlannedFrame[] = [];
  /** Chance that an op gets a field-level mutation (hostile path, odd number, wrong hash…). */
  private readonly softRate: number;
  /** Chance that a frame gets a byte- or stream-level mutation. */
  private readonly hardRate: number;
  private set: string | null = null;
  /** Set by the first byte- or stream-level mutation, or a request id used twice. */
  private broken = false;

  constructor(
    private readonly rng: Rng,
    private readonly token: Buffer,
    private readonly sets: string[],
    profile: FuzzProfile = "mixed",
  ) {
    // Calm connections get deep into the handlers; hot ones hammer the decoders. A storm
    // mutates a field of nearly every operation: refusals that keep the connection open,
    // so each mutated frame is handled.
    this.softRate = profile === "storm" ? rng.pick([0.8, 0.95, 1]) : rng.pick([0.05, 0.15, 0.3, 0.5]);
    this.hardRate = profile === "storm" ? rng.pick([0, 0.003, 0.01]) : rng.pick([0, 0.003, 0.01, 0.03, 0.1]);
  }

  plan(seed: number, index: number): ConnectionPlan {
    const rng = this.rng;
    this.opening();
    // Short rounds, each closed by a barrier: a fatal mutation wastes little after it, and
    // the answers show how far the server got.
    const rounds = rng.between(2, 16);
    for (let r = 0; r < rounds && this.nextId <= REQUESTS_PER_CONNECTION; r++) {
      const ops = rng.between(1, 5);
      const used: string[] = [];
      for (let o = 0; o < ops && this.nextId <= REQUESTS_PER_CONNECTION; o++) this.op(used);
      this.barrier();
    }
    this.finish();
    return { seed, index, set: this.set, exact: !this.broken, steps: this.steps };
  }

  // -- structure

  private add(frame: PlannedFrame): void {
    // Either side may PING at any time, also between the frames of one request.
    if (this.rng.chance(0.03)) this.current.push(frameOf(MessageType.PING, this.rng.u32(), encode.empty()));
    this.current.push(frame);
  }

  /** Close the current write step, applying byte- and stream-level mutations to it. */
  private flush(): void {
    if (this.current.length === 0) return;
    const frames = this.mutateStream(this.current);
    this.sent.push(...frames);
    this.steps.push({ kind: "write", frames });
    this.current = [];
  }

  private id(): number {
    return this.nextId++;
  }

  /** Whether the op being built gets a field-level mutation. */
  private fieldMutation(): boolean {
    return this.rng.chance(this.softRate);
  }

  private opening(): void {
    const rng = this.rng;
    let preamble: Buffer = MAGIC;
    let afterBadPreamble = false;
    if (rng.chance(0.01)) {
      afterBadPreamble = true;
      preamble = rng.pick([
        Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Buffer.from("KWATCH\n\r"),
        Buffer.from("kwatch\r\n"),
        Buffer.from("KWAT"),
        Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]),
        rng.bytes(rng.between(1, 16)),
      ]);
    }
    this.set = rng.chance(0.03) ? "" : rng.pick(this.sets);
    let hello = frameOf(
      MessageType.HELLO,
      0,
      encode.hello({
        minVersion: PROTOCOL_VERSION,
        maxVersion: PROTOCOL_VERSION,
        clientName: "fuzz",
        setName: this.set,
        token: this.token,
      }),
    );
    if (rng.chance(0.04)) {
      hello = this.badHello();
      if (hello.label.includes("[set")) this.set = null;
    }
    if (afterBadPreamble) markMutated(hello, "after a bad preamble");
    const preambleFrame: PlannedFrame = { bytes: preamble, label: "preamble", mutated: false };
    this.sent.push(hello);
    // The preamble is not a frame: it is written with the HELLO and never counted.
    this.steps.push({
      kind: "write",
      frames: [
        {
          ...preambleFrame,
          bytes: Buffer.concat([preamble, hello.bytes]),
          label: `preamble + ${hello.label}`,
          mutated: hello.mutated,
        },
      ],
    });
    this.steps.push({ kind: "welcome" });
  }

  private badHello(): PlannedFrame {
    const rng = this.rng;
    const base = {
      minVersion: PROTOCOL_VERSION,
      maxVersion: PROTOCOL_VERSION,
      clientName: "fuzz",
      setName: rng.pick(this.sets),
      token: this.token,
    };
    switch (rng.int(8)) {
      case 0: {
        const [minVersion, maxVersion] = rng.pick([
          [0, 0],
          [1, 1],
          [3, 9],
          [2, 1],
          [0, 0xffff],
          [0xffff, 0xffff],
        ] as const);
        return markMutated(
          frameOf(MessageType.HELLO, 0, encode.hello({ ...base, minVersion, maxVersion })),
          `versions ${minVersion}-${maxVersion}`,
        );
      }
      case 1: {
        const setName = rng.pick(HOSTILE_SET_NAMES);
        return markMutated(
          frameOf(MessageType.HELLO, 0, encode.hello({ ...base, setName })),
          `set ${JSON.stringify(setName.slice(0, 40))}`,
        );
      }
      case 2: {
        const payload = encode.hello(base);
        const setOffset = 4 + 4 + payload.readUInt32BE(4);
        return markMutated(
          frameOf(MessageType.HELLO, 0, replaceField(payload, setOffset, rng.pick(INVALID_UTF8))),
          "set invalid UTF-8",
        );
      }
      case 3: {
        const token = rng.pick([
          rng.bytes(rng.between(1, 64)),
          Buffer.alloc(1024, 0x41),
          Buffer.alloc(1025, 0x41),
        ]);
        return markMutated(
          frameOf(MessageType.HELLO, 0, encode.hello({ ...base, token })),
          `token of ${token.length} bytes`,
        );
      }
      case 4: {
        const clientName = rng.pick(["", "x".repeat(255), "x".repeat(256), "\u0000\n"]);
        return markMutated(
          frameOf(MessageType.HELLO, 0, encode.hello({ ...base, clientName })),
          `clientName of ${clientName.length}`,
        );
      }
      case 5:
        return markMutated(
          frameOf(MessageType.HELLO, rng.pick([1, 0xffff_ffff]), encode.hello(base)),
          "HELLO with a request id",
        );
      case 6:
        // Something other than HELLO first.
        return markMutated(
          frameOf(
            rng.pick([...CLIENT_TYPES, ...SERVER_TYPES]),
            0,
            encode.mkdir({ path: "early", mode: 0o755 }),
          ),
          "not HELLO first",
        );
      default: {
        // HELLO, then a second HELLO right away.
        const hello = encode.hello(base);
        return markMutated(
          {
            bytes: Buffer.concat([
              encodeFrame(MessageType.HELLO, 0, hello),
              encodeFrame(MessageType.HELLO, 0, hello),
            ]),
            label: "HELLO + HELLO",
            mutated: true,
          },
          "twice",
        );
      }
    }
  }

  private barrier(): void {
    this.flush();
    const id = BARRIER_ID_BASE + this.barriers++;
    // On a set-bound connection a path nobody writes gives a quick KW_NOT_FOUND; on a
    // connection bound to no set only the set listing is allowed.
    const path = this.set === "" ? "" : "zz-fuzz-barrier";
    const frame = frameOf(
      MessageType.LIST,
      id,
      encodeHistory.list({ path, time: -1, mode: 0 }),
      `LIST id ${id} (barrier)`,
    );
    this.steps.push({ kind: "barrier", id, frame });
  }

  private finish(): void {
    this.flush();
    const rng = this.rng;
    const roll = rng.float();
    if (roll < 0.85) {
      this.steps.push({ kind: "finish", how: "bye", frames: [frameOf(MessageType.BYE, 0, encode.empty())] });
    } else if (roll < 0.9) {
      const error = frameOf(
        MessageType.ERROR,
        0,
        encode.error({ code: "KW_CONNECTION_LOST", message: "fuzz client leaves" }),
      );
      this.steps.push({ kind: "finish", how: "error", frames: [error] });
    } else if (roll < 0.94) {
      this.steps.push({ kind: "finish", how: "end", frames: [] });
    } else if (roll < 0.97) {
      this.steps.push({ kind: "finish", how: "reset", frames: [] });
    } else {
      const whole = frameOf(MessageType.MKDIR, this.id(), encode.mkdir({ path: "cut", mode: 0o755 }));
      const cut: PlannedFrame = {
        bytes: whole.bytes.subarray(0, rng.between(1, whole.bytes.length - 1)),
        label: `${whole.label} [cut, then end]`,
        mutated: true,
      };
      this.steps.push({ kind: "finish", how: "partial", frames: [cut] });
    }
  }

  // -- operations: realistic frame sequences, sometimes with a field-level mutation

  private path(used: string[]): string {
    for (let tries = 0; tries < 8; tries++) {
      const candidate = this.rng.pick(PATHS);
      const overlaps = used.some(
        (u) => u === candidate || candidate.startsWith(`${u}/`) || u.startsWith(`${candidate}/`),
      );
      if (!overlaps) {
        used.push(candidate);
        return candidate;
      }
    }
    return this.rng.pick(PATHS); // the client rule broken now and then: the server must cope
  }

  /** A hostile path as the bytes of a `str` field, and its label. */
  private hostilePath(): { raw: Buffer; label: string } {
    const rng = this.rng;
    if (rng.chance(0.15)) {
      const raw = rng.pick(INVALID_UTF8);
      return { raw, label: `path bytes ${raw.toString("hex")}` };
    }
    if (rng.chance(0.03)) return { raw: Buffer.alloc(16 * 1024 + 1, 0x61), label: "path of 16385 bytes" };
    const path = rng.pick(HOSTILE_PATHS);
    return {
      raw: Buffer.from(path, "utf8"),
      label: `path ${JSON.stringify(path.length > 40 ? `${path.slice(0, 20)}…(${path.length})` : path)}`,
    };
  }

  /** A path-first message with its path replaced by a hostile one. */
  private withHostilePath(frame: PlannedFrame): PlannedFrame {
    const { raw, label } = this.hostilePath();
    const payload = frame.bytes.subarray(HEADER_SIZE);
    return markMutated(withPayload(frame, replaceField(payload, 0, raw)), label);
  }

  private mtime(): number {
    return 1.7e12 + this.rng.int(1e9) + this.rng.int(1000) / 1000;
  }

  private op(used: string[]): void {
    const rng = this.rng;
    if (this.set === "") {
      // Bound to no set: listing the sets is all that is allowed.
      if (rng.chance(0.8))
        this.add(frameOf(MessageType.LIST, this.id(), encodeHistory.list({ path: "", time: -1, mode: 0 })));
      else this.anyRequest(used);
      return;
    }
    const roll = rng.float();
    if (roll < 0.3) this.put(used);
    else if (roll < 0.42) this.manifest(used);
    else if (roll < 0.52) this.putRef(used);
    else if (roll < 0.62) this.mkdir(used);
    else if (roll < 0.7) this.remove(used);
    else if (roll < 0.8) this.list(used);
    else if (roll < 0.86) this.restore(used);
    else if (roll < 0.93) this.ping();
    else this.anyRequest(used);
  }

  private put(used: string[]): void {
    const rng = this.rng;
    const id = this.id();
    const large = rng.chance(0.004);
    const body = large ? LARGE : rng.chance(0.6) ? rng.pick(POOL) : content(rng.bytes(rng.between(0, 3000)));
    const path = this.path(used);
    let size = body.data.length;
    let mtimeMs = this.mtime();
    let mode = rng.pick([0o644, 0o600, 0o755]);
    let hash = body.sha256;
    const variant = this.fieldMutation() ? rng.int(10) : -1;
    let label = "";
    if (variant === 0) {
      size = rng.pick([size + 1, Math.max(0, size - 1), ...ODD_SIZES]);
      label = `size ${size} for ${body.data.length} bytes`;
    } else if (variant === 1) {
      mtimeMs = rng.pick(ODD_MTIMES);
      label = `mtime ${mtimeMs}`;
    } else if (variant === 2) {
      mode = rng.pick(ODD_MODES);
      label = `mode 0o${mode.toString(8)}`;
    } else if (variant === 3) {
      hash = rng.bytes(32);
      label = "wrong sha256";
    }
    let begin = frameOf(MessageType.PUT_BEGIN, id, encode.putBegin({ path, size, mtimeMs, mode }));
    if (label !== "") markMutated(begin, label);
    if (variant === 4) begin = this.withHostilePath(begin);
    if (variant === 5) {
      // NaN and infinities cannot be encoded: patch the mtime's bytes.
      const payload = Buffer.from(begin.bytes.subarray(HEADER_SIZE));
      const at = 4 + payload.readUInt32BE(0) + 8;
      payload.writeDoubleBE(rng.pick([Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]), at);
      begin = markMutated(withPayload(begin, payload), "mtime not finite");
    }
    this.add(begin);
    // The content in pieces, some of them empty, at most 256 KiB each (the reference client's size).
    const pieceMax = large ? 64 * 1024 : Math.max(1, Math.ceil(body.data.length / rng.between(1, 10)));
    let sentBytes = 0;
    const abortAfter = variant === 6 ? rng.between(0, 2) : -1;
    let pieces = 0;
    for (let offset = 0; offset < body.data.length; offset += pieceMax) {
      if (pieces === abortAfter) break;
      const piece = body.data.subarray(offset, offset + pieceMax);
      this.add(frameOf(MessageType.PUT_DATA, id, piece, `PUT_DATA id ${id} (${piece.length} bytes)`));
      sentBytes += piece.length;
      pieces++;
      if (rng.chance(0.05))
        this.add(frameOf(MessageType.PUT_DATA, id, Buffer.alloc(0), `PUT_DATA id ${id} (empty)`));
    }
    if (variant === 6) {
      const reason = rng.pick(["changed while reading", "", "x".repeat(4096), "x".repeat(4097)]);
      this.add(
        markMutated(
          frameOf(MessageType.PUT_ABORT, id, encode.putAbort({ reason })),
          `abort after ${sentBytes} bytes`,
        ),
      );
      return;
    }
    if (variant === 7) {
      this.add(
        markMutated(frameOf(MessageType.PUT_DATA, id, rng.bytes(rng.between(1, 100))), "data beyond size"),
      );
    }
    if (variant === 8) return; // PUT_END never comes: the request stays open until the connection ends
    let end = frameOf(MessageType.PUT_END, id, encode.putEnd({ sha256: hash }));
    if (variant === 9) {
      const sha = rng.bytes(rng.pick([0, 31, 33, 64]));
      end = markMutated(
        frameOf(MessageType.PUT_END, id, new FieldWriter().bytes(sha).finish()),
        `sha256 of ${sha.length} bytes`,
      );
    }
    this.add(end);
    if (variant !== 9 && rng.chance(0.02)) {
      this.add(markMutated(frameOf(MessageType.PUT_DATA, id, Buffer.from("late")), "PUT_DATA after PUT_END"));
    }
  }

  private manifest(used: string[]): void {
    const rng = this.rng;
    const id = this.id();
    const path = this.path(used);
    const base = rng.chance(0.4) ? rng.pick(POOL.filter((c) => c.chunks.length > 0)) : null;
    const fresh = Array.from({ length: rng.between(base ? 0 : 1, 8) }, () => {
      const data = rng.bytes(rng.between(16, 3000));
      return { data, id: sha256(data) };
    });
    if (fresh.length > 1 && rng.chance(0.15)) fresh.push(fresh[0] as { data: Buffer; id: Buffer });
    // The new content: the base's chunks (all, or all but the first) around the fresh ones.
    const ops: ManifestOp[] = [];
    const list: { data: Buffer; id: Buffer }[] = [];
    const baseStart = base && base.chunks.length > 1 && rng.chance(0.3) ? 1 : 0;
    const copy = () => {
      if (!base) return;
      ops.push({ op: "copy", start: baseStart, count: base.chunks.length - baseStart });
      list.push(...base.chunks.slice(baseStart));
    };
    const copyFirst = rng.chance(0.5);
    if (copyFirst) copy();
    for (const chunk of fresh) {
      ops.push({ op: "new", length: chunk.data.length, id: chunk.id });
      list.push(chunk);
    }
    if (!copyFirst) copy();
    const whole = Buffer.concat(list.map((c) => c.data));
    let size = whole.length;
    let chunkCount = list.length;
    let baseField = base ? base.sha256 : Buffer.alloc(0);
    let wholeHash = sha256(whole);
    const variant = this.fieldMutation() ? rng.int(13) : -1;
    // A streamed manifest (version 5): the whole hash and the chunk count come at its end.
    const streamed = rng.chance(0.3);
    let label = "";
    if (variant === 0) {
      chunkCount = rng.pick([
        chunkCount + 1,
        Math.max(0, chunkCount - 1),
        4 * 1024 * 1024,
        4 * 1024 * 1024 + 1,
        0xffff_ffff,
      ]);
      label = `chunkCount ${chunkCount} for ${list.length}`;
    } else if (variant === 1) {
      size = rng.pick([size + 1, Math.max(0, size - 1), 2 ** 53 - 1]);
      label = `size ${size} for ${whole.length}`;
    } else if (variant === 2) {
      baseField = rng.pick([rng.bytes(32), rng.bytes(5)]);
      label = `base of ${baseField.length} random bytes`;
    } else if (variant === 3) {
      wholeHash = rng.bytes(32);
      label = "wrong whole sha256";
    }
    const end = streamed
      ? frameOf(
          MessageType.MANIFEST_CLOSE,
          id,
          encodeHistory.manifestClose({ sha256: wholeHash, chunkCount }),
        )
      : frameOf(MessageType.MANIFEST_END, id, encode.empty());
    let begin = streamed
      ? frameOf(
          MessageType.MANIFEST_STREAM,
          id,
          encodeHistory.manifestStream({
            path,
            size,
            mtimeMs: this.mtime(),
            mode: 0o644,
            base: baseField,
            maxChunks: list.length,
          }),
        )
      : frameOf(
          MessageType.MANIFEST_BEGIN,
          id,
          encodeHistory.manifestBegin({
            path,
            size,
            mtimeMs: this.mtime(),
            mode: 0o644,
            sha256: wholeHash,
            base: baseField,
            chunkCount,
          }),
        );
    if (label !== "") markMutated(streamed && (variant === 0 || variant === 3) ? end : begin, label);
    if (variant === 4) begin = this.withHostilePath(begin);
    this.add(begin);
    let dataOps = ops;
    if (variant === 5) {
      dataOps = [
        ...ops,
        rng.pick<ManifestOp>([
          { op: "copy", start: 0, count: 0 },
          { op: "copy", start: 0xffff_fff0, count: 0x20 },
          { op: "copy", start: 0, count: 1000 },
          { op: "new", length: 0, id: sha256(Buffer.alloc(0)) },
          { op: "new", length: 0xffff_ffff, id: rng.bytes(32) },
        ]),
      ];
    }
    const payloads = encodeHistory.manifestData(dataOps, rng.pick([37, 74, 1000]));
    for (const payload of payloads) this.add(frameOf(MessageType.MANIFEST_DATA, id, payload));
    if (variant === 6)
      this.add(
        markMutated(
          frameOf(MessageType.MANIFEST_DATA, id, Buffer.from([rng.pick([0, 3, 0xff]), 0, 0, 0])),
          "bad op tag",
        ),
      );
    if (variant === 7) {
      this.add(
        markMutated(
          frameOf(MessageType.CHUNK, id, encodeHistory.chunk(0, Buffer.from("early"))),
          "CHUNK before MANIFEST_END",
        ),
      );
    }
    if (variant === 8) {
      this.add(
        markMutated(
          frameOf(MessageType.PUT_ABORT, id, encode.putAbort({ reason: "changed" })),
          "abort before MANIFEST_END",
        ),
      );
      return;
    }
    this.add(end);
    if (variant === 9) this.add(markMutated({ ...end, label: end.label }, "the manifest ended twice"));
    this.flush();
    const chunks = list.map((chunk, index) => {
      const frame = frameOf(
        MessageType.CHUNK,
        id,
        encodeHistory.chunk(index, chunk.data),
        `CHUNK id ${id} #${index}`,
      );
      if (variant === 10 && rng.chance(0.5)) {
        return markMutated(
          frameOf(MessageType.CHUNK, id, encodeHistory.chunk(index, rng.bytes(chunk.data.length))),
          "chunk bytes differ",
        );
      }
      if (variant === 11 && rng.chance(0.5)) {
        return markMutated(
          frameOf(MessageType.CHUNK, id, encodeHistory.chunk(rng.pick([index + 1, 0xffff_ffff]), chunk.data)),
          "chunk index wrong",
        );
      }
      if (variant === 12 && rng.chance(0.5)) {
        return markMutated(
          frameOf(MessageType.CHUNK_DELTA, id, encodeHistory.chunkDelta(index, rng.bytes(rng.int(40)))),
          "a CHUNK_DELTA of random ops",
        );
      }
      return frame;
    });
    const extra: PlannedFrame[] = [];
    if (rng.chance(0.02))
      extra.push(
        markMutated(
          frameOf(MessageType.CHUNK, id, encodeHistory.chunk(0, Buffer.from("extra"))),
          "CHUNK after the last",
        ),
      );
    if (rng.chance(0.02))
      extra.push(
        markMutated(
          frameOf(MessageType.PUT_ABORT, id, encode.putAbort({ reason: "late" })),
          "abort after MANIFEST_END",
        ),
      );
    if (rng.chance(0.02))
      extra.push(
        markMutated(
          frameOf(MessageType.MANIFEST_DATA, id, encodeHistory.manifestData(ops, 1000)[0] ?? Buffer.alloc(0)),
          "MANIFEST_DATA after MANIFEST_END",
        ),
      );
    this.steps.push({ kind: "chunks", id, chunks: chunks.map((c) => this.mutateFrame(c)), extra });
  }

  private putRef(used: string[]): void {
    const rng = this.rng;
    const id = this.id();
    const body = rng.chance(0.02) ? LARGE : rng.pick(POOL);
    let size = body.data.length;
    let hash = body.sha256;
    const variant = this.fieldMutation() ? rng.int(3) : -1;
    let label = "";
    if (variant === 0) {
      size = rng.pick([size + 1, 0, 2 ** 53 - 1]);
      label = `size ${size} for ${body.data.length}`;
    } else if (variant === 1) {
      hash = rng.bytes(32);
      label = "unknown content";
    }
    let frame = frameOf(
      MessageType.PUT_REF,
      id,
      encodeHistory.putRef({ path: this.path(used), size, mtimeMs: this.mtime(), mode: 0o644, sha256: hash }),
    );
    if (label !== "") markMutated(frame, label);
    if (variant === 2) frame = this.withHostilePath(frame);
    this.add(frame);
  }

  private mkdir(used: string[]): void {
    const rng = this.rng;
    let mode = rng.pick([0o755, 0o700, 0o750]);
    const variant = this.fieldMutation() ? rng.int(2) : -1;
    if (variant === 0) mode = rng.pick(ODD_MODES.filter((m) => (m & 0o700) === 0o700));
    let frame = frameOf(MessageType.MKDIR, this.id(), encode.mkdir({ path: this.path(used), mode }));
    if (variant === 0) markMutated(frame, `mode 0o${mode.toString(8)}`);
    if (variant === 1) frame = this.withHostilePath(frame);
    this.add(frame);
  }

  private remove(used: string[]): void {
    let frame = frameOf(MessageType.DELETE, this.id(), encode.delete({ path: this.path(used) }));
    if (this.fieldMutation()) frame = this.withHostilePath(frame);
    this.add(frame);
  }

  private list(used: string[]): void {
    const rng = this.rng;
    // The whole set only in mode 0: every version of every path grows with the run.
    const whole = rng.chance(0.1);
    const path = whole ? "" : this.path(used);
    // Mode 1 answers every version of the path and below, a list that grows all through a
    // long run (and the server's time with it): a few of them suffice.
    const mode = whole || rng.chance(0.97) ? 0 : 1;
    const time = rng.chance(0.8) ? -1 : rng.pick([0, 1.7e12, Date.now() + 1e9, -5, Number.MAX_VALUE]);
    let frame = frameOf(MessageType.LIST, this.id(), encodeHistory.list({ path, time, mode }));
    const variant = this.fieldMutation() ? rng.int(3) : -1;
    if (variant === 0) frame = this.withHostilePath(frame);
    if (variant === 1) {
      const payload = Buffer.from(frame.bytes.subarray(HEADER_SIZE));
      payload.writeUInt8(rng.pick([2, 0x7f, 0xff]), payload.length - 1);
      frame = markMutated(withPayload(frame, payload), "LIST mode unknown");
    }
    if (variant === 2) {
      const payload = Buffer.from(frame.bytes.subarray(HEADER_SIZE));
      payload.writeDoubleBE(Number.NaN, payload.length - 9);
      frame = markMutated(withPayload(frame, payload), "LIST time NaN");
    }
    this.add(frame);
  }

  private restore(used: string[]): void {
    const rng = this.rng;
    const path = rng.chance(0.05) ? "" : this.path(used);
    const time = rng.chance(0.8) ? -1 : rng.pick([0, 1.7e12, -7]);
    let frame = frameOf(MessageType.RESTORE, this.id(), encodeHistory.restore({ path, time }));
    if (this.fieldMutation()) frame = this.withHostilePath(frame);
    this.add(frame);
  }

  private ping(): void {
    const rng = this.rng;
    const id = rng.pick([0, rng.u32()]);
    if (rng.chance(0.8)) this.add(frameOf(MessageType.PING, id, encode.empty()));
    else if (rng.chance(0.5))
      this.add(frameOf(MessageType.PONG, id, encode.empty(), `PONG id ${id} (unasked)`));
    else {
      const type = rng.pick([MessageType.PING, MessageType.PONG]);
      this.add(markMutated(frameOf(type, id, rng.bytes(rng.between(1, 8))), "with a payload"));
    }
  }

  /** A message out of place: a server-only type, ERROR from the client, an id reused. */
  private anyRequest(used: string[]): void {
    const rng = this.rng;
    switch (rng.int(6)) {
      case 0: {
        const type = rng.pick(SERVER_TYPES);
        const payload =
          type === MessageType.WELCOME
            ? encode.welcome({
                version: 2,
                storeId: "x",
                maxFrame: MAX_FRAME_PAYLOAD,
                window: 64,
                idleTimeoutMs: 30_000,
                serverName: "fuzz",
              })
            : type === MessageType.NEED
              ? encodeHistory.need({ last: true, ranges: [[0, 1]] })
              : type === MessageType.ENTRY
                ? encodeHistory.entry({
                    path: "a.txt",
                    kind: "file",
                    size: 1,
                    mtimeMs: 0,
                    mode: 0o644,
                    sha256: rng.bytes(32),
                    versionId: 1,
                    time: 0,
                  })
                : encode.empty();
        this.add(markMutated(frameOf(type, rng.between(0, 3), payload), "server-only type"));
        return;
      }
      case 1: {
        const id = rng.pick([0, 1, this.nextId - 1]);
        this.add(
          markMutated(
            frameOf(
              MessageType.ERROR,
              id,
              encode.error({ code: rng.pick(["KW_BAD_PATH", "KW_SERVER_IO"]), message: "from the client" }),
            ),
            "client ERROR",
          ),
        );
        return;
      }
      case 2: {
        // A request that reuses an id probably still in flight.
        const id = Math.max(1, this.nextId - 1);
        this.broken = true;
        this.add(
          markMutated(
            frameOf(MessageType.MKDIR, id, encode.mkdir({ path: this.path(used), mode: 0o755 })),
            "id reused",
          ),
        );
        return;
      }
      case 3:
        this.add(
          markMutated(
            frameOf(MessageType.DELETE, 0, encode.delete({ path: this.path(used) })),
            "request id 0",
          ),
        );
        return;
      case 4: {
        const type = rng.pick([
          MessageType.PUT_DATA,
          MessageType.PUT_END,
          MessageType.MANIFEST_DATA,
          MessageType.MANIFEST_END,
          MessageType.MANIFEST_CLOSE,
          MessageType.CHUNK,
          MessageType.CHUNK_DELTA,
        ]);
        this.add(
          markMutated(
            frameOf(
              type,
              rng.pick([this.nextId + 100, 0xffff_ffff]),
              type === MessageType.MANIFEST_END ? Buffer.alloc(0) : rng.bytes(36),
            ),
            "names no open request",
          ),
        );
        return;
      }
      default: {
        const flags = frameOf(
          MessageType.MKDIR,
          this.id(),
          encode.mkdir({ path: this.path(used), mode: 0o755 }),
        );
        flags.bytes.writeUInt16BE(rng.pick([1, 0x8000, 0xffff]), 6);
        this.add(markMutated(flags, "flags set"));
      }
    }
  }

  // -- byte- and stream-level mutations

  private mutateStream(frames: PlannedFrame[]): PlannedFrame[] {
    const rng = this.rng;
    if (this.hardRate === 0) return frames;
    const out: PlannedFrame[] = [];
    for (let i = 0; i < frames.length; i++) {
      const frame = frames[i] as PlannedFrame;
      if (!rng.chance(this.hardRate)) {
        out.push(frame);
        continue;
      }
      this.broken = true;
      const roll = rng.float();
      if (roll < 0.6) {
        out.push(this.mutateFrame(frame, 1));
      } else if (roll < 0.7) {
        out.push(frame, { ...frame, label: `${frame.label} [duplicate]`, mutated: true });
      } else if (roll < 0.8 && i + 1 < frames.length) {
        const next = frames[++i] as PlannedFrame;
        out.push({ ...next, label: `${next.label} [moved before ${frame.label}]`, mutated: true }, frame);
      } else if (roll < 0.85 && i + 1 < frames.length) {
        const next = frames[++i] as PlannedFrame;
        out.push({ ...next, label: `${next.label} [after a dropped ${frame.label}]`, mutated: true });
      } else if (roll < 0.95) {
        out.push(this.garbage(), frame);
      } else {
        out.push(this.mutateFrame(frame, 1), this.mutateFrame(frame, 1));
      }
    }
    return out;
  }

  /** One byte-level mutation of `frame` (with probability `p`, the hard rate by default). */
  private mutateFrame(frame: PlannedFrame, p = this.hardRate): PlannedFrame {
    const rng = this.rng;
    if (!rng.chance(p)) return frame;
    this.broken = true;
    const b = Buffer.from(frame.bytes);
    const hurt = (what: string, bytes: Buffer = b): PlannedFrame => ({
      bytes,
      label: `${frame.label} [${what}]`,
      mutated: true,
    });
    switch (rng.int(11)) {
      case 0: {
        const flips = rng.between(1, 4);
        const at: number[] = [];
        for (let k = 0; k < flips; k++) {
          const pos = rng.int(b.length);
          b[pos] = (b[pos] as number) ^ (1 << rng.int(8));
          at.push(pos);
        }
        return hurt(`bit flips at ${at.join(",")}`);
      }
      case 1: {
        const pos = rng.int(b.length);
        const value = rng.pick(INTERESTING_U8);
        b[pos] = value;
        return hurt(`byte ${pos} = 0x${value.toString(16)}`);
      }
      case 2: {
        // A u32 at a field boundary: the header's length or id, or a payload's first count.
        const pos = rng.pick([0, 8, HEADER_SIZE, HEADER_SIZE + 4, rng.int(Math.max(1, b.length - 3))]);
        if (pos + 4 > b.length) return hurt("unchanged (too short for a u32)");
        const value = rng.pick(INTERESTING_U32);
        b.writeUInt32BE(value, pos);
        return hurt(`u32 at ${pos} = ${value}`);
      }
      case 3: {
        const keep = rng.int(b.length);
        return hurt(`cut to ${keep} bytes`, b.subarray(0, keep));
      }
      case 4: {
        const tail = rng.bytes(rng.between(1, 64));
        const grown = Buffer.concat([b, tail]);
        const fix = rng.chance(0.5) && grown.length - HEADER_SIZE <= MAX_FRAME_PAYLOAD;
        if (fix) grown.writeUInt32BE(grown.length - HEADER_SIZE, 0);
        return hurt(`${tail.length} random bytes appended${fix ? " inside the payload" : ""}`, grown);
      }
      case 5: {
        const length = b.readUInt32BE(0);
        const lie = rng.pick([
          length + 1,
          Math.max(0, length - 1),
          0,
          length + rng.between(2, 100),
          MAX_FRAME_PAYLOAD,
          MAX_FRAME_PAYLOAD + 1,
          0x8000_0000,
          0xffff_ffff,
        ]);
        b.writeUInt32BE(lie >>> 0, 0);
        return hurt(`length ${length} -> ${lie}`);
      }
      case 6: {
        const type = rng.pick([...CLIENT_TYPES, ...SERVER_TYPES, ...UNKNOWN_TYPES]);
        b.writeUInt16BE(type, 4);
        return hurt(`type -> ${messageTypeName(type)}`);
      }
      case 7: {
        const flags = rng.pick([1, 2, 0x100, 0xffff]);
        b.writeUInt16BE(flags, 6);
        return hurt(`flags 0x${flags.toString(16)}`);
      }
      case 8: {
        const id = rng.pick([0, 1, 0xffff_ffff, rng.u32(), Math.max(1, this.nextId - 1), BARRIER_ID_BASE]);
        b.writeUInt32BE(id >>> 0, 8);
        return hurt(`id -> ${id}`);
      }
      case 9: {
        const donor = this.sent.length > 0 ? rng.pick(this.sent) : frame;
        if (donor.bytes.length < HEADER_SIZE) return hurt("unchanged (no donor)");
        const payload = donor.bytes.subarray(HEADER_SIZE);
        return hurt(`payload of ${donor.label.split(" [")[0]}`, withPayload(frame, payload).bytes);
      }
      default:
        return this.garbage();
    }
  }

  private garbage(): PlannedFrame {
    const rng = this.rng;
    if (rng.chance(0.5)) {
      return { bytes: rng.bytes(rng.between(1, 80)), label: "random bytes", mutated: true };
    }
    // A header that is well-formed but for a random type, with a random payload.
    const type = rng.pick([...CLIENT_TYPES, ...SERVER_TYPES, ...UNKNOWN_TYPES]);
    const id = rng.pick([0, rng.between(1, 64), rng.u32()]);
    return {
      bytes: encodeFrame(type, id, rng.bytes(rng.between(0, 64))),
      label: `${messageTypeName(type)} id ${id} of random bytes`,
      mutated: true,
    };
  }
}

/** The frames connection `index` of the run with `seed` sends (the same on every machine). */
/** "mixed": calm and hot connections; "storm": a field-level mutation in nearly every operation. */
export type FuzzProfile = "mixed" | "storm";

export function planConnection(
  seed: number,
  index: number,
  token: Buffer,
  profile: FuzzProfile = "mixed",
): ConnectionPlan {
  return new Planner(connectionRng(seed, index), token, fuzzSets(seed), profile).plan(seed, index);
}

/** The plan as text, for a finding's report: one line per frame, mutated ones with their bytes. */
export function describePlan(plan: ConnectionPlan, maxLines = 300): string {
  const lines: string[] = [];
  const show = (f: PlannedFrame) => {
    const head = f.bytes.subarray(0, 48).toString("hex");
    lines.push(
      `${f.mutated ? "*" : " "} ${f.label}${f.mutated ? `  ${head}${f.bytes.length > 48 ? "…" : ""} (${f.bytes.length} bytes)` : ""}`,
    );
  };
  for (const step of plan.steps) {
    if (step.kind === "write" || step.kind === "finish") {
      if (step.kind === "finish") lines.push(`  -- finish: ${step.how}`);
      step.frames.forEach(show);
    } else if (step.kind === "welcome") lines.push("  -- wait for WELCOME");
    else if (step.kind === "barrier") {
      show(step.frame);
      lines.push("  -- wait for its answer");
    } else {
      lines.push(`  -- wait for NEED id ${step.id}, then the CHUNKs it lists of:`);
      step.chunks.forEach(show);
      step.extra.forEach(show);
    }
  }
  return lines.length > maxLines
    ? [...lines.slice(0, maxLines), `  … ${lines.length - maxLines} more`].join("\n")
    : lines.join("\n");
}

// ---------------------------------------------------------------------------------------
// Running plans against a server

export interface FuzzFinding {
  seed: number;
  connection: number;
  /** "malformed-output", "internal-error", "refused", … */
  kind: string;
  detail: string;
  /** The connection's frames (describePlan). */
  plan: string;
}

export interface FuzzStats {
  seed: number;
  connections: number;
  /** Frames whose write completed before the server ended the connection. */
  framesDelivered: number;
  mutatedDelivered: number;
  /**
   * Frames the server is known to have handled: an answer to a later frame came back
   * (WELCOME, a barrier's answer, NEED, the closing BYE). A lower bound.
   */
  framesConfirmed: number;
  mutatedConfirmed: number;
  /** Server frames by type, ERROR by code ("ERROR KW_BAD_PATH", "ERROR/0 KW_BAD_FRAME"). */
  answers: Record<string, number>;
  /** How connections ended. */
  endings: Record<string, number>;
  /** Distinct KW_SERVER_IO messages (at most 20): server-side failures worth a look. */
  serverIoMessages: string[];
  findings: FuzzFinding[];
  elapsedMs: number;
  framesPerSecond: number;
}

export interface ConnectionReport {
  index: number;
  delivered: number;
  mutated: number;
  ending: string;
}

export interface FuzzOptions {
  port: number;
  /** Stop opening connections once this many frames were delivered. */
  frames: number;
  seed: number;
  /** Credentials for HELLO (localToken); empty before the server has client credentials. */
  token: Buffer;
  /** Connections kept busy at once (default 8). */
  concurrency?: number;
  /** Index of the first connection (a regression replays from the connection that failed). */
  firstConnection?: number;
  /** Most connections to open. */
  connections?: number;
  /** Silence from the server after which the client gives up waiting and ends its side (ms). */
  quietMs?: number;
  /** Stop at the first finding (default true). */
  stopOnFinding?: boolean;
  /** How much of each connection is mutated (default "mixed"). */
  profile?: FuzzProfile;
  signal?: AbortSignal;
  /** Called as each connection ends, with the run's figures so far. */
  onConnection?: (report: ConnectionReport, stats: FuzzStats) => void;
}

const DEFAULT_QUIET_MS = 400;
/** How long a connection may take in all before the runner gives up on it. */
const CONNECTION_DEADLINE_MS = 30_000;
const SERVER_IO_MESSAGES_KEPT = 20;
/** How long the runner waits for the server to close after ending its own side (ms). */
const CLOSE_WAIT_MS = 2500;
/** Chunk indices read from one manifest's NEED frames at most (the plans have a few). */
const MAX_NEEDED = 100_000;

/** Run plans for connections `firstConnection`, `firstConnection + 1`, … until `frames` were delivered. */
export async function runFuzz(options: FuzzOptions): Promise<FuzzStats> {
  const started = performance.now();
  const stats: FuzzStats = {
    seed: options.seed,
    connections: 0,
    framesDelivered: 0,
    mutatedDelivered: 0,
    framesConfirmed: 0,
    mutatedConfirmed: 0,
    answers: {},
    endings: {},
    serverIoMessages: [],
    findings: [],
    elapsedMs: 0,
    framesPerSecond: 0,
  };
  await primeServer(options, stats);
  let next = options.firstConnection ?? 0;
  const end = options.connections === undefined ? Number.POSITIVE_INFINITY : next + options.connections;
  const stopOnFinding = options.stopOnFinding ?? true;
  const worker = async (): Promise<void> => {
    while (
      stats.framesDelivered < options.frames &&
      next < end &&
      !options.signal?.aborted &&
      !(stopOnFinding && stats.findings.length > 0)
    ) {
      const plan = planConnection(options.seed, next++, options.token, options.profile);
      stats.connections++;
      const report = await new FuzzConnection(plan, options, stats).run();
      stats.endings[report.ending] = (stats.endings[report.ending] ?? 0) + 1;
      options.onConnection?.(report, stats);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency ?? 8 }, worker));
  stats.elapsedMs = Math.round(performance.now() - started);
  stats.framesPerSecond = Math.round((stats.framesDelivered * 1000) / Math.max(1, stats.elapsedMs));
  return stats;
}

/**
 * Store every shared content in every set (a well-behaved client), so that PUT_REF and
 * manifest bases find them from the first connection on: a replayed connection then meets
 * the state it met in the long run.
 */
async function primeServer(options: FuzzOptions, stats: FuzzStats): Promise<void> {
  const files = [...POOL, LARGE].map((c, i) => ({ path: `pool/${i}`, data: c.data }));
  const answers = await Promise.all(
    fuzzSets(options.seed).map((set) => putFiles({ port: options.port, token: options.token, set, files })),
  );
  const refused = answers.findIndex((a) => a !== "ACK");
  if (refused >= 0) {
    stats.findings.push({
      seed: options.seed,
      connection: -1,
      kind: "refused",
      detail: `a well-behaved client's PUTs of the shared contents to set ${fuzzSets(options.seed)[refused]} were answered: ${answers[refused]}`,
      plan: "(the PUTs before the first connection)",
    });
  }
}

type WaitOutcome = "done" | "gone" | "quiet";

/** One connection running one plan; counts what it delivered and checks what it receives. */
class FuzzConnection {
  private readonly socket: Socket;
  private readonly decoder = new FrameDecoder();
  private closed = false;
  /** The server sent ERROR for request 0 or BYE, or ended its side: it reads nothing more. */
  private serverGone = false;
  private byeReceived = false;
  private errorReceived = false;
  private lastActivity = Date.now();
  private waiters: (() => void)[] = [];
  private welcomed = false;
  private readonly answered = new Set<number>();
  private readonly needs = new Map<number, { indices: number[]; last: boolean }>();
  /** Bytes of the current file each RESTORE answer still owes (its ENTRY's size minus FILE_DATA). */
  private readonly owed = new Map<number, number>();
  private delivered = 0;
  private mutated = 0;
  private unconfirmed = 0;
  private unconfirmedMutated = 0;
  private readonly quietMs: number;
  /** The ids of the plan's RESTORE requests, when the plan is exact (else unknown). */
  private readonly restoreIds: Set<number> | null;

  constructor(
    private readonly plan: ConnectionPlan,
    private readonly options: FuzzOptions,
    private readonly stats: FuzzStats,
  ) {
    this.quietMs = options.quietMs ?? DEFAULT_QUIET_MS;
    this.restoreIds = plan.exact ? restoreIdsOf(plan) : null;
    this.socket = connect({ host: FUZZ_HOST, port: options.port });
    this.socket.setNoDelay(true);
    this.socket.on("data", (chunk: Buffer) => this.onData(chunk));
    this.socket.on("end", () => this.gone());
    this.socket.on("error", () => {
      // ECONNRESET, EPIPE: the close that follows says it.
    });
    this.socket.on("close", () => {
      this.closed = true;
      this.gone();
    });
  }

  async run(): Promise<ConnectionReport> {
    const deadline = setTimeout(() => this.socket.destroy(), CONNECTION_DEADLINE_MS);
    let ending: string;
    try {
      ending = await this.drive();
    } finally {
      clearTimeout(deadline);
    }
    // A server that keeps a connection open after the client ended its side is worth a look.
    if (!(await this.close())) ending += ", not closed by the server";
    return { index: this.plan.index, delivered: this.delivered, mutated: this.mutated, ending };
  }

  private async drive(): Promise<string> {
    const connected = await new Promise<boolean>((resolve) => {
      this.socket.once("connect", () => resolve(true));
      this.socket.once("close", () => resolve(false));
    });
    if (!connected) {
      this.finding("refused", `the connection to ${FUZZ_HOST}:${this.options.port} was refused or failed`);
      return "refused";
    }
    for (const step of this.plan.steps) {
      if (this.serverGone) return this.errorReceived ? "server-error" : "server-closed";
      switch (step.kind) {
        case "write":
          this.write(step.frames);
          break;
        case "welcome": {
          const outcome = await this.waitUntil(() => this.welcomed);
          if (outcome === "quiet") return "quiet";
          if (outcome === "done") this.confirm();
          break;
        }
        case "barrier": {
          this.write([step.frame]);
          const outcome = await this.waitUntil(() => this.answered.has(step.id));
          if (outcome === "quiet") return "quiet";
          if (outcome === "done") this.confirm();
          break;
        }
        case "chunks": {
          const outcome = await this.waitUntil(
            () => this.needs.get(step.id)?.last === true || this.answered.has(step.id),
          );
          if (outcome === "quiet") return "quiet";
          const need = this.needs.get(step.id);
          if (outcome === "done" && need?.last) {
            this.confirm();
            const wanted = need.indices.flatMap((i) => {
              const chunk = step.chunks[i];
              return chunk ? [chunk] : [];
            });
            this.write([...wanted, ...step.extra]);
          }
          break;
        }
        case "finish":
          return this.finish(step.how, step.frames);
      }
    }
    return this.errorReceived ? "server-error" : "server-closed";
  }

  private async finish(
    how: "bye" | "error" | "end" | "reset" | "partial",
    frames: PlannedFrame[],
  ): Promise<string> {
    if (this.serverGone) return this.errorReceived ? "server-error" : "server-closed";
    this.write(frames);
    switch (how) {
      case "bye":
        // The server answers BYE once its started work is done, then closes.
        return (await this.waitUntil(() => this.byeReceived)) === "done" ? "bye" : "bye-unanswered";
      case "error":
        await this.waitUntil(() => false);
        return "client-error";
      case "reset":
        this.socket.resetAndDestroy();
        return "reset";
      default:
        this.socket.end();
        return how;
    }
  }

  /** End our side, give the server a moment to close, then make sure the socket is gone. */
  /** End our side and wait for the server to close; false when it had to be destroyed. */
  private async close(): Promise<boolean> {
    if (this.closed) return true;
    this.socket.end();
    await this.waitUntil(() => this.closed, CLOSE_WAIT_MS, true);
    if (this.closed) return true;
    this.socket.destroy();
    return false;
  }

  private write(frames: PlannedFrame[]): void {
    if (this.serverGone || frames.length === 0) return;
    this.socket.cork();
    for (const frame of frames) {
      this.socket.write(frame.bytes, (error) => {
        if (error || this.serverGone) return;
        this.lastActivity = Date.now();
        this.delivered++;
        this.unconfirmed++;
        this.stats.framesDelivered++;
        if (frame.mutated) {
          this.mutated++;
          this.unconfirmedMutated++;
          this.stats.mutatedDelivered++;
        }
      });
    }
    this.socket.uncork();
    this.lastActivity = Date.now();
  }

  /** An answer came back: the server handled every frame written before it. */
  private confirm(): void {
    this.stats.framesConfirmed += this.unconfirmed;
    this.stats.mutatedConfirmed += this.unconfirmedMutated;
    this.unconfirmed = 0;
    this.unconfirmedMutated = 0;
  }

  private gone(): void {
    this.serverGone = true;
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const fn of waiters) fn();
  }

  /**
   * Wait until `done()`, the server leaving (unless `throughGone`), or `quietMs` without a
   * byte either way: a server still waiting for the rest of a frame whose length lied.
   */
  private async waitUntil(
    done: () => boolean,
    quietMs = this.quietMs,
    throughGone = false,
  ): Promise<WaitOutcome> {
    const start = Date.now();
    for (;;) {
      if (done()) return "done";
      if (this.closed || (this.serverGone && !throughGone)) return "gone";
      const left = Math.max(this.lastActivity, throughGone ? start : 0) + quietMs - Date.now();
      if (left <= 0) return "quiet";
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  private onData(chunk: Buffer): void {
    this.lastActivity = Date.now();
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (error) {
      this.finding("malformed-output", `the server's bytes do not decode: ${String(error)}`);
      this.socket.destroy();
      return;
    }
    for (const frame of frames) {
      const name = `${messageTypeName(frame.type)} id ${frame.requestId}`;
      if (this.byeReceived || this.errorReceived) {
        const last = this.byeReceived ? "BYE" : "ERROR for request 0";
        this.finding("malformed-output", `the server sent ${name} after its ${last}`);
        continue;
      }
      const problem = this.check(frame);
      if (problem !== null) this.finding("malformed-output", `the server sent ${name}: ${problem}`);
    }
    this.wake();
  }

  private count(key: string): void {
    this.stats.answers[key] = (this.stats.answers[key] ?? 0) + 1;
  }

  /** Why `frame` is not something a server may send, or null. Counts it too. */
  private check(frame: Frame): string | null {
    const id = frame.requestId;
    try {
      switch (frame.type) {
        case MessageType.WELCOME:
          this.count("WELCOME");
          decode.welcome(frame.payload);
          if (id !== 0) return "WELCOME with a request id";
          if (this.welcomed) return "a second WELCOME";
          this.welcomed = true;
          return null;
        case MessageType.ERROR: {
          const code = rawErrorCode(frame.payload);
          const { message } = decode.error(frame.payload);
          this.count(`ERROR${id === 0 ? "/0" : ""} ${code}`);
          const again = this.answerAgain(id);
          if (id === 0) {
            this.errorReceived = true;
            this.gone();
          } else {
            this.answered.add(id);
            this.owed.delete(id);
          }
          if (again) return again;
          if (!(code in ErrorCodes) || !ErrorCodes[code as keyof typeof ErrorCodes].wire) {
            return `its code ${JSON.stringify(code)} is not a wire code`;
          }
          if (code === "KW_SERVER_IO") this.serverIo(message);
          return null;
        }
        case MessageType.PING:
          this.count("PING");
          decode.empty(frame.payload, "PING");
          if (!this.serverGone) this.socket.write(encodeFrame(MessageType.PONG, id));
          return null;
        case MessageType.PONG:
          this.count("PONG");
          decode.empty(frame.payload, "PONG");
          return null;
        case MessageType.BYE:
          this.count("BYE");
          decode.empty(frame.payload, "BYE");
          this.byeReceived = true;
          this.confirm();
          this.gone();
          return id === 0 ? null : "BYE with a request id";
        case MessageType.ACK: {
          this.count("ACK");
          decode.empty(frame.payload, "ACK");
          const owed = this.owed.get(id) ?? 0;
          const again = this.answerAgain(id);
          this.answered.add(id);
          this.owed.delete(id);
          if (id === 0) return "ACK for request 0";
          if (again) return again;
          if (owed > 0 && this.restoreIds?.has(id))
            return `ACK while ${owed} bytes of a file were still owed`;
          return null;
        }
        case MessageType.NEED: {
          this.count("NEED");
          const need = decodeHistory.need(frame.payload);
          const entry = this.needs.get(id) ?? { indices: [], last: false };
          if (entry.last) return "NEED after the last NEED";
          for (const [start, count] of need.ranges) {
            for (let i = start; i < start + count && entry.indices.length < MAX_NEEDED; i++)
              entry.indices.push(i);
          }
          entry.last = need.last;
          this.needs.set(id, entry);
          return null;
        }
        case MessageType.BASIS: {
          this.count("BASIS");
          decodeHistory.basis(frame.payload);
          if (this.needs.get(id)?.last) return "BASIS after the last NEED";
          return null;
        }
        case MessageType.ENTRY: {
          this.count("ENTRY");
          const entry = decodeHistory.entry(frame.payload);
          const owed = this.owed.get(id) ?? 0;
          if (entry.kind === "file") this.owed.set(id, entry.size);
          else this.owed.delete(id);
          // A LIST sends no FILE_DATA: only a RESTORE's ENTRY must wait for the previous file.
          if (owed > 0 && this.restoreIds?.has(id))
            return `ENTRY while ${owed} bytes of the previous file were owed`;
          return null;
        }
        case MessageType.FILE_DATA: {
          this.count("FILE_DATA");
          const owed = this.owed.get(id);
          if (owed === undefined) return "FILE_DATA without a file ENTRY before it";
          this.owed.set(id, owed - frame.payload.length);
          return frame.payload.length > owed ? `${frame.payload.length} bytes where ${owed} were owed` : null;
        }
        default:
          this.count(`type ${messageTypeName(frame.type)}`);
          return "a type a server never sends";
      }
    } catch (error) {
      return `its payload does not decode: ${error instanceof Error ? error.message : String(error)}`;
    }
  }

  /** A request gets one ACK or ERROR (section 7.1); a second one, in an exact plan, is a finding. */
  private answerAgain(id: number): string | null {
    if (id === 0 || !this.plan.exact || !this.answered.has(id)) return null;
    return `a second answer for request ${id}`;
  }

  private serverIo(message: string): void {
    const list = this.stats.serverIoMessages;
    if (list.length < SERVER_IO_MESSAGES_KEPT && !list.includes(message)) list.push(message);
    // The connection's catch-all turns an exception no handler expected into this sentence.
    if (message.startsWith("An internal error")) this.finding("internal-error", message);
  }

  private finding(kind: string, detail: string): void {
    if (this.stats.findings.some((f) => f.connection === this.plan.index && f.kind === kind)) return;
    this.stats.findings.push({
      seed: this.plan.seed,
      connection: this.plan.index,
      kind,
      detail,
      plan: describePlan(this.plan),
    });
  }
}

/** Request ids of the RESTORE frames a plan sends. */
function restoreIdsOf(plan: ConnectionPlan): Set<number> {
  const ids = new Set<number>();
  for (const step of plan.steps) {
    const frames = step.kind === "write" || step.kind === "finish" ? step.frames : [];
    for (const f of frames) {
      if (f.bytes.length >= HEADER_SIZE && f.bytes.readUInt16BE(4) === MessageType.RESTORE) {
        ids.add(f.bytes.readUInt32BE(8));
      }
    }
  }
  return ids;
}

/** The `code` string of an ERROR payload as sent (decode.error maps unknown codes away). */
function rawErrorCode(payload: Buffer): string {
  if (payload.length < 4) return "(none)";
  const n = payload.readUInt32BE(0);
  return payload.subarray(4, 4 + Math.min(n, 64)).toString("utf8");
}

/** A finding as text: what, where, how to replay it, and the frames that led to it. */
export function formatFinding(f: FuzzFinding): string {
  return [
    `FUZZ FINDING (${f.kind}) at seed ${f.seed}, connection ${f.connection}: ${f.detail}`,
    `  replay: KW_FUZZ_SEED=${f.seed} node --import tsx --test test/fuzz.test.ts, or add`,
    `  { seed: ${f.seed}, connection: ${f.connection} } to REGRESSION_SEEDS in test/fuzz.test.ts`,
    "  frames of that connection (* = mutated):",
    f.plan,
  ].join("\n");
}

// ---------------------------------------------------------------------------------------
// Credentials and a well-behaved client

/**
 * The token a local client sends to the server on `port`: the `secret` of
 * `<configDir>/servers/<port>.json`, or empty when there is no such file (a server without
 * client credentials accepts an empty token).
 */
export async function localToken(configDir: string, port: number): Promise<Buffer> {
  const file = join(configDir, "servers", `${port}.json`);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return Buffer.alloc(0);
    throw error;
  }
  const parsed: unknown = JSON.parse(text);
  const secret =
    typeof parsed === "object" && parsed !== null ? (parsed as { secret?: unknown }).secret : undefined;
  if (typeof secret !== "string") throw new Error(`${file} has no string field "secret".`);
  return Buffer.from(secret, "utf8");
}

/**
 * A well-behaved client: HELLO, one PUT per file (at most 63, within the window), BYE.
 * Resolves with "ACK" when every PUT was acknowledged, else with what went wrong (the first
 * ERROR, or how the connection failed).
 */
export async function putFiles(options: {
  port: number;
  token: Buffer;
  set: string;
  files: { path: string; data: Buffer }[];
  timeoutMs?: number;
}): Promise<string> {
  const socket = connect({ host: FUZZ_HOST, port: options.port });
  const decoder = new FrameDecoder();
  let acked = 0;
  return new Promise<string>((resolve) => {
    const done = (answer: string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done("no answer in time"), options.timeoutMs ?? 15_000);
    socket.on("error", (error) => done(`connection failed: ${error.message}`));
    socket.on("close", () => done("the server closed the connection"));
    socket.on("connect", () => {
      const hello = encode.hello({
        minVersion: PROTOCOL_VERSION,
        maxVersion: PROTOCOL_VERSION,
        clientName: "fuzz-check",
        setName: options.set,
        token: options.token,
      });
      socket.write(Buffer.concat([MAGIC, encodeFrame(MessageType.HELLO, 0, hello)]));
    });
    const sendFiles = () => {
      options.files.forEach(({ path, data }, i) => {
        const id = i + 1;
        const begin = encode.putBegin({ path, size: data.length, mtimeMs: Date.now(), mode: 0o644 });
        socket.write(encodeFrame(MessageType.PUT_BEGIN, id, begin));
        if (data.length > 0) socket.write(encodeFrame(MessageType.PUT_DATA, id, data));
        socket.write(encodeFrame(MessageType.PUT_END, id, encode.putEnd({ sha256: sha256(data) })));
      });
    };
    socket.on("data", (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch (error) {
        done(`the server's bytes do not decode: ${String(error)}`);
        return;
      }
      for (const frame of frames) {
        if (frame.type === MessageType.PING) socket.write(encodeFrame(MessageType.PONG, frame.requestId));
        else if (frame.type === MessageType.WELCOME) sendFiles();
        else if (frame.type === MessageType.ACK && ++acked === options.files.length) {
          socket.write(encodeFrame(MessageType.BYE, 0));
          done("ACK");
        } else if (frame.type === MessageType.ERROR) {
          const path = options.files[frame.requestId - 1]?.path ?? "(the connection)";
          const { message } = decode.error(frame.payload);
          done(`ERROR ${rawErrorCode(frame.payload)} for ${path}: ${message}`);
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------
// What must hold after a run

/** The server's arguments for plain TCP: `--insecure` once its `--help` (given) offers it. */
export function serverArgs(serverHelp: string): string[] {
  return serverHelp.includes("--insecure") ? ["--insecure"] : [];
}

/** A run's figures on one line. */
export function formatStats(s: FuzzStats): string {
  const top = Object.entries(s.answers)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 12)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  const endings = Object.entries(s.endings)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  return (
    `${s.framesDelivered} frames delivered (${s.mutatedDelivered} mutated), ` +
    `${s.framesConfirmed} confirmed handled (${s.mutatedConfirmed} mutated), ${s.connections} connections, ` +
    `${s.elapsedMs} ms, ${s.framesPerSecond} frames/s; endings: ${endings}; answers: ${top}` +
    (s.serverIoMessages.length > 0 ? `; ${s.serverIoMessages.length} distinct KW_SERVER_IO messages` : "")
  );
}

/** Peak resident memory of process `pid` (VmHWM), or null where /proc does not say. */
export async function peakRssBytes(pid: number): Promise<number | null> {
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => null);
  const match = status ? /^VmHWM:\s+(\d+)\s+kB/m.exec(status) : null;
  return match ? Number(match[1]) * 1024 : null;
}

/** Called with a folder that cannot be listed; may fix its permissions (a test's own tree). */
export type Unlistable = (folder: string) => Promise<void>;

/**
 * Give every folder below `root` (and `root`) owner rwx, so that it can be listed and
 * removed: a fuzzed MKDIR may create one its owner cannot enter. Only for a test's own tree.
 */
export async function ownerCanEnter(root: string): Promise<void> {
  const st = await lstat(root).catch(() => null);
  if (!st?.isDirectory()) return;
  if ((st.mode & 0o700) !== 0o700) await chmod(root, (st.mode & 0o7777) | 0o700);
  for (const name of await readdir(root)) await ownerCanEnter(join(root, name));
}

async function listFolder(folder: string, fix?: Unlistable): Promise<string[]> {
  try {
    return (await readdir(folder)).sort();
  } catch (error) {
    if (!fix || (errnoCode(error) !== "EACCES" && errnoCode(error) !== "EPERM")) throw error;
    await fix(folder);
    return (await readdir(folder)).sort();
  }
}

/**
 * Every entry below `root` except `skip` (a name directly in `root`) and what it holds, one
 * line each: path, kind, size, mode, mtime, and a file's SHA-256. Compare two of them to
 * see that nothing there changed.
 */
export async function snapshotOutside(root: string, skip: string): Promise<string[]> {
  const lines: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const name of await listFolder(rel === "" ? root : join(root, rel))) {
      const child = rel === "" ? name : `${rel}/${name}`;
      if (child === skip) continue;
      const st = await lstat(join(root, child));
      const kind = st.isDirectory() ? "dir" : st.isFile() ? "file" : st.isSymbolicLink() ? "link" : "other";
      const hash = st.isFile() ? sha256(await readFile(join(root, child))).toString("hex") : "";
      lines.push(
        `${child} ${kind} ${st.isDirectory() ? 0 : st.size} 0o${(st.mode & 0o7777).toString(8)} ${st.mtimeMs} ${hash}`,
      );
      if (st.isDirectory()) await walk(child);
    }
  };
  await walk("");
  return lines;
}

/**
 * What is wrong inside DEST: anything directly in it other than `.keepwatch` and folders
 * with valid set names, a path inside a set that the wire rules forbid, and any symbolic
 * link or special file anywhere. Only lstat: file modes the fuzzer chose do not matter.
 */
export async function checkDestination(dest: string, fix?: Unlistable): Promise<string[]> {
  const problems: string[] = [];
  const walk = async (rel: string, set: string | null): Promise<void> => {
    for (const name of await listFolder(join(dest, rel), fix)) {
      const child = rel === "" ? name : `${rel}/${name}`;
      const st = await lstat(join(dest, child));
      if (st.isSymbolicLink()) problems.push(`DEST/${child} is a symbolic link`);
      else if (!st.isDirectory() && !st.isFile()) problems.push(`DEST/${child} is a special file`);
      if (rel === "") {
        if (name === CONTROL_DIR) {
          if (!st.isDirectory()) problems.push(`DEST/${name} is not a folder`);
          else await walk(child, null);
          continue;
        }
        const problem = setNameProblem(name);
        if (problem !== null) problems.push(`DEST/${name} is not a set's folder: ${problem}`);
        else if (!st.isDirectory()) problems.push(`DEST/${name} is a file where only set folders belong`);
        else await walk(child, name);
        continue;
      }
      if (set !== null) {
        const path = child.slice(set.length + 1);
        const problem = pathProblem(path);
        if (problem !== null)
          problems.push(`DEST/${child} is not a valid path inside set ${set}: ${problem}`);
      }
      if (st.isDirectory()) await walk(child, set);
    }
  };
  await walk("", null);
  return problems.length > 25 ? [...problems.slice(0, 25), `… and ${problems.length - 25} more`] : problems;
}

/**
 * Files a server left in DEST/.keepwatch/tmp once every connection has closed (it removes
 * a refused or aborted file's temporary copy, within `timeoutMs`).
 */
export async function waitForEmptyTemp(dest: string, timeoutMs = 5000): Promise<string[]> {
  const tmp = join(dest, CONTROL_DIR, "tmp");
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await readdir(tmp).catch(() => []);
    if (left.length === 0) return [];
    if (Date.now() >= deadline) {
      const names = left.slice(0, 5).join(", ");
      return [
        `${left.length} temporary file(s) left in DEST/${CONTROL_DIR}/tmp after every connection closed: ${names}${left.length > 5 ? ", …" : ""}`,
      ];
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
