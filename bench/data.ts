// Deterministic test data for the benchmarks (the same seed gives the same bytes on every machine),
// the edits the scenarios apply to it, and byte-for-byte comparison of a copy with its source.

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { dirname, join, relative } from "node:path";
import { ByteStream, fmtInt, MiB } from "./lib.js";

export function writeAll(fd: number, data: Buffer, position: number): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off, position + off);
}

export function readFully(fd: number, buf: Buffer, length: number, position: number): void {
  let off = 0;
  while (off < length) {
    const n = readSync(fd, buf, off, length - off, position + off);
    if (n === 0) throw new Error("unexpected end of file");
    off += n;
  }
}

/** mulberry32: a small deterministic PRNG, uniform in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A PRNG seeded by a string. */
export function prngFor(seed: string): () => number {
  return prng(createHash("sha256").update(seed).digest().readUInt32LE(0));
}

/** Streams `size` pseudo-random (incompressible) bytes to `path` in 8 MiB pieces. */
export function writeBigFile(path: string, size: number, seed: string): void {
  const stream = new ByteStream(seed);
  const fd = openSync(path, "w");
  try {
    let written = 0;
    while (written < size) {
      const piece = stream.next(Math.min(8 * MiB, size - written));
      writeAll(fd, piece, written);
      written += piece.length;
    }
  } finally {
    closeSync(fd);
  }
}

/** The path of small file `i` of writeSmallTree: d<k>/e<j>/f<i>.bin, 100 per folder, 2,000 per d<k>. */
export function smallFilePath(i: number): string {
  return join(`d${Math.floor(i / 2000)}`, `e${Math.floor(i / 100) % 20}`, `f${i}.bin`);
}

/** `count` incompressible files of 1–16 KiB (uniform sizes) in two levels of folders. Returns the bytes. */
export function writeSmallTree(root: string, count: number, seed: string): number {
  const stream = new ByteStream(seed);
  const random = prng(0x6b77);
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    const path = join(root, smallFilePath(i));
    if (i % 100 === 0) mkdirSync(dirname(path), { recursive: true });
    const size = 1024 + Math.floor(random() * (16 * 1024 - 1024 + 1));
    writeFileSync(path, stream.next(size));
    bytes += size;
  }
  return bytes;
}

/**
 * Text that compresses like source code and logs (about 2.7× with zstd -3): lines of words drawn with
 * a skewed distribution from a fixed vocabulary, indented, with numbers here and there. Never
 * repeats a block, so files do not deduplicate against each other.
 */
export class TextStream {
  private readonly random: () => number;
  private readonly words: string[];

  constructor(seed: string) {
    this.random = prngFor(seed);
    const vocabulary = prngFor("keepwatch-vocabulary");
    const letters = "etaoinshrdlcumwfgypbvkjxqz_";
    const common = ["the", "=", "{", "}", "(", ");", "return", "const", "if", "for", "//", "let", "of", "to"];
    this.words = [...common];
    while (this.words.length < 2000) {
      const length = 2 + Math.floor(vocabulary() * 9);
      let word = "";
      for (let i = 0; i < length; i++) word += letters[Math.floor(vocabulary() ** 1.5 * letters.length)];
      this.words.push(word);
    }
  }

  next(length: number): Buffer {
    const parts: string[] = [];
    let size = 0;
    while (size < length) {
      let line = " ".repeat(2 * Math.floor(this.random() * 5));
      const count = 3 + Math.floor(this.random() * 12);
      for (let w = 0; w < count; w++) {
        const r = this.random();
        line +=
          r < 0.06
            ? String(Math.floor(this.random() * 1e6))
            : (this.words[Math.floor(r ** 3 * this.words.length)] as string);
        line += w === count - 1 ? "\n" : " ";
      }
      parts.push(line);
      size += line.length;
    }
    return Buffer.from(parts.join(""), "latin1").subarray(0, length);
  }
}

/**
 * A mixed tree of about `totalBytes`, laid out like a project folder:
 *   data/   three large files: two incompressible (13% of the total each), one log-like text (10%);
 *   assets/ incompressible files of 64 KiB–2 MiB (30%);
 *   src/    text files of 4–128 KiB (30%) and many small text files of 0–4 KiB (the rest, ~4%).
 * At 300 MiB: about 90 binaries, 1,400 text files and 3,000 small ones.
 */
export function writeMixedTree(
  root: string,
  totalBytes: number,
  seed: string,
): { files: number; bytes: number } {
  const random = prngFor(`${seed}-layout`);
  const binary = new ByteStream(`${seed}-binary`);
  const text = new TextStream(`${seed}-text`);
  let files = 0;
  let bytes = 0;
  const put = (path: string, data: Buffer) => {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), data);
    files++;
    bytes += data.length;
  };
  const between = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const srcDir = () => join("src", `pkg${between(0, 7)}`, `mod${between(0, 15)}`);

  mkdirSync(join(root, "data"), { recursive: true });
  for (const i of [0, 1]) {
    writeBigFile(join(root, "data", `large-${i}.bin`), Math.round(totalBytes * 0.133), `${seed}-large-${i}`);
    files++;
    bytes += Math.round(totalBytes * 0.133);
  }
  put(join("data", "app.log"), text.next(Math.round(totalBytes * 0.1)));
  for (let budget = totalBytes * 0.3, i = 0; budget > 0; i++) {
    const size = Math.min(between(64 * 1024, 2 * MiB), Math.max(1, Math.round(budget)));
    put(join("assets", `g${i % 8}`, `asset-${i}.bin`), binary.next(size));
    budget -= size;
  }
  for (let budget = totalBytes * 0.3, i = 0; budget > 0; i++) {
    const size = Math.min(between(4 * 1024, 128 * 1024), Math.max(1, Math.round(budget)));
    put(join(srcDir(), `file-${i}.txt`), text.next(size));
    budget -= size;
  }
  for (let i = 0; bytes < totalBytes; i++) {
    put(join(srcDir(), `conf-${i}.cfg`), text.next(Math.min(between(0, 4 * 1024), totalBytes - bytes)));
  }
  return { files, bytes };
}

/** Number and total size of regular files under `root`. */
export function countTree(root: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  for (const size of listFiles(root).values()) {
    files++;
    bytes += size;
  }
  return { files, bytes };
}

/** Regular files under `root` (relative path → size), skipping `skip` at the top level. */
export function listFiles(root: string, skip: string[] = []): Map<string, number> {
  const files = new Map<string, number>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (dir === root && skip.includes(entry.name)) continue;
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) files.set(relative(root, path), statSync(path).size);
    }
  };
  walk(root);
  return files;
}

/** Reads every file under `root` once, so that it sits in the page cache (untimed). */
export function readTree(root: string): void {
  const buf = Buffer.allocUnsafe(8 * MiB);
  for (const path of listFiles(root).keys()) {
    const fd = openSync(join(root, path), "r");
    try {
      while (readSync(fd, buf, 0, buf.length, null) > 0) {
        // read to the end
      }
    } finally {
      closeSync(fd);
    }
  }
}

/** `cp -a FROM TO` (TO must not exist). */
export function copyTree(from: string, to: string): void {
  const r = spawnSync("cp", ["-a", from, to], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`cp -a ${from} ${to} failed: ${r.stderr}`);
}

export function sameContent(a: string, b: string): boolean {
  const fa = openSync(a, "r");
  const fb = openSync(b, "r");
  try {
    const size = fstatSync(fa).size;
    if (fstatSync(fb).size !== size) return false;
    const ba = Buffer.allocUnsafe(8 * MiB);
    const bb = Buffer.allocUnsafe(8 * MiB);
    for (let pos = 0; pos < size; pos += ba.length) {
      const n = Math.min(ba.length, size - pos);
      readFully(fa, ba, n, pos);
      readFully(fb, bb, n, pos);
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
    }
    return true;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** Differences between the source tree and a destination copy (names, sizes, content). */
export function compareTrees(src: string, copy: string, skip: string[] = []): string[] {
  if (!existsSync(copy)) return [`${copy} does not exist`];
  const want = listFiles(src);
  const have = listFiles(copy, skip);
  const diffs: string[] = [];
  for (const [path, size] of want) {
    const got = have.get(path);
    if (got === undefined) diffs.push(`missing ${path}`);
    else if (got !== size) diffs.push(`${path}: ${got} bytes, expected ${size}`);
    else if (!sameContent(join(src, path), join(copy, path))) diffs.push(`${path}: content differs`);
  }
  for (const path of have.keys()) if (!want.has(path)) diffs.push(`extra ${path}`);
  return diffs;
}

/** XOR the byte in the middle of `path` with 0xff, in place. Returns its offset. */
export function flipMiddleByte(path: string): number {
  const fd = openSync(path, "r+");
  try {
    const offset = Math.floor(fstatSync(fd).size / 2);
    const b = Buffer.alloc(1);
    readFully(fd, b, 1, offset);
    b[0] = (b[0] as number) ^ 0xff;
    writeAll(fd, b, offset);
    return offset;
  } finally {
    closeSync(fd);
  }
}

/** The one-byte edit of the big-file scenarios, on `name` in `dir`: what it did, in words. */
export function flipBigFile(dir: string, name: string): string {
  const offset = flipMiddleByte(join(dir, name));
  return `flipped the byte at offset ${fmtInt(offset)} of ${name} (XOR 0xff)`;
}

/** The insertion of the big-file scenarios: `count` bytes of the stream `seed` at offset 0. */
export function insertIntoBigFile(dir: string, name: string, count: number, seed: string): string {
  insertAtStart(join(dir, name), new ByteStream(seed).next(count));
  return `inserted ${count} random bytes at offset 0 of ${name} (in place)`;
}

/** Insert `bytes` at offset 0 of `path`, in place (same inode), shifting the file from its end. */
export function insertAtStart(path: string, bytes: Buffer): void {
  const fd = openSync(path, "r+");
  try {
    const size = fstatSync(fd).size;
    const buf = Buffer.allocUnsafe(8 * MiB);
    for (let end = size; end > 0; ) {
      const start = Math.max(0, end - buf.length);
      readFully(fd, buf, end - start, start);
      writeAll(fd, buf.subarray(0, end - start), start + bytes.length);
      end = start;
    }
    writeAll(fd, bytes, 0);
  } finally {
    closeSync(fd);
  }
}

/**
 * A generated data set kept between runs: folder/<name>/ holds the data and folder/complete.json
 * the parameters it was made with, written last. A folder whose marker is missing or differs is
 * made again; one that matches is reused as it is.
 */
export function cachedDataSet(
  base: string,
  name: string,
  params: Record<string, unknown>,
  generate: (dir: string) => Record<string, unknown>,
): { dir: string; reused: boolean; info: Record<string, unknown> } {
  const key = createHash("sha256").update(JSON.stringify({ name, params })).digest("hex").slice(0, 10);
  const folder = join(base, `${name}-${key}`);
  const marker = join(folder, "complete.json");
  const dir = join(folder, name);
  if (existsSync(marker)) {
    try {
      const saved = JSON.parse(readFileSync(marker, "utf8")) as {
        params: unknown;
        info: Record<string, unknown>;
      };
      if (JSON.stringify(saved.params) === JSON.stringify(params) && existsSync(dir)) {
        return { dir, reused: true, info: saved.info };
      }
    } catch {
      // made again below
    }
  }
  rmSync(folder, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const info = generate(dir);
  writeFileSync(marker, `${JSON.stringify({ params, info, made: new Date().toISOString() }, null, 2)}\n`);
  return { dir, reused: false, info };
}
