// `npm run chaos`: kill keepwatch at random moments while it backs up a large, changing tree,
// then check that nothing was lost. A real server (`keepwatch server DEST 127.0.0.1 --port P`)
// and a real watching client (`keepwatch client SRC 127.0.0.1 --port P`) run in a temporary
// folder of their own; an editor keeps changing SRC (rewrites, appends, in-place edits of
// large files, new files and folders, deletes, renames, mode and mtime changes) while a
// killer SIGKILLs the server (restarting it on the same DEST and port) N times, then the
// client N times. Then the editing stops and, once the client is idle, the checks run: the
// mirror equals SRC (content, mode, mtime), no temporary file is left, every acknowledged
// version is in the history as the content the editor wrote, a sample of them (and every
// large-file version) restores byte for byte, `keepwatch verify DEST` is clean, and no
// process crashed or gave up. It prints the kills survived, the bytes sent and sent again,
// the time of each phase and every problem; the exit code is 1 on any problem.
//
// The figures, all taken from the client's --json events and the server's history:
//   bytes sent in all         the sum of `sentBytes` of every acknowledged put (file-done) of
//                             every client run: content bytes that travelled for versions the
//                             server acknowledged (the rest of their size was reused).
//   bytes sent again          the part of that sum spent on content that had travelled before
//                             a kill: puts whose path's previous version in the history already
//                             had exactly that content (its ACK, or the client's record of it,
//                             was lost), and puts of a content whose earlier transfer of the
//                             same path a kill cut off. Printed as a range: the whole-file
//                             part is exact; for chunked files a put's sentBytes may include
//                             chunks that had not travelled before the kill (an upper bound).
//   transfers cut off         file-start events with no file-done before their connection
//                             ended; their bytes are in neither figure (the events do not say
//                             how much of a chunked file had travelled).
// The seed fixes the tree, the edits and the kill moments; how they interleave with the
// processes depends on timing, so a replay meets similar, not identical, situations.
//
// Usage: tsx scripts/chaos.ts [--server-kills N] [--client-kills N] [--minutes M] [--seed S]
//                             [--quick] [--keep]

import { spawn } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import {
  appendFileSync,
  chmodSync,
  closeSync,
  copyFileSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { lstat, readdir, readFile, rm } from "node:fs/promises";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { PIECE_SIZE } from "../src/client/transfer.js";
import { formatBytes } from "../src/ui/plain.js";
import {
  CLI,
  freePort,
  type KwEvent,
  type KwProcess,
  LOOPBACK,
  REPO,
  readTree,
  Sandbox,
  sleep,
  stackLines,
  treeDifferences,
} from "../test/helpers.js";

const USAGE =
  "Usage: tsx scripts/chaos.ts [--server-kills N] [--client-kills N] [--minutes M] [--seed S] [--quick] [--keep]\n" +
  "  --server-kills N  SIGKILL and restart the server N times (default 50; 10 per round with --minutes)\n" +
  "  --client-kills N  then SIGKILL and restart the client N times (default 50; 10 per round with --minutes)\n" +
  "  --minutes M       soak: repeat rounds of edits, kills and checks until M minutes have passed\n" +
  "  --seed S          seed of the tree, the edits and the kill moments (default: from the clock)\n" +
  "  --quick           the short form run by npm test: a small tree, 5 + 5 kills\n" +
  "  --keep            leave the temporary folder (its path is printed)\n" +
  "Exit codes: 0 every check passed, 1 a check failed (each problem is listed), 2 usage error, 130 interrupted";

/** The set's name: SRC's folder name. */
const SET = "src";
/** Where the large files live in SRC; small-file edits leave this folder alone. */
const LARGE_DIR = "large";
/** Names that keepwatch's own temporary files have, wherever they could be left behind. */
const TEMP_NAME = /^put-\d+-[0-9a-f]+-\d+$|^\.kw-restore-|\.swp-\d+$/;

// ---------------------------------------------------------------------------------------
// Options

export interface ChaosOptions {
  serverKills: number;
  clientKills: number;
  /** Soak: rounds until this many minutes have passed; null for one round. */
  minutes: number | null;
  seed: number;
  quick: boolean;
  keep: boolean;
}

/** The sizes of a run: the tree, the pace of the editor and of the killer, the checks. */
interface Shape {
  smallFiles: number;
  folders: number;
  largeMiB: number[];
  /** Pause between two small-file edits (ms, uniform). */
  smallEveryMs: [number, number];
  /** Pause between two large-file edits (ms, uniform). */
  largeEveryMs: [number, number];
  /** The "random" kill moment: this long after the restart (ms, uniform). */
  randomKillMs: [number, number];
  /** Acknowledged versions restored besides the large files' (per round). */
  restoreSample: number;
  /** Large-file versions restored at most (per round); all of them when there are fewer. */
  largeRestoreCap: number;
  /** Mirror differences that stay this long while the client is idle will not go away (ms). */
  stuckMs: number;
}

const FULL: Shape = {
  smallFiles: 3000,
  folders: 150,
  largeMiB: [16, 24, 40, 64],
  smallEveryMs: [10, 90],
  largeEveryMs: [1500, 4000],
  randomKillMs: [100, 3000],
  restoreSample: 50,
  largeRestoreCap: Number.POSITIVE_INFINITY,
  // Longer than the client's retry interval (5 s) and its fallback rescans (10 s).
  stuckMs: 30_000,
};

const QUICK: Shape = {
  smallFiles: 400,
  folders: 30,
  largeMiB: [6, 12],
  smallEveryMs: [10, 90],
  largeEveryMs: [700, 1500],
  randomKillMs: [100, 1500],
  restoreSample: 6,
  largeRestoreCap: 6,
  stuckMs: 12_000,
};

function parseOptions(argv: string[]): ChaosOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      "server-kills": { type: "string" },
      "client-kills": { type: "string" },
      minutes: { type: "string" },
      seed: { type: "string" },
      quick: { type: "boolean" },
      keep: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const count = (text: string | undefined, name: string, fallback: number): number => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isInteger(value) || value < 0)
      usage(`--${name} must be a whole number, not ${JSON.stringify(text)}.`);
    return value;
  };
  const quick = values.quick ?? false;
  const minutes = values.minutes === undefined ? null : Number(values.minutes);
  if (minutes !== null && !(Number.isFinite(minutes) && minutes > 0)) {
    usage(`--minutes must be a positive number, not ${JSON.stringify(values.minutes)}.`);
  }
  const kills = quick ? 5 : minutes !== null ? 10 : 50;
  return {
    serverKills: count(values["server-kills"], "server-kills", kills),
    clientKills: count(values["client-kills"], "client-kills", kills),
    minutes,
    seed: count(values.seed, "seed", Date.now() % 1_000_000),
    quick,
    keep: values.keep ?? false,
  };
}

function usage(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------
// Seeded randomness

/** mulberry32, plus AES-CTR keystreams for file contents: the same seed, the same bytes. */
class Random {
  private state: number;

  constructor(seed: number) {
    this.state = (seed ^ 0x9e37_79b9) >>> 0;
  }

  next(): number {
    this.state = (this.state + 0x6d2b_79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }

  /** An integer in [lo, hi). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * Math.max(0, hi - lo));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error("pick from an empty list");
    return items[this.int(0, items.length)] as T;
  }

  weighted<K extends string>(weights: Record<K, number>): K {
    const entries = Object.entries(weights) as [K, number][];
    const total = entries.reduce((sum, [, w]) => sum + Math.max(0, w), 0);
    let at = this.next() * total;
    for (const [key, w] of entries) {
      at -= Math.max(0, w);
      if (at < 0) return key;
    }
    return (entries[entries.length - 1] as [K, number])[0];
  }

  /** log-uniform in [lo, hi): many small values, some large. */
  logInt(lo: number, hi: number): number {
    const a = Math.log(Math.max(1, lo));
    const b = Math.log(Math.max(lo + 1, hi));
    return Math.min(hi - 1, Math.floor(Math.exp(a + this.next() * (b - a))));
  }

  /** `n` incompressible bytes. */
  bytes(n: number): Buffer {
    if (n <= 0) return Buffer.alloc(0);
    const key = Buffer.alloc(32);
    for (let i = 0; i < 8; i++) key.writeUInt32LE(Math.floor(this.next() * 4_294_967_296), i * 4);
    return createCipheriv("aes-256-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(n));
  }
}

// ---------------------------------------------------------------------------------------
// The source tree and the editor that keeps changing it

/** One state a file had after an edit: what an acknowledged version must be one of. */
interface FileState {
  sha256: string;
  size: number;
  mtimeMs: number;
  mode: number;
  /** When the edit that made it ended (ms since the epoch). */
  at: number;
}

/** A set of paths with O(1) add, remove and random pick. */
class PathPool {
  private readonly items: string[] = [];
  private readonly index = new Map<string, number>();

  get size(): number {
    return this.items.length;
  }

  has(path: string): boolean {
    return this.index.has(path);
  }

  add(path: string): void {
    if (this.index.has(path)) return;
    this.index.set(path, this.items.length);
    this.items.push(path);
  }

  remove(path: string): void {
    const at = this.index.get(path);
    if (at === undefined) return;
    const last = this.items.pop() as string;
    if (last !== path) {
      this.items[at] = last;
      this.index.set(last, at);
    }
    this.index.delete(path);
  }

  pick(rng: Random): string | null {
    return this.items.length === 0 ? null : rng.pick(this.items);
  }

  /** The paths at or below `folder`. */
  below(folder: string): string[] {
    return this.items.filter((p) => p === folder || p.startsWith(`${folder}/`));
  }

  all(): string[] {
    return [...this.items];
  }
}

const FILE_MODES = [0o644, 0o600, 0o640, 0o755];

/**
 * Builds SRC from a seed and then edits it, one synchronous step at a time (so no edit is
 * ever half done while the event loop runs), recording every state each file was left in.
 */
class SourceEditor {
  /** Every state each path was left in by an edit, oldest first. */
  readonly states = new Map<string, FileState[]>();
  readonly ops = new Map<string, number>();
  /** What happened to each path (made, deleted, renamed), for explaining a difference. */
  readonly trail = new Map<string, { op: string; at: number }[]>();
  private readonly small = new PathPool();
  private readonly large = new PathPool();
  private readonly folders = new PathPool();
  /** The size a large file started with: appends and rewrites stay near it. */
  private readonly baseSize = new Map<string, number>();
  private counter = 0;
  private stopped = true;
  private loop: Promise<void> = Promise.resolve();
  failure: Error | null = null;

  constructor(
    readonly root: string,
    private readonly shape: Shape,
    private readonly rng: Random,
  ) {}

  get fileCount(): number {
    return this.small.size + this.large.size;
  }

  isLarge(path: string): boolean {
    return path.startsWith(`${LARGE_DIR}/`);
  }

  /** The state `path` had at `time`: the last one recorded at or before it. */
  stateAt(path: string, time: number): FileState | null {
    const list = this.states.get(path) ?? [];
    let found: FileState | null = null;
    for (const s of list) if (s.at <= time) found = s;
    return found;
  }

  /** The initial tree: folders, small files, large files; deterministic from `rng`. */
  generate(rng: Random): void {
    mkdirSync(this.root, { recursive: true });
    for (let i = 0; i < this.shape.folders; i++) {
      const parent = rng.chance(0.3) ? "" : (this.folders.pick(rng) ?? "");
      if (parent.split("/").length >= 5) continue;
      const path = join2(parent, this.folderName(rng));
      mkdirSync(this.abs(path));
      this.folders.add(path);
    }
    for (let i = 0; i < this.shape.smallFiles; i++) {
      const path = join2(this.folders.pick(rng) ?? "", this.fileName(rng));
      writeFileSync(this.abs(path), rng.bytes(this.smallSize(rng)), { mode: rng.pick(FILE_MODES) });
      this.small.add(path);
      this.record(path);
    }
    mkdirSync(this.abs(LARGE_DIR));
    this.shape.largeMiB.forEach((mib, i) => {
      const path = `${LARGE_DIR}/big-${i}.bin`;
      writeFileSync(this.abs(path), rng.bytes(mib * 1024 * 1024));
      this.large.add(path);
      this.baseSize.set(path, mib * 1024 * 1024);
      this.record(path);
    });
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  private async run(): Promise<void> {
    let nextLarge = Date.now() + this.rng.int(...this.shape.largeEveryMs);
    while (!this.stopped) {
      await sleep(this.rng.int(...this.shape.smallEveryMs));
      if (this.stopped) break;
      try {
        this.count(this.smallStep());
        if (Date.now() >= nextLarge) {
          this.count(`large ${this.largeStep()}`);
          nextLarge = Date.now() + this.rng.int(...this.shape.largeEveryMs);
        }
      } catch (error) {
        this.failure = error instanceof Error ? error : new Error(String(error));
        this.stopped = true;
      }
    }
  }

  private count(op: string): void {
    this.ops.set(op, (this.ops.get(op) ?? 0) + 1);
  }

  /** One edit of the small files and folders; returns its name. */
  private smallStep(): string {
    const rng = this.rng;
    const target = this.shape.smallFiles;
    const few = this.small.size < target * 0.9;
    const many = this.small.size > target * 1.1;
    const op = rng.weighted({
      rewrite: 20,
      append: 14,
      "in-place": 8,
      "editor save": 6,
      create: few ? 40 : many ? 0 : 13,
      delete: many ? 40 : few ? 0 : 11,
      rename: 8,
      copy: 3,
      chmod: 4,
      touch: 4,
      medium: 3,
      mkdir: 2,
      "new subtree": 2,
      "rename folder": 2,
      "delete folder": few ? 0 : 2,
    });
    const path = this.small.pick(rng);
    if (path === null && !["create", "mkdir", "new subtree"].includes(op)) return this.create();
    const p = path as string;
    switch (op) {
      case "rewrite":
        writeFileSync(this.abs(p), rng.bytes(this.smallSize(rng)));
        break;
      case "append":
        appendFileSync(this.abs(p), rng.bytes(rng.logInt(1, 8192)));
        break;
      case "in-place":
        this.patch(p, rng.int(1, 4), 64);
        break;
      case "editor save": {
        // Write a sibling, then rename it over the file: a new inode at the same path.
        const temp = join2(parentOf(p), `.${basename(p)}.swp-${++this.counter}`);
        writeFileSync(this.abs(temp), rng.bytes(this.smallSize(rng)), { mode: statSync(this.abs(p)).mode });
        renameSync(this.abs(temp), this.abs(p));
        break;
      }
      case "create":
        return this.create();
      case "delete":
        unlinkSync(this.abs(p));
        this.small.remove(p);
        this.note(p, "deleted");
        return op;
      case "rename": {
        const to = join2(this.folders.pick(rng) ?? "", this.fileName(rng));
        renameSync(this.abs(p), this.abs(to));
        this.moved(p, to);
        this.small.remove(p);
        this.small.add(to);
        return op;
      }
      case "copy": {
        const to = join2(this.folders.pick(rng) ?? "", this.fileName(rng));
        copyFileSync(this.abs(p), this.abs(to));
        this.small.add(to);
        this.record(to);
        return op;
      }
      case "chmod": {
        const mode = statSync(this.abs(p)).mode & 0o7777;
        chmodSync(this.abs(p), rng.pick(FILE_MODES.filter((m) => m !== mode)));
        break;
      }
      case "touch":
        this.touch(p);
        break;
      case "medium":
        writeFileSync(this.abs(p), rng.bytes(rng.int(PIECE_SIZE + 1, 2 * 1024 * 1024)));
        break;
      case "mkdir": {
        const folder = join2(this.folders.pick(rng) ?? "", this.folderName(rng));
        mkdirSync(this.abs(folder));
        this.folders.add(folder);
        this.note(folder, "folder made");
        return op;
      }
      case "new subtree": {
        // mkdir -p a/b and files in b at once: the watcher must find folders it never saw made.
        const a = join2(this.folders.pick(rng) ?? "", this.folderName(rng));
        const b = join2(a, this.folderName(rng));
        mkdirSync(this.abs(b), { recursive: true });
        this.folders.add(a);
        this.folders.add(b);
        this.note(a, "folder made");
        this.note(b, "folder made");
        for (let i = rng.int(1, 5); i > 0; i--) {
          const file = join2(b, this.fileName(rng));
          writeFileSync(this.abs(file), rng.bytes(this.smallSize(rng)));
          this.small.add(file);
          this.record(file);
        }
        return op;
      }
      case "rename folder":
        return this.renameFolder() ? op : this.create();
      case "delete folder":
        return this.deleteFolder() ? op : this.create();
    }
    this.record(p);
    return op;
  }

  /** One edit of a large file; returns its name. */
  private largeStep(): string {
    const rng = this.rng;
    const p = this.large.pick(rng) as string;
    const abs = this.abs(p);
    const size = statSync(abs).size;
    const base = this.baseSize.get(p) ?? size;
    let op = rng.weighted({
      "in-place": 40,
      append: 15,
      "insert at start": 10,
      rewrite: 12,
      truncate: 8,
      rename: 5,
      touch: 5,
      chmod: 5,
    });
    if (op === "append" && size > base * 1.5) op = "truncate";
    if (op === "truncate" && size < base * 0.5) op = "append";
    switch (op) {
      case "in-place":
        this.patch(p, rng.int(1, 5), 4096);
        break;
      case "append":
        appendFileSync(abs, rng.bytes(rng.int(256 * 1024, 4 * 1024 * 1024)));
        break;
      case "insert at start":
        writeFileSync(abs, Buffer.concat([rng.bytes(rng.int(1, 64 * 1024)), readFileSync(abs)]));
        break;
      case "rewrite":
        writeFileSync(abs, rng.bytes(Math.floor(base * (0.8 + 0.4 * rng.next()))));
        break;
      case "truncate":
        truncateSync(abs, Math.floor(size * (0.6 + 0.35 * rng.next())));
        break;
      case "rename": {
        const to = `${LARGE_DIR}/big-${++this.counter}.bin`;
        renameSync(abs, this.abs(to));
        this.moved(p, to);
        this.large.remove(p);
        this.large.add(to);
        this.baseSize.set(to, base);
        return op;
      }
      case "touch":
        this.touch(p);
        break;
      case "chmod": {
        const mode = statSync(abs).mode & 0o7777;
        chmodSync(abs, rng.pick(FILE_MODES.filter((m) => m !== mode)));
        break;
      }
    }
    this.record(p);
    return op;
  }

  private create(): string {
    const path = join2(this.folders.pick(this.rng) ?? "", this.fileName(this.rng));
    writeFileSync(this.abs(path), this.rng.bytes(this.smallSize(this.rng)), {
      mode: this.rng.pick(FILE_MODES),
    });
    this.small.add(path);
    this.record(path);
    return "create";
  }

  /** Overwrite `count` runs of up to `maxLength` bytes inside the file, keeping its size. */
  private patch(path: string, count: number, maxLength: number): void {
    const size = statSync(this.abs(path)).size;
    if (size === 0) {
      appendFileSync(this.abs(path), this.rng.bytes(this.rng.int(1, maxLength)));
      return;
    }
    const fd = openSync(this.abs(path), "r+");
    try {
      for (let i = 0; i < count; i++) {
        const length = Math.min(size, this.rng.int(1, maxLength + 1));
        writeSync(fd, this.rng.bytes(length), 0, length, this.rng.int(0, size - length + 1));
      }
    } finally {
      closeSync(fd);
    }
  }

  private touch(path: string): void {
    const seconds = Date.now() / 1000 - this.rng.int(1, 10_000_000) - this.rng.next();
    utimesSync(this.abs(path), seconds, seconds);
  }

  private renameFolder(): boolean {
    const from = this.folders.pick(this.rng);
    if (from === null) return false;
    const parent = this.folders.pick(this.rng) ?? "";
    if (parent === from || parent.startsWith(`${from}/`) || parent.split("/").length >= 6) return false;
    const to = join2(parent, this.folderName(this.rng));
    renameSync(this.abs(from), this.abs(to));
    const moved = (p: string) => to + p.slice(from.length);
    for (const folder of this.folders.below(from)) {
      this.folders.remove(folder);
      this.folders.add(moved(folder));
      this.note(folder, `folder renamed to ${JSON.stringify(moved(folder))}`);
      this.note(moved(folder), `folder renamed from ${JSON.stringify(folder)}`);
    }
    for (const file of this.small.below(from)) {
      this.moved(file, moved(file));
      this.small.remove(file);
      this.small.add(moved(file));
    }
    return true;
  }

  private deleteFolder(): boolean {
    const folder = this.folders.pick(this.rng);
    if (folder === null) return false;
    const files = this.small.below(folder);
    if (files.length > 25) return false;
    rmSync(this.abs(folder), { recursive: true });
    for (const file of files) {
      this.small.remove(file);
      this.note(file, `deleted with folder ${JSON.stringify(folder)}`);
    }
    for (const f of this.folders.below(folder)) {
      this.folders.remove(f);
      this.note(f, `folder deleted with ${JSON.stringify(folder)}`);
    }
    return true;
  }

  /** A file moved: its new path starts with the old path's last state. */
  private moved(from: string, to: string): void {
    const last = this.states.get(from)?.at(-1);
    if (!last) throw new Error(`the editor has no state for ${from}`);
    this.note(from, `renamed to ${JSON.stringify(to)}`);
    this.note(to, `renamed from ${JSON.stringify(from)}`);
    this.push(to, { ...last, at: Date.now() });
  }

  private record(path: string): void {
    if (!this.states.has(path)) this.note(path, "made");
    const abs = this.abs(path);
    const data = readFileSync(abs);
    const st = statSync(abs);
    this.push(path, {
      sha256: createHash("sha256").update(data).digest("hex"),
      size: data.length,
      mtimeMs: st.mtimeMs,
      mode: st.mode & 0o7777,
      at: Date.now(),
    });
  }

  private note(path: string, op: string): void {
    const list = this.trail.get(path);
    const entry = { op, at: Date.now() };
    if (list) list.push(entry);
    else this.trail.set(path, [entry]);
  }

  private push(path: string, state: FileState): void {
    const list = this.states.get(path);
    if (list) list.push(state);
    else this.states.set(path, [state]);
  }

  private smallSize(rng: Random): number {
    const kind = rng.next();
    if (kind < 0.05) return 0;
    if (kind < 0.8) return rng.logInt(1, 16 * 1024);
    if (kind < 0.97) return rng.int(16 * 1024, 128 * 1024);
    return rng.int(PIECE_SIZE + 1, 1536 * 1024);
  }

  private fileName(rng: Random): string {
    const n = ++this.counter;
    return rng.pick([`f${n}.dat`, `f${n}.dat`, `note ${n}.txt`, `données-${n}.bin`, `${n}`]);
  }

  private folderName(rng: Random): string {
    const n = ++this.counter;
    return rng.pick([`d${n}`, `d${n}`, `sub dir ${n}`, `répertoire-${n}`]);
  }

  private abs(path: string): string {
    return join(this.root, path);
  }
}

function join2(folder: string, name: string): string {
  return folder === "" ? name : `${folder}/${name}`;
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? "" : path.slice(0, slash);
}

// ---------------------------------------------------------------------------------------
// The processes and the killer

type Role = "server" | "client";

/** One run of a server or a client process, from its start to its end. */
interface Incarnation {
  role: Role;
  proc: KwProcess;
  startedMs: number;
  /** When we killed or stopped it; null while it runs or if it ended by itself. */
  endedMs: number | null;
  /** How we ended it; "unexpected" when it exited on its own. */
  end: "SIGKILL" | "SIGTERM" | "unexpected" | null;
}

interface Kill {
  role: Role;
  moment: string;
  /** The client's transfers under way (file-start without file-done), as seen at the kill. */
  inFlight: { path: string; size: number }[];
}

/** A real server and a real client on one DEST, SRC and port; kills and restarts them. */
class Cluster {
  readonly incarnations: Incarnation[] = [];
  readonly kills: Kill[] = [];
  server: Incarnation | null = null;
  client: Incarnation | null = null;
  /** Set when the run is being abandoned (Ctrl-C): exits are no longer problems. */
  ending = false;

  constructor(
    readonly box: Sandbox,
    readonly src: string,
    readonly dest: string,
    readonly port: number,
    private readonly problems: string[],
  ) {}

  get clients(): Incarnation[] {
    return this.incarnations.filter((i) => i.role === "client");
  }

  /** Start the server on the fixed port; waits for its `listening` event. */
  async startServer(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const started = Date.now();
      try {
        const handle = await this.box.startServer(this.dest, { port: this.port });
        this.server = this.watch({
          role: "server",
          proc: handle.proc,
          startedMs: started,
          endedMs: null,
          end: null,
        });
        return;
      } catch (error) {
        const proc = this.box.processes.at(-1);
        // The port of the process just killed may take a moment to be free again.
        if (proc?.exitStatus?.code === 4 && attempt < 20) {
          await sleep(250);
          continue;
        }
        throw new Error(
          `The server could not be restarted (attempt ${attempt}): ${error instanceof Error ? error.message : String(error)}`,
        );
      }
    }
  }

  /** Start a watching client; does not wait for it to connect. */
  startClient(): void {
    const started = Date.now();
    const proc = this.box.spawn("client", [
      "client",
      this.src,
      LOOPBACK,
      "--port",
      String(this.port),
      "--json",
    ]);
    this.client = this.watch({ role: "client", proc, startedMs: started, endedMs: null, end: null });
  }

  private watch(inc: Incarnation): Incarnation {
    this.incarnations.push(inc);
    void inc.proc.closed.then((status) => {
      if (inc.end !== null || this.ending) return;
      inc.end = "unexpected";
      inc.endedMs = Date.now();
      this.problems.push(
        `The ${inc.role} exited by itself (code ${status.code}, signal ${status.signal}) after ${seconds(Date.now() - inc.startedMs)}:\n${inc.proc.describe(30)}`,
      );
    });
    return inc;
  }

  /** SIGKILL the role's process and wait until it is gone; null if it had already ended. */
  async kill(role: Role, moment: string): Promise<Kill | null> {
    const inc = role === "server" ? this.server : this.client;
    if (!inc || inc.end !== null) return null;
    const now = Date.now();
    const kill: Kill = {
      role,
      moment,
      inFlight: this.client ? openTransfers(this.client.proc.events) : [],
    };
    inc.end = "SIGKILL";
    inc.endedMs = now;
    await inc.proc.stop("SIGKILL");
    this.kills.push(kill);
    return kill;
  }

  /** SIGTERM the role's process; a problem unless it exits with code 0. */
  async stop(role: Role): Promise<void> {
    const inc = role === "server" ? this.server : this.client;
    if (!inc || inc.end !== null) return;
    inc.end = "SIGTERM";
    inc.endedMs = Date.now();
    const status = await inc.proc.stop("SIGTERM", 15_000);
    if (status.code !== 0) {
      const hint = role === "server" ? `\n${describePeers(inc.proc.events)}` : "";
      this.problems.push(
        `The ${role} did not stop cleanly on SIGTERM (code ${status.code}, signal ${status.signal}; 13 is Node's "unsettled top-level await": it waited for something that could no longer happen):${hint}\n${inc.proc.describe(30)}`,
      );
    }
  }

  /** Wait until the current client prints an event of `kind` (index `since` on); false on time-out. */
  async waitClient(
    kind: string,
    since: number,
    timeoutMs: number,
    match: (e: KwEvent) => boolean = () => true,
  ): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    const client = this.client;
    while (Date.now() < deadline) {
      if (!client || client.end !== null || !client.proc.running) return false;
      if (client.proc.events.slice(since).some((e) => e.event === kind && match(e))) return true;
      await sleep(20);
    }
    return false;
  }
}

/** The server's connections that never ended, and what each last received: for a stuck stop. */
function describePeers(events: readonly KwEvent[]): string {
  const open = new Map<string, KwEvent>();
  for (const e of events) {
    if (e.event === "peer-connected") open.set(String(e.peer), e);
    else if (e.event === "peer-disconnected") open.delete(String(e.peer));
  }
  if (open.size === 0) return "    every connection the server reported had ended";
  const lines = [...open.values()].map((e) => `      ${e.peer} connected at ${e.time}`);
  return [`    connections the server never reported as ended (${open.size}):`, ...lines.slice(0, 10)].join(
    "\n",
  );
}

/** The transfers of the client's current connection that have started and not finished. */
function openTransfers(events: readonly KwEvent[]): { path: string; size: number }[] {
  let from = 0;
  for (let i = events.length - 1; i >= 0; i--) {
    const kind = events[i]?.event;
    if (kind === "connected" || kind === "disconnected") {
      from = i;
      break;
    }
  }
  const open = new Map<string, number>();
  for (const e of events.slice(from)) {
    if (e.event === "file-start") open.set(String(e.path), Number(e.size));
    else if (e.event === "file-done") open.delete(String(e.path));
  }
  return [...open].map(([path, size]) => ({ path, size }));
}

function inFlight(kill: Kill): string {
  if (kill.inFlight.length === 0) return "nothing in flight";
  const shown = kill.inFlight.slice(0, 2).map((t) => `${t.path} ${formatBytes(t.size)}`);
  return `${kill.inFlight.length} in flight (${shown.join(", ")}${kill.inFlight.length > 2 ? ", …" : ""})`;
}

const MOMENTS = {
  "right after a restart": 20,
  "after the client reconnected": 20,
  "mid-transfer of a large file": 30,
  random: 30,
} as const;

type Moment = keyof typeof MOMENTS;

/**
 * SIGKILL the server (or the client) `count` times at random moments, restarting it each
 * time, until `deadline`. Returns the number of kills.
 */
async function killPhase(
  cluster: Cluster,
  role: Role,
  count: number,
  over: () => boolean,
  shape: Shape,
  rng: Random,
  log: (line: string) => void,
): Promise<number> {
  let restartIndex = cluster.client?.proc.events.length ?? 0;
  let done = 0;
  for (let k = 1; k <= count && !over(); k++) {
    const moment = rng.weighted<Moment>({ ...MOMENTS });
    const waitStart = Date.now();
    let note = "";
    switch (moment) {
      case "right after a restart":
        // The server: while the client may be connecting. The client: while it starts, opens
        // its state, connects or scans.
        await sleep(role === "server" ? rng.int(0, 150) : rng.int(50, 800));
        break;
      case "after the client reconnected": {
        const ok = await cluster.waitClient("connected", restartIndex, 20_000);
        if (!ok) note = " (it had not reconnected within 20 s)";
        await sleep(rng.int(0, 300));
        break;
      }
      case "mid-transfer of a large file": {
        const since = cluster.client?.proc.events.length ?? 0;
        const ok = await cluster.waitClient("file-start", since, 4000, (e) => Number(e.size) > PIECE_SIZE);
        if (!ok) note = " (none started within 4 s)";
        // Soon: an edit of a large file sends few chunks and is over in milliseconds.
        await sleep(rng.int(0, 60));
        break;
      }
      case "random":
        await sleep(rng.int(...shape.randomKillMs));
        break;
    }
    const kill = await cluster.kill(role, moment);
    if (kill === null) {
      log(`  ${role} kill ${k}/${count}: it had already exited by itself; restarting it`);
    } else {
      done++;
      log(
        `  ${role} kill ${k}/${count}: ${moment}${note}, ${seconds(Date.now() - waitStart)} after the restart; ${inFlight(kill)}`,
      );
    }
    // Mostly back at once; sometimes long enough for the client to back off.
    const down = rng.chance(0.7)
      ? rng.int(0, 300)
      : rng.chance(0.85)
        ? rng.int(300, 1500)
        : rng.int(2000, 4000);
    await sleep(down);
    if (role === "server") await cluster.startServer();
    else cluster.startClient();
    restartIndex = role === "server" ? (cluster.client?.proc.events.length ?? 0) : 0;
  }
  return done;
}

// ---------------------------------------------------------------------------------------
// What the client said: acknowledgements, transfers, connections

interface Ack {
  path: string;
  op: "put" | "delete" | "mkdir";
  size: number;
  sentBytes: number;
  timeMs: number;
  client: string;
}

interface Transfer {
  path: string;
  size: number;
  startMs: number;
  /** The acknowledgement, or the end of its connection. */
  endMs: number;
  acked: boolean;
}

interface ClientLog {
  acks: Ack[];
  transfers: Transfer[];
  connects: number;
  disconnects: number;
  /** Paths the client gave up on (file-skipped with retry false). */
  gaveUp: KwEvent[];
  errors: KwEvent[];
  warnings: KwEvent[];
  idles: number[];
}

function readClientLog(clients: Incarnation[]): ClientLog {
  const log: ClientLog = {
    acks: [],
    transfers: [],
    connects: 0,
    disconnects: 0,
    gaveUp: [],
    errors: [],
    warnings: [],
    idles: [],
  };
  for (const inc of clients) {
    const open = new Map<string, { size: number; startMs: number }>();
    const cut = (endMs: number) => {
      for (const [path, t] of open) log.transfers.push({ path, ...t, endMs, acked: false });
      open.clear();
    };
    for (const e of inc.proc.events) {
      const t = Date.parse(e.time);
      const path = String(e.path);
      switch (e.event) {
        case "connected":
          log.connects++;
          cut(t);
          break;
        case "disconnected":
          log.disconnects++;
          cut(t);
          break;
        case "file-start":
          open.set(path, { size: Number(e.size), startMs: t });
          break;
        case "file-done": {
          const op = e.op as Ack["op"];
          log.acks.push({
            path,
            op,
            size: Number(e.size),
            sentBytes: Number(e.sentBytes ?? 0),
            timeMs: t,
            client: inc.proc.label,
          });
          const started = open.get(path);
          if (op === "put" && started) {
            log.transfers.push({ path, ...started, endMs: t, acked: true });
            open.delete(path);
          }
          break;
        }
        case "file-skipped":
          if (e.retry === false) log.gaveUp.push(e);
          break;
        case "error":
          log.errors.push(e);
          break;
        case "warning":
          log.warnings.push(e);
          break;
        case "idle":
          log.idles.push(t);
          break;
      }
    }
    cut(inc.endedMs ?? Date.now());
  }
  log.acks.sort((a, b) => a.timeMs - b.timeMs);
  return log;
}

// ---------------------------------------------------------------------------------------
// The history, and the acknowledged versions in it

interface Version {
  path: string;
  kind: "file" | "dir" | "deleted";
  size: number;
  mtimeMs: number | null;
  mode: number | null;
  sha256: string | null;
  versionId: number;
  timeMs: number;
}

/**
 * Every version of the set, from `keepwatch history SET --json`. Its stdout goes to a file:
 * the CLI exits with process.exit() right after writing, and Node writes to a pipe
 * asynchronously, so a pipe that is not read fast enough loses the end of a long listing.
 */
async function readHistory(box: Sandbox, port: number): Promise<Version[]> {
  const out = box.path(`history-${Date.now()}.jsonl`);
  const fd = openSync(out, "w");
  const args = ["history", SET, LOOPBACK, "--port", String(port), "--json"];
  const child = spawn(process.execPath, ["--import", "tsx", CLI, ...args], {
    cwd: REPO,
    env: box.env(),
    stdio: ["ignore", fd, "pipe"],
  });
  closeSync(fd);
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 180_000);
  const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
  clearTimeout(timer);
  const text = await readFile(out, "utf8");
  await rm(out, { force: true });
  if (code !== 0) {
    throw new Error(`keepwatch ${args.join(" ")} exited with ${code}:\n${stderr}\n${text.slice(-2000)}`);
  }
  const versions: Version[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const v = JSON.parse(line) as Version;
    v.path = v.path === SET ? "" : v.path.slice(SET.length + 1);
    versions.push(v);
  }
  return versions;
}

/** An acknowledged put and the history version it acknowledged. */
interface Acknowledged {
  ack: Ack;
  version: Version;
  state: FileState;
}

interface AckCheck {
  mapped: Acknowledged[];
  deletesChecked: number;
  /** File versions committed without an acknowledgement the client printed. */
  unacknowledged: number;
  /**
   * Acknowledged puts that sent content bytes although the path's previous version on the
   * server had that very content: its ACK was lost to a server kill, or the client's record
   * of it to a client kill.
   */
  resentHeld: { puts: number; bytes: number };
  /** ...after a transfer of the same content that a kill cut off (whole files; chunked files). */
  resentAfterCut: { puts: number; bytes: number; chunkedPuts: number; chunkedBytes: number };
}

/**
 * Match every acknowledged put to the version it acknowledged: the newest version of that
 * path committed at or before the acknowledgement (on the same clock), after the version
 * the path's previous acknowledgement matched, of the acknowledged size. Its content, mode
 * and mtime must be a state the editor left the file in before the acknowledgement. An
 * acknowledged delete must have a `deleted` version committed before it and after the
 * path's last acknowledged put.
 */
function checkAcknowledged(
  log: ClientLog,
  history: Version[],
  editor: SourceEditor,
  problems: string[],
): AckCheck {
  const byPath = new Map<string, Version[]>();
  for (const v of history) {
    const list = byPath.get(v.path);
    if (list) list.push(v);
    else byPath.set(v.path, [v]);
  }
  for (const list of byPath.values()) list.sort((a, b) => a.versionId - b.versionId);
  const result: AckCheck = {
    mapped: [],
    deletesChecked: 0,
    unacknowledged: 0,
    resentHeld: { puts: 0, bytes: 0 },
    resentAfterCut: { puts: 0, bytes: 0, chunkedPuts: 0, chunkedBytes: 0 },
  };
  const lastPut = new Map<string, number>();
  const mappedIds = new Set<number>();
  const say = (text: string) => {
    if (problems.length < 200) problems.push(text);
  };
  for (const ack of log.acks) {
    const versions = byPath.get(ack.path) ?? [];
    const when = `acknowledged at ${iso(ack.timeMs)} (${ack.client})`;
    if (ack.op === "delete") {
      const after = lastPut.get(ack.path) ?? 0;
      result.deletesChecked++;
      if (!versions.some((v) => v.kind === "deleted" && v.timeMs <= ack.timeMs && v.versionId > after)) {
        say(
          `The delete of ${JSON.stringify(ack.path)} ${when} is not in the history (versions of the path: ${describeVersions(versions)}).`,
        );
      }
      continue;
    }
    if (ack.op !== "put") continue;
    const after = lastPut.get(ack.path) ?? 0;
    const candidates = versions.filter(
      (v) => v.kind === "file" && v.versionId > after && v.timeMs <= ack.timeMs && v.size === ack.size,
    );
    const version = candidates.at(-1);
    if (!version) {
      say(
        `The put of ${JSON.stringify(ack.path)} (${ack.size} bytes) ${when} has no version in the history (versions of the path: ${describeVersions(versions)}).`,
      );
      continue;
    }
    lastPut.set(ack.path, version.versionId);
    mappedIds.add(version.versionId);
    const states = editor.states.get(ack.path) ?? [];
    const state = states.find(
      (s) =>
        s.sha256 === version.sha256 &&
        s.mode === ((version.mode ?? -1) & 0o7777) &&
        Math.abs(s.mtimeMs - (version.mtimeMs ?? 0)) < 1 &&
        s.at <= ack.timeMs + 10,
    );
    if (!state) {
      const sameBytes = states.find((s) => s.sha256 === version.sha256);
      say(
        sameBytes
          ? `The put of ${JSON.stringify(ack.path)} ${when} is version #${version.versionId} with mode 0o${(version.mode ?? 0).toString(8)} and mtime ${version.mtimeMs}; the file had those bytes with mode 0o${sameBytes.mode.toString(8)} and mtime ${sameBytes.mtimeMs}, never with those.`
          : `The put of ${JSON.stringify(ack.path)} ${when} is version #${version.versionId} with SHA-256 ${version.sha256}: content the file never had (its ${states.length} states: ${states
              .slice(-4)
              .map((s) => `${s.sha256.slice(0, 12)} ${s.size} B at ${iso(s.at)}`)
              .join("; ")}).`,
      );
      continue;
    }
    result.mapped.push({ ack, version, state });
  }
  // Versions no acknowledgement matched: commits whose ACK a kill swallowed (or superseded
  // in the same millisecond).
  result.unacknowledged = history.filter((v) => v.kind === "file" && !mappedIds.has(v.versionId)).length;
  const cutByPath = new Map<string, Transfer[]>();
  for (const t of log.transfers) {
    if (t.acked) continue;
    const list = cutByPath.get(t.path);
    if (list) list.push(t);
    else cutByPath.set(t.path, [t]);
  }
  const previous = new Map<string, number>();
  for (const { ack, version } of result.mapped) {
    const since = previous.get(ack.path) ?? 0;
    previous.set(ack.path, ack.timeMs);
    if (ack.sentBytes === 0) continue;
    const before = (byPath.get(ack.path) ?? []).filter((v) => v.versionId < version.versionId).at(-1);
    if (before?.kind === "file" && before.sha256 === version.sha256) {
      result.resentHeld.puts++;
      result.resentHeld.bytes += ack.sentBytes;
      continue;
    }
    const cutBefore = (cutByPath.get(ack.path) ?? []).some(
      (t) =>
        t.startMs >= since &&
        t.endMs <= ack.timeMs &&
        editor.stateAt(ack.path, t.startMs)?.sha256 === version.sha256,
    );
    if (cutBefore) {
      if (ack.size > PIECE_SIZE) {
        result.resentAfterCut.chunkedPuts++;
        result.resentAfterCut.chunkedBytes += ack.sentBytes;
      } else {
        result.resentAfterCut.puts++;
        result.resentAfterCut.bytes += ack.sentBytes;
      }
    }
  }
  return result;
}

function describeVersions(versions: Version[]): string {
  if (versions.length === 0) return "none";
  const shown = versions
    .slice(-5)
    .map((v) => `#${v.versionId} ${v.kind} ${v.size} B at ${iso(v.timeMs)}`)
    .join("; ");
  return versions.length > 5 ? `…; ${shown}` : shown;
}

/** Restore each sampled version with `keepwatch restore --at` and compare it with what was acknowledged. */
async function restoreSample(
  box: Sandbox,
  port: number,
  chosen: Acknowledged[],
  history: Version[],
  problems: string[],
  stop: () => boolean,
): Promise<{ restored: number; bytes: number; skipped: number }> {
  const newestAt = new Map<string, Version>();
  for (const v of history) {
    const key = `${v.path}\0${v.timeMs}`;
    const seen = newestAt.get(key);
    if (!seen || seen.versionId < v.versionId) newestAt.set(key, v);
  }
  let restored = 0;
  let bytes = 0;
  let skipped = 0;
  let next = 0;
  const worker = async () => {
    while (next < chosen.length && !stop()) {
      const i = next++;
      const { ack, version } = chosen[i] as Acknowledged;
      // `--at T` gives the newest version at or before T: one committed in the same
      // millisecond after this one hides it.
      if (newestAt.get(`${ack.path}\0${version.timeMs}`)?.versionId !== version.versionId) {
        skipped++;
        continue;
      }
      const dir = box.path("restore", String(i));
      const at = iso(version.timeMs);
      const result = await box.run(
        "restore",
        [
          "restore",
          `${SET}/${ack.path}`,
          LOOPBACK,
          "--port",
          String(port),
          "--at",
          at,
          "--to",
          dir,
          "--quiet",
        ],
        { timeoutMs: 120_000 },
      );
      const what = `version #${version.versionId} of ${JSON.stringify(ack.path)} (acknowledged at ${iso(ack.timeMs)}), restored --at ${at}`;
      if (result.code !== 0) {
        problems.push(`The ${what} failed with exit code ${result.code}:\n${result.proc.describe(10)}`);
        continue;
      }
      const file = join(dir, basename(ack.path));
      try {
        const data = await readFile(file);
        const st = await lstat(file);
        const sha = createHash("sha256").update(data).digest("hex");
        if (sha !== version.sha256) {
          problems.push(`The ${what} has SHA-256 ${sha}, not the acknowledged ${version.sha256}.`);
        } else if ((st.mode & 0o7777) !== ((version.mode ?? 0) & 0o7777)) {
          problems.push(
            `The ${what} has mode 0o${(st.mode & 0o7777).toString(8)}, not 0o${(version.mode ?? 0).toString(8)}.`,
          );
        } else if (Math.abs(st.mtimeMs - (version.mtimeMs ?? 0)) >= 1) {
          problems.push(`The ${what} has mtime ${st.mtimeMs}, not ${version.mtimeMs}.`);
        } else {
          restored++;
          bytes += data.length;
        }
      } catch (error) {
        problems.push(
          `The ${what} cannot be read: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
      await rm(dir, { recursive: true, force: true });
    }
  };
  await Promise.all([worker(), worker()]);
  return { restored, bytes, skipped };
}

/** Spread `count` picks evenly over `items` (all of them when there are fewer). */
function spread<T>(items: T[], count: number): T[] {
  if (items.length <= count) return items;
  const out: T[] = [];
  for (let i = 0; i < count; i++) out.push(items[Math.floor((i * items.length) / count)] as T);
  return out;
}

// ---------------------------------------------------------------------------------------
// DEST checks

/** Paths below `root` whose names look like a temporary file. */
async function temporaryLooking(root: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const entry of await readdir(join(root, rel), { withFileTypes: true })) {
      const path = rel === "" ? entry.name : `${rel}/${entry.name}`;
      if (TEMP_NAME.test(entry.name)) found.push(path);
      if (entry.isDirectory()) await walk(path);
    }
  };
  await walk("");
  return found;
}

function tempFiles(dest: string): string[] {
  try {
    return readdirSync(join(dest, ".keepwatch", "tmp"));
  } catch (error) {
    return [
      `(DEST/.keepwatch/tmp cannot be read: ${error instanceof Error ? error.message : String(error)})`,
    ];
  }
}

const WORK_EVENTS = new Set(["file-start", "file-done", "queued", "connected", "scan-start"]);

/**
 * Wait until the client, connected, has said `idle` after the edits stopped and the mirror
 * equals SRC. Returns the differences left when they stopped changing or at the deadline
 * ([] when it converged).
 */
async function settle(
  cluster: Cluster,
  editorStoppedMs: number,
  mirror: string,
  timeoutMs: number,
  stuckMs: number,
): Promise<{ diffs: string[]; idleAfterMs: number | null }> {
  const deadline = Date.now() + timeoutMs;
  let diffs: string[] = ["(not compared yet: the client never became idle)"];
  let idleAfterMs: number | null = null;
  let quietSince = Date.now();
  let seen = 0;
  let sameSince = 0;
  let previous = "";
  while (Date.now() < deadline) {
    await sleep(500);
    const client = cluster.client;
    if (!client || client.end !== null || !client.proc.running) {
      return { diffs: ["the client is not running"], idleAfterMs };
    }
    const events = client.proc.events;
    if (events.length !== seen) {
      seen = events.length;
      quietSince = Date.now();
    }
    const lastIdleAt = lastIndex(events, (e) => e.event === "idle");
    const lastIdle = events[lastIdleAt];
    const idleTime = lastIdle ? Date.parse(lastIdle.time) : 0;
    if (idleTime >= editorStoppedMs && idleAfterMs === null) idleAfterMs = idleTime - editorStoppedMs;
    const workSince = events.slice(lastIdleAt + 1).some((e) => WORK_EVENTS.has(e.event));
    const connected =
      lastIndex(events, (e) => e.event === "connected") >
      lastIndex(events, (e) => e.event === "disconnected");
    // Idle after the edits, or silent for a while (an idle moment may fall between two of
    // the client's idle checks and go unreported).
    const idle = lastIdle !== undefined && idleTime >= editorStoppedMs && !workSince;
    if (!connected || !(idle || Date.now() - quietSince >= 3000)) continue;
    diffs = treeDifferences(await readTree(cluster.src), await readTree(mirror));
    if (diffs.length === 0) return { diffs, idleAfterMs };
    const key = diffs.join("\n");
    if (key !== previous) {
      previous = key;
      sameSince = Date.now();
    } else if (Date.now() - sameSince >= stuckMs) {
      break;
    }
  }
  return { diffs, idleAfterMs };
}

/** The paths named in treeDifferences' lines. */
function pathsOf(diffs: string[]): string[] {
  const paths: string[] = [];
  for (const line of diffs) {
    const quoted = /"(?:[^"\\]|\\.)*"/.exec(line);
    if (quoted) paths.push(JSON.parse(quoted[0]) as string);
  }
  return paths;
}

/** What the history, the client and the editor say about each path: why the mirror differs. */
function explainPaths(
  paths: string[],
  history: Version[],
  log: ClientLog,
  editor: SourceEditor,
  incarnations: Incarnation[],
): string {
  const ends = new Map(incarnations.map((i) => [i.proc.label, i]));
  const fate = (ack: Ack): string => {
    const inc = ends.get(ack.client);
    if (!inc?.end || inc.endedMs === null) return ack.client;
    return `${ack.client}, ended by ${inc.end} ${inc.endedMs - ack.timeMs} ms later`;
  };
  return paths
    .slice(0, 10)
    .map((path) => {
      const versions = history.filter((v) => v.path === path).slice(-4);
      const acks = log.acks.filter((a) => a.path === path).slice(-3);
      const trail = (editor.trail.get(path) ?? []).slice(-4);
      return [
        `  ${JSON.stringify(path)}:`,
        `    history: ${versions.map((v) => `#${v.versionId} ${v.kind} ${v.size} B committed ${iso(v.timeMs)}`).join("; ") || "no version"}`,
        `    client acknowledgements: ${acks.map((a) => `${a.op} ${a.size} B at ${iso(a.timeMs)} (${fate(a)})`).join("; ") || "none"}`,
        `    editor: ${trail.map((t) => `${t.op} at ${iso(t.at)}`).join("; ") || "nothing recorded"}`,
      ].join("\n");
    })
    .join("\n");
}

// ---------------------------------------------------------------------------------------
// One run

interface Phase {
  name: string;
  ms: number;
}

export interface ChaosResult {
  problems: string[];
  /** The summary printed at the end. */
  report: string;
}

/** Run the chaos test; `log` gets progress lines. Never throws: failures are problems. */
export async function runChaos(
  options: ChaosOptions,
  log: (line: string) => void,
  signal?: AbortSignal,
): Promise<ChaosResult> {
  const shape = options.quick ? QUICK : FULL;
  const problems: string[] = [];
  const phases: Phase[] = [];
  const started = Date.now();
  const deadline = options.minutes === null ? Number.POSITIVE_INFINITY : started + options.minutes * 60_000;
  const over = () => Date.now() >= deadline || signal?.aborted === true;
  const box = await Sandbox.create(null);
  const src = box.path(SET);
  const dest = box.path("dest");
  const mirror = join(dest, SET);
  const phase = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const t0 = Date.now();
    try {
      return await fn();
    } finally {
      phases.push({ name, ms: Date.now() - t0 });
    }
  };
  const editor = new SourceEditor(src, shape, new Random(options.seed * 3 + 1));
  const killer = new Random(options.seed * 3 + 2);
  const sampler = new Random(options.seed * 3 + 3);
  let cluster: Cluster | null = null;
  const totals = { serverKills: 0, clientKills: 0, rounds: 0, restored: 0, restoredBytes: 0, skipped: 0 };
  let lastCheck: AckCheck | null = null;
  let lastLog: ClientLog | null = null;
  try {
    await phase("generate the tree", async () => {
      editor.generate(new Random(options.seed));
    });
    const tree = await readTree(src);
    const treeBytes = [...tree.values()].reduce((sum, e) => sum + e.size, 0);
    log(
      `tree: ${editor.fileCount} files (${shape.smallFiles} small in ${shape.folders} folders, ${shape.largeMiB.length} large of ${shape.largeMiB.join(", ")} MiB), ${formatBytes(treeBytes)}, in ${box.root}`,
    );
    const port = await freePort();
    cluster = new Cluster(box, src, dest, port, problems);
    const c = cluster;
    // Ctrl-C: every child goes at once; the steps under way then end quickly.
    signal?.addEventListener(
      "abort",
      () => {
        c.ending = true;
        for (const p of box.processes) if (p.running) p.child.kill("SIGKILL");
      },
      { once: true },
    );
    await c.startServer();
    c.startClient();
    editor.start();
    let roundStart = Date.now();
    for (let round = 1; ; round++) {
      totals.rounds = round;
      const tag = options.minutes === null ? "" : ` (round ${round})`;
      log(
        `killing the server ${options.serverKills} times while the client backs up and the tree changes${tag}`,
      );
      totals.serverKills += await phase(`server kills${tag}`, () =>
        killPhase(c, "server", options.serverKills, over, shape, killer, log),
      );
      if (signal?.aborted) break;
      log(`killing the client ${options.clientKills} times${tag}`);
      totals.clientKills += await phase(`client kills${tag}`, () =>
        killPhase(c, "client", options.clientKills, over, shape, killer, log),
      );
      if (signal?.aborted) break;
      await editor.stop();
      if (signal?.aborted) break;
      const stoppedMs = Date.now();
      if (editor.failure)
        throw new Error(`The editor failed (a bug of this script): ${editor.failure.stack}`);
      log("edits stopped; waiting for the client to be idle and the mirror to equal the source");
      const settled = await phase(`settle${tag}`, () => settle(c, stoppedMs, mirror, 180_000, shape.stuckMs));
      if (signal?.aborted) break;
      if (settled.diffs.length > 0) {
        problems.push(
          `The mirror does not equal the source (the differences stayed while the client was idle; ${seconds(Date.now() - stoppedMs)} after the edits stopped):\n${settled.diffs.map((d) => `  ${d}`).join("\n")}`,
        );
      } else if (settled.idleAfterMs === null) {
        log("  note: the mirror converged, but the client printed no idle event after the edits stopped");
      } else {
        log(
          `  the client was idle ${seconds(settled.idleAfterMs)} after the edits stopped; the mirror equals the source`,
        );
      }
      const leftWhileIdle = tempFiles(dest);
      if (leftWhileIdle.length > 0) {
        // Give a transfer that a client kill cut off a moment to be cleaned up.
        await sleep(2000);
        const still = tempFiles(dest).filter((name) => leftWhileIdle.includes(name));
        if (still.length > 0) {
          problems.push(
            `DEST/.keepwatch/tmp holds files while the client is idle: ${still.slice(0, 10).join(", ")}`,
          );
        }
      }

      const checkProblems: string[] = [];
      const history = await phase(`history${tag}`, () => readHistory(box, port));
      const clientLog = readClientLog(c.clients);
      const check = checkAcknowledged(clientLog, history, editor, checkProblems);
      problems.push(...checkProblems);
      if (settled.diffs.length > 0) {
        problems.push(
          `What the history, the client and the editor say about the paths that differ:\n${explainPaths(pathsOf(settled.diffs), history, clientLog, editor, c.incarnations)}`,
        );
      }
      lastCheck = check;
      lastLog = clientLog;
      const thisRound = check.mapped.filter((m) => m.ack.timeMs >= roundStart);
      const largeOnes = thisRound.filter((m) => editor.isLarge(m.ack.path));
      const others = thisRound.filter((m) => !editor.isLarge(m.ack.path));
      const sample = spread(largeOnes, shape.largeRestoreCap);
      for (let i = 0; i < shape.restoreSample && others.length > 0; i++) {
        sample.push(others.splice(sampler.int(0, others.length), 1)[0] as Acknowledged);
      }
      log(
        `history: ${history.length} versions; ${check.mapped.length} acknowledged puts matched, ${check.deletesChecked} deletes; restoring ${sample.length} (${Math.min(largeOnes.length, shape.largeRestoreCap)} of the ${largeOnes.length} large-file versions of this round)`,
      );
      const restored = await phase(`restores${tag}`, () =>
        restoreSample(box, port, sample, history, problems, () => signal?.aborted === true),
      );
      totals.restored += restored.restored;
      totals.restoredBytes += restored.bytes;
      totals.skipped += restored.skipped;

      await phase(`stop and verify${tag}`, async () => {
        await c.stop("client");
        await c.stop("server");
        const left = tempFiles(dest);
        if (left.length > 0) {
          problems.push(
            `DEST/.keepwatch/tmp is not empty after the server stopped: ${left.slice(0, 10).join(", ")}`,
          );
        }
        const odd = await temporaryLooking(mirror);
        if (odd.length > 0)
          problems.push(`The mirror holds temporary-looking files: ${odd.slice(0, 10).join(", ")}`);
        const top = (await readdir(dest)).filter((name) => name !== SET && name !== ".keepwatch");
        if (top.length > 0) problems.push(`DEST holds more than the set and .keepwatch: ${top.join(", ")}`);
        const after = treeDifferences(await readTree(src), await readTree(mirror));
        if (after.length > 0 && settled.diffs.length === 0) {
          problems.push(`After the server stopped, the mirror differs from the source:\n${after.join("\n")}`);
        }
        const verify = await box.run("verify", ["verify", dest], { timeoutMs: 600_000 });
        if (verify.code !== 0) {
          problems.push(`keepwatch verify DEST exited with ${verify.code}:\n${verify.proc.describe(30)}`);
        } else {
          log(`verify: ${lastLine(verify.stdout)}`);
        }
      });
      if (problems.length > 0 || options.minutes === null || Date.now() >= deadline || signal?.aborted) break;
      log(`round ${round} passed; ${seconds(deadline - Date.now())} left`);
      roundStart = Date.now();
      await c.startServer();
      c.startClient();
      editor.start();
    }
  } catch (error) {
    problems.push(
      `The run stopped: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
    );
  }
  await editor.stop();
  if (editor.failure) problems.push(`The editor failed (a bug of this script): ${editor.failure.stack}`);
  if (cluster && signal?.aborted) cluster.ending = true;
  else if (cluster) {
    // After a check failed or the run stopped early: end both processes the way a user would.
    await cluster.stop("client");
    await cluster.stop("server");
  }
  if (cluster) {
    for (const inc of cluster.incarnations) {
      if (stackLines(inc.proc.stderr).length > 0) {
        problems.push(`${inc.proc.label} printed a stack trace:\n${inc.proc.describe(40)}`);
      }
    }
    const clientLog = lastLog ?? readClientLog(cluster.clients);
    for (const e of clientLog.gaveUp.slice(0, 10)) {
      problems.push(`The client gave up on ${JSON.stringify(e.path)}: ${String(e.reason)}`);
    }
    for (const e of clientLog.errors.slice(0, 10))
      problems.push(`The client reported an error: ${JSON.stringify(e)}`);
  }
  const report = summarize({
    options,
    phases,
    totals,
    editor,
    cluster,
    log: lastLog,
    check: lastCheck,
    elapsedMs: Date.now() - started,
  });
  if (options.keep) {
    await Promise.allSettled(box.processes.map((p) => p.stop("SIGTERM")));
    report.push(`kept: ${box.root}`);
  } else {
    await box.cleanup();
  }
  return { problems, report: report.join("\n") };
}

function summarize(run: {
  options: ChaosOptions;
  phases: Phase[];
  totals: {
    serverKills: number;
    clientKills: number;
    rounds: number;
    restored: number;
    restoredBytes: number;
    skipped: number;
  };
  editor: SourceEditor;
  cluster: Cluster | null;
  log: ClientLog | null;
  check: AckCheck | null;
  elapsedMs: number;
}): string[] {
  const { totals, cluster, log, check } = run;
  const lines: string[] = [];
  lines.push(
    `seed ${run.options.seed}${run.options.quick ? ", quick" : ""}${run.options.minutes === null ? "" : `, soak of ${run.options.minutes} min (${totals.rounds} rounds)`}; ${seconds(run.elapsedMs)} in all`,
  );
  // In a soak the rounds' phases are added up.
  const byName = new Map<string, { ms: number; count: number }>();
  for (const p of run.phases) {
    const name = p.name.replace(/ \(round \d+\)$/, "");
    const seen = byName.get(name) ?? { ms: 0, count: 0 };
    byName.set(name, { ms: seen.ms + p.ms, count: seen.count + 1 });
  }
  const phaseList = [...byName].map(
    ([name, p]) => `${name} ${seconds(p.ms)}${p.count > 1 ? ` (${p.count} rounds)` : ""}`,
  );
  lines.push(`phases: ${phaseList.join("; ")}`);
  if (cluster) {
    const hit = (role: Role) => {
      const kills = cluster.kills.filter((k) => k.role === role);
      const mid = kills.filter((k) => k.inFlight.length > 0).length;
      const chunked = kills.filter((k) => k.inFlight.some((t) => t.size > PIECE_SIZE)).length;
      const moments = Object.keys(MOMENTS)
        .map((m) => `${kills.filter((k) => k.moment === m).length} ${m}`)
        .join(", ");
      return `${kills.length} (${mid} with transfers in flight, ${chunked} of them during a chunked transfer; ${moments})`;
    };
    lines.push(`kills survived: server ${hit("server")}`);
    lines.push(`                client ${hit("client")}`);
    const unexpected = cluster.incarnations.filter((i) => i.end === "unexpected").length;
    lines.push(
      `processes: ${cluster.incarnations.filter((i) => i.role === "server").length} server and ${cluster.clients.length} client runs, ${unexpected} ended by themselves`,
    );
  }
  const ops = [...run.editor.ops].sort((a, b) => b[1] - a[1]);
  lines.push(
    `edits: ${ops.reduce((s, [, n]) => s + n, 0)} (${ops.map(([op, n]) => `${op} ${n}`).join(", ")}); ${run.editor.fileCount} files at the end`,
  );
  if (log) {
    const puts = log.acks.filter((a) => a.op === "put");
    const sent = puts.reduce((s, a) => s + a.sentBytes, 0);
    const size = puts.reduce((s, a) => s + a.size, 0);
    const byRef = puts.filter((a) => a.sentBytes === 0 && a.size > 0).length;
    lines.push(
      `client: ${log.connects} connections, ${log.disconnects} disconnections; acknowledged ${puts.length} puts (${formatBytes(size)} of file versions; ${byRef} needed no content bytes), ${log.acks.filter((a) => a.op === "delete").length} deletes, ${log.acks.filter((a) => a.op === "mkdir").length} mkdirs; ${log.warnings.length} warnings`,
    );
    const cut = log.transfers.filter((t) => !t.acked);
    const cutChunked = cut.filter((t) => t.size > PIECE_SIZE);
    lines.push(
      `bytes sent in all: ${formatBytes(sent)} (${sent} B) = the sum of sentBytes of every acknowledged put of every client run`,
    );
    if (check) {
      const exact = check.resentHeld.bytes + check.resentAfterCut.bytes;
      const most = exact + check.resentAfterCut.chunkedBytes;
      lines.push(
        `bytes sent again after restarts: at least ${formatBytes(exact)} (${exact} B, ${percent(exact, sent)} of the bytes sent), at most ${formatBytes(most)} (${most} B, ${percent(most, sent)}):`,
        `  ${formatBytes(check.resentHeld.bytes)} by ${check.resentHeld.puts} puts of a content the server already held at that path (its previous version): the ACK was lost to a server kill, or the client's record of it to a client kill (${check.unacknowledged} file versions were committed without an acknowledgement the client printed)`,
        `  ${formatBytes(check.resentAfterCut.bytes)} by ${check.resentAfterCut.puts} whole-file puts (≤ ${formatBytes(PIECE_SIZE)}) of a content whose earlier transfer a kill cut off`,
        `  at most ${formatBytes(check.resentAfterCut.chunkedBytes)} by ${check.resentAfterCut.chunkedPuts} chunked puts of a content whose earlier transfer a kill cut off (their sentBytes: the chunks the server still lacked, some of which had not travelled before the kill)`,
      );
      lines.push(
        `transfers cut off: ${cut.length} (${cut.length - cutChunked.length} whole files of ${formatBytes(sumSize(cut) - sumSize(cutChunked))}, ${cutChunked.length} chunked files of ${formatBytes(sumSize(cutChunked))}); their bytes are not in "sent in all"`,
      );
      lines.push(
        `acknowledged versions: ${check.mapped.length} puts found in the history as written, ${check.deletesChecked} deletes checked; ${totals.restored} restored byte for byte (${formatBytes(totals.restoredBytes)})${totals.skipped > 0 ? `, ${totals.skipped} not restorable by time alone (a later version in the same millisecond)` : ""}`,
      );
    }
  }
  return lines;
}

function sumSize(transfers: Transfer[]): number {
  return transfers.reduce((s, t) => s + t.size, 0);
}

function percent(part: number, whole: number): string {
  return whole === 0 ? "0%" : `${((100 * part) / whole).toFixed(2)}%`;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function lastIndex<T>(items: readonly T[], match: (item: T) => boolean): number {
  for (let i = items.length - 1; i >= 0; i--) if (match(items[i] as T)) return i;
  return -1;
}

function lastLine(text: string): string {
  return text.trim().split("\n").at(-1) ?? "";
}

// ---------------------------------------------------------------------------------------

/** The command line that repeats this run's choices. */
function replayArgs(options: ChaosOptions): string {
  const args = [`--seed ${options.seed}`];
  if (options.quick) args.push("--quick");
  args.push(`--server-kills ${options.serverKills}`, `--client-kills ${options.clientKills}`);
  if (options.minutes !== null) args.push(`--minutes ${options.minutes}`);
  return args.join(" ");
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const abort = new AbortController();
  const onSignal = (name: string) => {
    if (abort.signal.aborted) return;
    console.log(`\n${name}: stopping, killing every child and cleaning up`);
    abort.abort();
  };
  process.once("SIGINT", () => onSignal("SIGINT"));
  process.once("SIGTERM", () => onSignal("SIGTERM"));
  const what =
    options.minutes === null
      ? `${options.serverKills} server kills, then ${options.clientKills} client kills`
      : `rounds of ${options.serverKills} server and ${options.clientKills} client kills for ${options.minutes} min`;
  console.log(`keepwatch chaos: seed ${options.seed}${options.quick ? " (quick)" : ""}, ${what}`);
  const run = runChaos(options, (line) => console.log(line), abort.signal);
  // Ctrl-C: the run notices between kills; its cleanup kills every child either way.
  const result = await run;
  console.log(`\n${result.report}`);
  if (abort.signal.aborted) {
    console.log("interrupted");
    return 130;
  }
  if (result.problems.length > 0) {
    console.log(`\nFAILED: ${result.problems.length} problem(s), seed ${options.seed}:`);
    for (const p of result.problems) console.log(`- ${p}`);
    console.log(`\nreplay: npx tsx scripts/chaos.ts ${replayArgs(options)}`);
    return 1;
  }
  console.log("\nPASSED: every check passed");
  return 0;
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  main().then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
      process.exit(1);
    },
  );
}
