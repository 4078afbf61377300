// Measures the codecs the chunk store could use, chunk by chunk as the store compresses: the
// size each codec leaves and its compress and decompress throughput on one core, for 64 KiB
// chunks (the chunker's average) and 16 KiB chunks, on three kinds of data:
//   incompressible  AES-256-CTR keystream;
//   text            the English change logs, READMEs and NEWS files under /usr/share/doc
//                   (gunzipped, each file capped at 1 MiB so no single one dominates);
//   mixed           the JavaScript and TypeScript sources under this repository's node_modules.
// Candidates: node:zlib deflateRaw 1 and 6, gzip 6, brotli 1–4; zstd through zstd-napi (a
// dependency) at -1, 1, 3, 6, through Node's own zlib on 22.15+, through @bokuweb/zstd-wasm
// when --modules finds it; and the store's own path (src/store/chunk-codec.ts: zstd-napi's
// native binding into a reused buffer, kept raw when it saves under 3 %).
// It follows /work/shared/BENCHMARKING.md: ~2 GiB of memory is touched and freed in a separate
// process before each round, every codec has an untimed warm-up pass, the codecs run
// interleaved (A B C … A B C …), each figure is the median of the rounds with its min–max, and
// the load average is printed before each round. The data is generated once and sits in memory.
// Throughput is bytes per CPU second of this single-threaded process, each sample lasting
// about 0.15 s: the machine's two cores are shared with other work, and wall time would
// count the moments another process had the core (wall figures are in the JSON too).
//
// Run: npx tsx bench/compression.ts [--quick] [--rounds N] [--modules DIR]
//   --quick        4 MiB per data kind and 3 rounds, for a sanity check
//   --rounds N     rounds per figure (default 5)
//   --modules DIR  also look for optional codec packages (@bokuweb/zstd-wasm) in this
//                  node_modules folder, to compare packages the project does not depend on
// Results: printed as a Markdown table, and written as JSON to bench/out/compression.json.

import { spawnSync } from "node:child_process";
import { createCipheriv, randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import * as zlib from "node:zlib";
import { ChunkCodecContext } from "../src/store/chunk-codec.js";
import { ChunkCodec } from "../src/store/pack-format.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const OUT = join(ROOT, "bench", "out", "compression.json");
const KiB = 1024;
const MiB = 1024 * KiB;
const WARMUP_BYTES = 2 * 1024 * MiB;
/** A chunk is stored raw unless the codec saves at least this fraction of it (the store's rule). */
const MIN_GAIN = 0.03;

// ---------------------------------------------------------------- arguments

const argv = process.argv.slice(2);
let quick = false;
let rounds = 5;
let extraModules: string | undefined;
for (let i = 0; i < argv.length; i++) {
  const arg = argv[i];
  if (arg === "--quick") quick = true;
  else if (arg === "--rounds") rounds = Number(argv[++i]);
  else if (arg === "--modules") extraModules = resolve(argv[++i] ?? "");
  else {
    console.error(`unknown argument ${arg}; use --quick, --rounds N, --modules DIR`);
    process.exit(2);
  }
}
if (quick) rounds = Math.min(rounds, 3);
if (!Number.isInteger(rounds) || rounds < 1) {
  console.error("--rounds wants a positive whole number");
  process.exit(2);
}
const BYTES_PER_KIND = quick ? 4 * MiB : 12 * MiB;
const CHUNK_SIZES = [64 * KiB, 16 * KiB];

// ---------------------------------------------------------------- codecs

interface Codec {
  name: string;
  /** Its output is only valid until the next call: the harness copies it when it keeps it. */
  transient?: boolean;
  compress(data: Buffer): Buffer;
  decompress(data: Buffer, rawLength: number): Buffer;
}

/**
 * The store's own path (src/store/chunk-codec.ts): zstd straight into a 4 MiB buffer reused
 * like the store's pack buffer, no allocation per chunk, raw when it gains under 3 %, and
 * no decoding for raw. Its output is overwritten as the buffer wraps, so `keep` copies it
 * for the decompression passes (done in the untimed warm-up only).
 */
function storeCodec(level: number): Codec {
  const context = new ChunkCodecContext(level);
  const pack = Buffer.allocUnsafe(4 * MiB);
  let used = 0;
  return {
    name: `zstd ${level} (store path)`,
    transient: true,
    compress: (data) => {
      if (used + ChunkCodecContext.bound(data.length) > pack.length) used = 0;
      const encoded = context.encode(data, pack, used);
      const out = pack.subarray(used, used + encoded.storedLength);
      used += encoded.storedLength;
      return out;
    },
    // A record shorter than its chunk is zstd; one as long is raw (the 3 % rule).
    decompress: (data, rawLength) =>
      context.decode(data.length < rawLength ? ChunkCodec.zstd : ChunkCodec.raw, data, rawLength),
  };
}

function brotli(quality: number): Codec {
  return {
    name: `brotli q${quality}`,
    compress: (data) =>
      zlib.brotliCompressSync(data, {
        params: {
          [zlib.constants.BROTLI_PARAM_QUALITY]: quality,
          [zlib.constants.BROTLI_PARAM_SIZE_HINT]: data.length,
        },
      }),
    decompress: (data) => zlib.brotliDecompressSync(data),
  };
}

function builtinCodecs(): Codec[] {
  return [
    {
      name: "deflateRaw 1",
      compress: (data) => zlib.deflateRawSync(data, { level: 1 }),
      decompress: (data) => zlib.inflateRawSync(data),
    },
    {
      name: "deflateRaw 6",
      compress: (data) => zlib.deflateRawSync(data, { level: 6 }),
      decompress: (data) => zlib.inflateRawSync(data),
    },
    {
      name: "gzip 6",
      compress: (data) => zlib.gzipSync(data, { level: 6 }),
      decompress: (data) => zlib.gunzipSync(data),
    },
    brotli(1),
    brotli(2),
    brotli(3),
    brotli(4),
  ];
}

/** The zstd implementations present: Node's own (22.15+), then the npm packages found. */
async function zstdCodecs(): Promise<{ codecs: Codec[]; notes: string[] }> {
  const codecs: Codec[] = [];
  const notes: string[] = [];
  const z = zlib as unknown as {
    zstdCompressSync?: (data: Buffer, options: object) => Buffer;
    zstdDecompressSync?: (data: Buffer) => Buffer;
    constants: Record<string, number>;
  };
  const nodeCompress = z.zstdCompressSync;
  const nodeDecompress = z.zstdDecompressSync;
  const levelParam = z.constants.ZSTD_c_compressionLevel;
  if (nodeCompress && nodeDecompress && levelParam !== undefined) {
    for (const level of [1, 3]) {
      codecs.push({
        name: `zstd ${level} (node:zlib)`,
        compress: (data) => nodeCompress(data, { params: { [levelParam]: level } }),
        decompress: (data) => nodeDecompress(data),
      });
    }
  } else {
    notes.push(`node:zlib has no zstd in Node ${process.versions.node} (it arrived in 22.15)`);
  }

  const requirers = [createRequire(join(ROOT, "package.json"))];
  if (extraModules) requirers.push(createRequire(join(extraModules, "..", "package.json")));
  const load = (name: string): unknown => {
    for (const req of requirers) {
      try {
        return req(name);
      } catch {
        // try the next folder
      }
    }
    return undefined;
  };

  const napi = load("zstd-napi") as
    | {
        Compressor: new () => {
          setParameters(p: { compressionLevel: number }): void;
          compress(d: Buffer): Buffer;
        };
        Decompressor: new () => { decompress(d: Buffer): Buffer };
      }
    | undefined;
  if (napi) {
    for (const level of [-1, 1, 3, 6]) {
      const compressor = new napi.Compressor();
      compressor.setParameters({ compressionLevel: level });
      const decompressor = new napi.Decompressor();
      codecs.push({
        name: `zstd ${level} (zstd-napi)`,
        compress: (data) => compressor.compress(data),
        decompress: (data) => decompressor.decompress(data),
      });
    }
  } else {
    notes.push("zstd-napi is not installed");
  }

  const wasm = load("@bokuweb/zstd-wasm") as
    | {
        init(): Promise<void>;
        compress(d: Buffer, level: number): Uint8Array;
        decompress(d: Buffer): Uint8Array;
      }
    | undefined;
  if (wasm) {
    await wasm.init();
    for (const level of [1, 3]) {
      codecs.push({
        name: `zstd ${level} (zstd-wasm)`,
        compress: (data) => Buffer.from(wasm.compress(data, level)),
        decompress: (data) => Buffer.from(wasm.decompress(data)),
      });
    }
  } else {
    notes.push("@bokuweb/zstd-wasm is not installed");
  }
  return { codecs, notes };
}

// ---------------------------------------------------------------- data

function incompressible(bytes: number): Buffer {
  const cipher = createCipheriv("aes-256-ctr", randomBytes(32), randomBytes(16));
  return Buffer.concat([cipher.update(Buffer.alloc(bytes)), cipher.final()]);
}

const TEXT_NAME = /^(changelog|changes|news|readme|authors|todo|thanks|history|faq)([._-].*)?$/i;
const PER_FILE_CAP = 1 * MiB;

function looksLikeText(data: Buffer): boolean {
  if (data.includes(0)) return false;
  let high = 0;
  for (let i = 0; i < Math.min(data.length, 4096); i++) if ((data[i] as number) >= 0x80) high++;
  return high < 0.05 * Math.min(data.length, 4096);
}

/** Files below `dir` in sorted path order, not following links. */
function* walk(dir: string): Generator<string> {
  let entries: string[];
  try {
    entries = readdirSync(dir).sort();
  } catch {
    return;
  }
  for (const name of entries) {
    const path = join(dir, name);
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.isDirectory()) yield* walk(path);
    else if (st.isFile()) yield path;
  }
}

function collect(paths: Iterable<string>, accept: (path: string) => Buffer | undefined, bytes: number) {
  const parts: Buffer[] = [];
  let total = 0;
  let files = 0;
  for (const path of paths) {
    const data = accept(path);
    if (!data || data.length === 0) continue;
    parts.push(data);
    total += data.length;
    files++;
    if (total >= bytes) break;
  }
  return { data: Buffer.concat(parts).subarray(0, bytes), files };
}

function englishText(bytes: number) {
  return collect(
    walk("/usr/share/doc"),
    (path) => {
      const base = path.slice(path.lastIndexOf("/") + 1);
      const plain = base.endsWith(".gz") ? base.slice(0, -3) : base;
      if (!TEXT_NAME.test(plain) || /\.(html|json|tar|ps|pdf|log)$/i.test(plain)) return undefined;
      let data = readFileSync(path);
      if (base.endsWith(".gz")) {
        try {
          data = zlib.gunzipSync(data);
        } catch {
          return undefined;
        }
      }
      return looksLikeText(data) ? data.subarray(0, PER_FILE_CAP) : undefined;
    },
    bytes,
  );
}

function sourceCode(bytes: number) {
  return collect(
    walk(join(ROOT, "node_modules")),
    (path) => (/\.(js|mjs|cjs|ts)$/.test(path) ? readFileSync(path) : undefined),
    bytes,
  );
}

function split(data: Buffer, size: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let off = 0; off + size <= data.length; off += size) chunks.push(data.subarray(off, off + size));
  return chunks;
}

// ---------------------------------------------------------------- measuring

function warmMemory(): void {
  const code = `const keep=[];for(let i=0;i<${WARMUP_BYTES / (256 * MiB)};i++){const b=Buffer.allocUnsafeSlow(${256 * MiB});b.fill(i+1);keep.push(b)}`;
  const r = spawnSync(process.execPath, ["-e", code], { stdio: "inherit" });
  if (r.status !== 0) throw new Error("the memory warm-up process failed");
}

function load(): string {
  return loadavg()
    .map((v) => v.toFixed(2))
    .join(" ");
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

interface Cell {
  codec: string;
  kind: string;
  chunkSize: number;
  rawBytes: number;
  /** Bytes the codec's output takes, every chunk compressed. */
  codecBytes: number;
  /** Bytes stored when a chunk that gains less than MIN_GAIN is kept raw. */
  storedBytes: number;
  /** Chunks kept raw under that rule. */
  rawChunks: number;
  chunks: number;
  /** Per round: MB per CPU second, and per wall-clock second. */
  compressMBps: number[];
  decompressMBps: number[];
  compressWallMBps: number[];
  decompressWallMBps: number[];
}

interface Case {
  codec: Codec;
  kind: string;
  chunks: Buffer[];
  compressed: Buffer[];
  cell: Cell;
  compressReps: number;
  decompressReps: number;
}

function compressAll(c: Case, keep = !c.codec.transient): void {
  for (let i = 0; i < c.chunks.length; i++) {
    const out = c.codec.compress(c.chunks[i] as Buffer);
    if (keep) c.compressed[i] = c.codec.transient ? Buffer.from(out) : out;
  }
}

function decompressAll(c: Case): void {
  for (let i = 0; i < c.compressed.length; i++) {
    const out = c.codec.decompress(c.compressed[i] as Buffer, (c.chunks[i] as Buffer).length);
    if (out.length !== (c.chunks[i] as Buffer).length) throw new Error(`${c.codec.name} lost bytes`);
  }
}

/**
 * CPU seconds of this process (user + system). The codecs run synchronously on this one
 * thread, so bytes per CPU second is the throughput of one core; unlike wall time it leaves
 * out the moments other processes on this shared machine had the core.
 */
function cpuSeconds(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

/** Run `pass` `reps` times; CPU and wall seconds per pass. */
function timed(reps: number, pass: () => void): { cpu: number; wall: number } {
  const cpu0 = cpuSeconds();
  const wall0 = performance.now();
  for (let r = 0; r < reps; r++) pass();
  return { cpu: (cpuSeconds() - cpu0) / reps, wall: (performance.now() - wall0) / 1000 / reps };
}

setFlagsFromString("--expose-gc");
const collectGarbage = runInNewContext("gc") as () => void;

/**
 * Collect the garbage the previous sample left and give V8's background threads time to
 * free it: their CPU time counts in process.cpuUsage(), and would otherwise be charged to
 * the next codec (an allocation-free one looked up to 5 times slower than it is).
 */
async function settle(): Promise<void> {
  collectGarbage();
  await new Promise((resolve) => setTimeout(resolve, 15));
}

/** Passes per sample, so that a sample lasts about 0.15 s whatever the codec's speed. */
const SAMPLE_SECONDS = 0.15;

async function main(): Promise<void> {
  const { codecs: zstd, notes } = await zstdCodecs();
  const codecs = [...builtinCodecs(), ...zstd];

  const text = englishText(BYTES_PER_KIND);
  const code = sourceCode(BYTES_PER_KIND);
  const kinds: { kind: string; data: Buffer; source: string }[] = [
    { kind: "incompressible", data: incompressible(BYTES_PER_KIND), source: "AES-256-CTR keystream" },
    {
      kind: "text",
      data: text.data,
      source: `${text.files} change logs/READMEs/NEWS under /usr/share/doc, gunzipped, ≤1 MiB each`,
    },
    {
      kind: "mixed",
      data: code.data,
      source: `${code.files} .js/.mjs/.cjs/.ts files under node_modules`,
    },
  ];

  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "?"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.versions.node}`;
  console.log(`machine: ${machine}`);
  for (const k of kinds) console.log(`data ${k.kind}: ${(k.data.length / MiB).toFixed(1)} MiB, ${k.source}`);
  for (const note of notes) console.log(`note: ${note}`);

  const cases: Case[] = [];
  for (const chunkSize of CHUNK_SIZES) {
    for (const k of kinds) {
      const chunks = split(k.data, chunkSize);
      const store = [1, 3].map((level) => storeCodec(level));
      for (const codec of [...codecs, ...store]) {
        cases.push({
          codec,
          kind: k.kind,
          chunks,
          compressed: new Array(chunks.length),
          compressReps: 1,
          decompressReps: 1,
          cell: {
            codec: codec.name,
            kind: k.kind,
            chunkSize,
            rawBytes: chunks.length * chunkSize,
            codecBytes: 0,
            storedBytes: 0,
            rawChunks: 0,
            chunks: chunks.length,
            compressMBps: [],
            decompressMBps: [],
            compressWallMBps: [],
            decompressWallMBps: [],
          },
        });
      }
    }
  }

  // Untimed warm-up pass, which also checks every round trip, computes the sizes and
  // chooses how many passes make one sample.
  for (const c of cases) {
    const reps = (seconds: number) =>
      Math.min(50, Math.max(1, Math.ceil(SAMPLE_SECONDS / Math.max(seconds, 1e-6))));
    c.compressReps = reps(timed(1, () => compressAll(c, true)).wall);
    c.decompressReps = reps(timed(1, () => decompressAll(c)).wall);
    for (let i = 0; i < c.chunks.length; i++) {
      const raw = c.chunks[i] as Buffer;
      const packed = c.compressed[i] as Buffer;
      if (!c.codec.decompress(packed, raw.length).equals(raw))
        throw new Error(`${c.codec.name} corrupted data`);
      c.cell.codecBytes += packed.length;
      if (packed.length <= raw.length * (1 - MIN_GAIN)) c.cell.storedBytes += packed.length;
      else {
        c.cell.storedBytes += raw.length;
        c.cell.rawChunks++;
      }
    }
  }

  for (let round = 1; round <= rounds; round++) {
    warmMemory();
    console.log(`round ${round}/${rounds}, load average ${load()}`);
    for (const c of cases) {
      const mb = c.cell.rawBytes / 1e6;
      await settle();
      const packing = timed(c.compressReps, () => compressAll(c));
      await settle();
      const unpacking = timed(c.decompressReps, () => decompressAll(c));
      c.cell.compressMBps.push(mb / packing.cpu);
      c.cell.decompressMBps.push(mb / unpacking.cpu);
      c.cell.compressWallMBps.push(mb / packing.wall);
      c.cell.decompressWallMBps.push(mb / unpacking.wall);
    }
  }

  const fmt = (values: number[]) =>
    `${median(values).toFixed(0)} (${Math.min(...values).toFixed(0)}–${Math.max(...values).toFixed(0)})`;
  const lines = [
    "| chunk | data | codec | size % | stored % (raw if gain < 3 %) | compress MB/s | decompress MB/s |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const c of cases) {
    const cell = c.cell;
    // The store reads a raw record back without decoding anything.
    const nothingToDecode = c.codec.transient === true && cell.rawChunks === cell.chunks;
    lines.push(
      `| ${cell.chunkSize / KiB} KiB | ${cell.kind} | ${cell.codec} | ${((100 * cell.codecBytes) / cell.rawBytes).toFixed(1)} | ${((100 * cell.storedBytes) / cell.rawBytes).toFixed(1)} (${cell.rawChunks}/${cell.chunks} raw) | ${fmt(cell.compressMBps)} | ${nothingToDecode ? "no decoding" : fmt(cell.decompressMBps)} |`,
    );
  }
  console.log(
    `\nmedian (min–max) of ${rounds} rounds; MB/s = 10^6 bytes of uncompressed data per CPU second of one core\n`,
  );
  console.log(lines.join("\n"));

  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(
    OUT,
    `${JSON.stringify(
      {
        machine,
        rounds,
        minGain: MIN_GAIN,
        data: kinds.map((k) => ({ kind: k.kind, bytes: k.data.length, source: k.source })),
        notes,
        cells: cases.map((c) => c.cell),
      },
      null,
      2,
    )}\n`,
  );
  console.log(`\nwritten to ${OUT}`);
}

await main();
