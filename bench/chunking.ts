// Measures keepwatch's FastCDC chunker (src/chunking) on one core, the main thread:
//   1. inner-loop variants, to keep the fastest (all cut the same boundaries);
//   2. throughput of the chunker alone and of chunker + SHA-256 of every chunk, with the
//      default parameters, over 1 GiB of incompressible data pushed in 1 MiB pieces;
//   3. for candidate parameters: chunks per GiB, throughput, the full manifest (32 + 4 bytes
//      per chunk), and what an edit costs: new chunk bytes (chunks of the edited file whose
//      SHA-256 the original lacks) and the manifest as protocol v2 COPY/NEW ops after one
//      byte flipped mid-file and after 100 bytes inserted at the start, and the mean new
//      bytes over many random insertions or deletions of 1–64 bytes and of 1–64 KiB.
// It follows /work/shared/BENCHMARKING.md: ~2 GiB of memory is touched and freed in another
// process first, the data is generated (and so touched) before any timing, every figure is
// a median of several runs with its min–max, variants are interleaved (A B A B …), each run
// waits (up to 60 s) for the machine to be quiet, and the load average, the share of the
// other vCPU that other processes used, and our on-CPU share are printed per run.
//
// Run: npx tsx bench/chunking.ts [--quick] [--throughput | --candidates]
//   --quick        256 MiB, 3 runs, 300 edits and no waiting, for a sanity check (~45 s)
//   --throughput   parts 1 and 2 only;  --candidates  part 3 only
// The full run takes about 6 minutes on a quiet machine.

import { spawnSync } from "node:child_process";
import { createCipheriv } from "node:crypto";
import { readFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import {
  type Chunk,
  Chunker,
  type ChunkParams,
  DEFAULT_CHUNK_PARAMS,
  sha256,
} from "../src/chunking/fastcdc.js";
import { gearTable } from "../src/chunking/gear.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const args = process.argv.slice(2);
for (const arg of args) {
  if (arg !== "--quick" && arg !== "--throughput" && arg !== "--candidates") {
    console.error(`unknown argument ${arg}; use --quick, --throughput or --candidates`);
    process.exit(2);
  }
}
const QUICK = args.includes("--quick");
const THROUGHPUT = !args.includes("--candidates") || args.includes("--throughput");
const CANDIDATES_PART = !args.includes("--throughput") || args.includes("--candidates");
const DATA_BYTES = QUICK ? 256 * MiB : 1 * GiB;
const PIECE = 1 * MiB; // how the client reads a file
const RUNS = QUICK ? 3 : 5;
const CANDIDATE_RUNS = 3;
const RANDOM_EDITS = QUICK ? 300 : 2000;
const MANIFEST_ENTRY = 32 + 4; // SHA-256 and length per chunk

type Params = Required<ChunkParams>;
const p = (min: number, avg: number, max: number, normalization: number): Params => ({
  minSize: min * KiB,
  avgSize: avg * KiB,
  maxSize: max * KiB,
  normalization,
});
const CANDIDATES: Params[] = [
  p(4, 16, 64, 1),
  p(8, 32, 128, 1),
  p(16, 64, 256, 1),
  p(32, 128, 512, 1),
  p(64, 256, 1024, 1),
  p(16, 64, 256, 0),
  p(16, 64, 256, 2),
  p(16, 64, 256, 3),
  p(8, 64, 256, 1),
  p(32, 64, 256, 1),
  p(32, 128, 512, 2),
];

// ---------------------------------------------------------------- measuring helpers

const label = (x: Params): string =>
  `${x.minSize / KiB}/${x.avgSize / KiB}/${x.maxSize / KiB} KiB NC${x.normalization}`;

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

const fmt = (value: number, digits = 0): string =>
  value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** "median (min–max)" of MB/s figures, and the same in MiB/s. */
/** "median (min–max)". */
function spread(values: number[]): string {
  return `${fmt(median(values))} (${fmt(Math.min(...values))}–${fmt(Math.max(...values))})`;
}

function rates(mbps: number[]): string {
  const mib = mbps.map((r) => (r * 1e6) / MiB);
  return `${fmt(median(mbps))} MB/s (${fmt(Math.min(...mbps))}–${fmt(Math.max(...mbps))}); ${fmt(median(mib))} MiB/s (${fmt(Math.min(...mib))}–${fmt(Math.max(...mib))})`;
}

function loadLine(): string {
  return loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");
}

/** Busy and total CPU ticks of the whole machine, from /proc/stat (Linux). */
function machineTicks(): { busy: number; total: number } {
  const fields = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "")
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Waits (up to 60 s; not with --quick) for half a second in which the whole machine was less
 * than 25% busy, so a run starts while other sessions leave a core free. Returns the seconds
 * waited.
 */
function waitQuiet(): number {
  if (QUICK) return 0;
  const t0 = performance.now();
  for (;;) {
    const a = machineTicks();
    sleepSync(500);
    const b = machineTicks();
    const waited = (performance.now() - t0) / 1000;
    if ((b.busy - a.busy) / Math.max(1, b.total - a.total) < 0.25 || waited > 60) return waited;
  }
}

interface Timing {
  mbps: number;
  /** Bytes over our CPU time: what the code does per second of CPU, whatever else ran. */
  cpuMbps: number;
  /** Share of the other vCPUs' time that was busy during the run (others' load), 0–1. */
  othersBusy: number;
  /** Our CPU time over wall time: below 1 when we were descheduled. */
  onCpu: number;
  /** Seconds waited for a quiet machine before the run. */
  waited: number;
  /** The load average when the run started. */
  load: string;
}

/** Runs `fn` (which processes `bytes` bytes) once, timed, with what the machine was doing. */
function timed(bytes: number, fn: () => void): Timing {
  const waited = waitQuiet();
  const load = loadLine();
  const ticks0 = machineTicks();
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  fn();
  const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const ticks1 = machineTicks();
  const cpuS = (cpu.user + cpu.system) / 1e6;
  const busy = ticks1.busy - ticks0.busy;
  const total = ticks1.total - ticks0.total;
  const ncpu = cpus().length;
  // The machine's busy ticks minus our own share, over the other vCPUs' ticks.
  const ours = total > 0 ? (cpuS / wallS / ncpu) * total : 0;
  const othersBusy =
    ncpu > 1 && total > 0 ? Math.min(1, Math.max(0, (busy - ours) / (total * ((ncpu - 1) / ncpu)))) : 0;
  return {
    mbps: bytes / wallS / 1e6,
    cpuMbps: bytes / cpuS / 1e6,
    othersBusy,
    onCpu: cpuS / wallS,
    waited,
    load,
  };
}

function runLine(name: string, t: Timing): string {
  return `  ${name.padEnd(40)} ${fmt(t.mbps).padStart(6)} MB/s (${fmt(t.cpuMbps).padStart(6)} per CPU-s)   load before ${t.load}   others busy ${fmt(t.othersBusy * 100)}%   on-CPU ${fmt(t.onCpu * 100)}%   waited ${t.waited.toFixed(1)} s`;
}

/** Touches and frees ~2 GiB in a separate process (BENCHMARKING.md pitfall 1). */
function warmMemory(): number {
  const t0 = performance.now();
  const code =
    "const k=[];for(let i=0;i<8;i++){const b=Buffer.allocUnsafeSlow(256*1024*1024);b.fill(i+1);k.push(b)}";
  const result = spawnSync(process.execPath, ["-e", code], { stdio: "inherit" });
  if (result.status !== 0) throw new Error("the memory warm-up process failed");
  return (performance.now() - t0) / 1000;
}

/** Incompressible bytes: AES-128-CTR over zeros with a fixed key, written into one buffer. */
function generate(bytes: number, seed: number): Buffer {
  const out = Buffer.allocUnsafeSlow(bytes);
  const cipher = createCipheriv("aes-128-ctr", Buffer.alloc(16, seed), Buffer.alloc(16));
  const zeros = Buffer.alloc(16 * MiB);
  for (let at = 0; at < bytes; at += zeros.length) {
    cipher.update(zeros.subarray(0, Math.min(zeros.length, bytes - at))).copy(out, at);
  }
  return out;
}

// ---------------------------------------------------------------- workloads

/** Pushes `data` through a chunker in PIECE-sized pieces; calls `each` for every chunk. */
function stream(data: Buffer, params: ChunkParams, each: (c: Chunk) => void, prefix?: Buffer): void {
  const chunker = new Chunker(params);
  if (prefix !== undefined) for (const c of chunker.push(prefix)) each(c);
  for (let at = 0; at < data.length; at += PIECE) {
    for (const c of chunker.push(data.subarray(at, at + PIECE))) each(c);
  }
  const last = chunker.finish();
  if (last !== null) each(last);
}

function countChunks(data: Buffer, params: ChunkParams): number {
  let n = 0;
  stream(data, params, () => {
    n++;
  });
  return n;
}

/** SHA-256 of every chunk, as map keys (latin1 strings of the 32 bytes). */
function chunkHashes(
  data: Buffer,
  params: ChunkParams,
  prefix?: Buffer,
): { ids: string[]; lengths: number[] } {
  const ids: string[] = [];
  const lengths: number[] = [];
  stream(
    data,
    params,
    (c) => {
      ids.push(sha256(c.data).toString("latin1"));
      lengths.push(c.length);
    },
    prefix,
  );
  return { ids, lengths };
}

function sha256Pieces(data: Buffer): void {
  for (let at = 0; at < data.length; at += PIECE) sha256(data.subarray(at, at + PIECE));
}

// ---------------------------------------------------------------- inner-loop variants
// One-shot chunkers over a whole buffer with the same rule as src/chunking/fastcdc.ts, so
// their speed can be compared with the library's loop (two bytes per step, streamed). Each
// returns its chunk count, which must equal the library's.

const GEAR = gearTable();
const GEAR_U32 = new Uint32Array(GEAR.buffer.slice(0));
const GEAR_SHIFTED = GEAR.map((g) => g << 1);

function masks(x: Params): { s: number; l: number } {
  const k = Math.log2(x.avgSize);
  const high = (bits: number): number => ((2 ** bits - 1) * 2 ** (31 - bits)) | 0;
  return { s: high(k + x.normalization), l: high(k - x.normalization) };
}

/** One byte per step, int32 arithmetic (`| 0`). */
function variantOneByteInt32(src: Buffer, x: Params): number {
  const { s, l } = masks(x);
  const g = GEAR;
  let count = 0;
  let start = 0;
  while (start < src.length) {
    const stop = Math.min(start + x.maxSize, src.length);
    const normalEnd = Math.min(start + x.avgSize, stop);
    let end = stop;
    let h = 0;
    let i = start + x.minSize;
    for (; i < normalEnd; i++) {
      h = ((h << 1) + (g[src[i] as number] as number)) | 0;
      if ((h & s) === 0) break;
    }
    if (i < normalEnd) end = i + 1;
    else {
      for (; i < stop; i++) {
        h = ((h << 1) + (g[src[i] as number] as number)) | 0;
        if ((h & l) === 0) break;
      }
      if (i < stop) end = i + 1;
    }
    count++;
    start = end;
  }
  return count;
}

/** One byte per step, uint32 arithmetic (`>>> 0`, Uint32Array table). */
function variantOneByteUint32(src: Buffer, x: Params): number {
  const { s, l } = masks(x);
  const su = s >>> 0;
  const lu = l >>> 0;
  const g = GEAR_U32;
  let count = 0;
  let start = 0;
  while (start < src.length) {
    const stop = Math.min(start + x.maxSize, src.length);
    const normalEnd = Math.min(start + x.avgSize, stop);
    let end = stop;
    let h = 0;
    let i = start + x.minSize;
    for (; i < normalEnd; i++) {
      h = ((h << 1) + (g[src[i] as number] as number)) >>> 0;
      if ((h & su) === 0) break;
    }
    if (i < normalEnd) end = i + 1;
    else {
      for (; i < stop; i++) {
        h = ((h << 1) + (g[src[i] as number] as number)) >>> 0;
        if ((h & lu) === 0) break;
      }
      if (i < stop) end = i + 1;
    }
    count++;
    start = end;
  }
  return count;
}

/** Two bytes per step, as the library, but one-shot and inline (no streaming state, no call per chunk). */
function variantTwoBytes(src: Buffer, x: Params): number {
  const { s, l } = masks(x);
  const s2 = s << 1;
  const l2 = l << 1;
  const g = GEAR;
  const g2 = GEAR_SHIFTED;
  let count = 0;
  let start = 0;
  outer: while (start < src.length) {
    const stop = Math.min(start + x.maxSize, src.length);
    const normalEnd = Math.min(start + x.avgSize, stop);
    let h = 0;
    let i = start + x.minSize;
    count++;
    for (; i + 1 < normalEnd; i += 2) {
      h = ((h << 2) + (g2[src[i] as number] as number)) | 0;
      if ((h & s2) === 0) {
        start = i + 1;
        continue outer;
      }
      h = (h + (g[src[i + 1] as number] as number)) | 0;
      if ((h & s) === 0) {
        start = i + 2;
        continue outer;
      }
    }
    if (i < normalEnd) {
      h = ((h << 1) + (g[src[i++] as number] as number)) | 0;
      if ((h & s) === 0) {
        start = i;
        continue;
      }
    }
    for (; i + 1 < stop; i += 2) {
      h = ((h << 2) + (g2[src[i] as number] as number)) | 0;
      if ((h & l2) === 0) {
        start = i + 1;
        continue outer;
      }
      h = (h + (g[src[i + 1] as number] as number)) | 0;
      if ((h & l) === 0) {
        start = i + 2;
        continue outer;
      }
    }
    if (i < stop) {
      h = ((h << 1) + (g[src[i++] as number] as number)) | 0;
      if ((h & l) === 0) {
        start = i;
        continue;
      }
    }
    start = stop;
  }
  return count;
}

// ---------------------------------------------------------------- edits

/**
 * What an edited file costs against the original: bytes and count of its chunks whose hash
 * the original lacks, and the size of its manifest sent as protocol v2 ops against the
 * original (docs/protocol.md 11.2: COPY runs of 9 bytes, NEW entries of 37 bytes).
 */
function editCost(original: Map<string, number>, edited: { ids: string[]; lengths: number[] }) {
  let bytes = 0;
  let chunks = 0;
  let opsBytes = 0;
  let runEnd = -1; // index in the original just after the current COPY run
  edited.ids.forEach((id, i) => {
    const at = original.get(id);
    if (at === undefined) {
      bytes += edited.lengths[i] as number;
      chunks++;
      opsBytes += 37;
      runEnd = -1;
    } else {
      if (at !== runEnd) opsBytes += 9;
      runEnd = at + 1;
    }
  });
  return { bytes, chunks, opsBytes };
}

interface EditStats {
  meanBytes: number;
  meanChunks: number;
  withinThree: number;
}

/**
 * Mean bytes of new chunks over RANDOM_EDITS random edits: `minCount`–`maxCount` bytes
 * inserted or deleted at a random place. Chunking restarts at the original boundary before
 * the edit and stops at the first boundary shared again: boundaries before the edit cannot
 * change and the chunker keeps no state across a boundary, so this equals chunking the
 * whole edited file and comparing chunk hashes (the chunks in between are new).
 */
function randomEdits(
  data: Buffer,
  params: Params,
  ends: Float64Array,
  minCount: number,
  maxCount: number,
): EditStats {
  const picks = generate(RANDOM_EDITS * 12, 99);
  const inserts = generate(maxCount, 98);
  const endSet = new Set(ends);
  let bytes = 0;
  let chunks = 0;
  let withinThree = 0;
  for (let e = 0; e < RANDOM_EDITS; e++) {
    const position = 1 + (picks.readUInt32LE(e * 12) % (data.length - 64 * MiB));
    const count = minCount + (picks.readUInt32LE(e * 12 + 4) % (maxCount - minCount + 1));
    const inserting = ((picks[e * 12 + 8] as number) & 1) === 1;
    const shift = inserting ? count : -count;
    // The original boundary at or before the edit: the last end ≤ position (or 0).
    let lo = -1;
    let hi = ends.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((ends[mid] as number) <= position) lo = mid;
      else hi = mid - 1;
    }
    const from = lo < 0 ? 0 : (ends[lo] as number);
    const chunker = new Chunker(params);
    let changed = 0;
    let done = false;
    const take = (piece: Buffer): void => {
      for (const c of chunker.push(piece)) {
        if (done) return;
        const end = from + c.offset + c.length;
        changed++;
        bytes += c.length;
        if (end > position && end - shift > position && endSet.has(end - shift)) done = true;
      }
    };
    take(data.subarray(from, position));
    if (inserting) take(inserts.subarray(0, count));
    for (let at = inserting ? position : position + count; !done && at < data.length; at += 64 * KiB) {
      take(data.subarray(at, at + 64 * KiB));
    }
    chunks += changed;
    if (changed <= 3) withinThree++;
  }
  return {
    meanBytes: bytes / RANDOM_EDITS,
    meanChunks: chunks / RANDOM_EDITS,
    withinThree: withinThree / RANDOM_EDITS,
  };
}

/** Mean, standard deviation, 5th/50th/95th percentiles and share cut at maxSize, in KiB. */
function sizeStats(lengths: number[], maxSize: number): string {
  const sorted = Float64Array.from(lengths).sort();
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  const sd = Math.sqrt(sorted.reduce((a, b) => a + (b - mean) ** 2, 0) / sorted.length);
  const pct = (q: number): string => fmt((sorted[Math.floor(q * (sorted.length - 1))] as number) / KiB, 1);
  const forced = sorted.filter((l) => l === maxSize).length / sorted.length;
  return `${fmt(sd / KiB, 1)} KiB | ${pct(0.05)} / ${pct(0.5)} / ${pct(0.95)} KiB | ${fmt(forced * 100, 2)}%`;
}

const editCell = (x: EditStats): string =>
  `${fmt(x.meanBytes / 1000, 1)} KB / ${x.meanChunks.toFixed(2)} / ${fmt(x.withinThree * 100, 1)}%`;

// ---------------------------------------------------------------- main

function main(): void {
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  console.log(`# keepwatch chunking benchmark${QUICK ? " (--quick)" : ""}`);
  console.log(
    `${new Date().toISOString()}; ${cpus().length} vCPU ${cpu}; ${fmt(totalmem() / GiB)} GiB; Node ${process.version}; ${process.platform} ${process.arch}`,
  );
  console.log(`load average at start: ${loadLine()}`);
  console.log(`memory warm-up (2 GiB touched and freed in a child process): ${warmMemory().toFixed(2)} s`);
  const t0 = performance.now();
  const data = generate(DATA_BYTES, 1);
  console.log(
    `data: ${fmt(DATA_BYTES / MiB)} MiB of AES-128-CTR output, generated in ${((performance.now() - t0) / 1000).toFixed(2)} s (page cache not involved: the data is in memory)`,
  );
  const defaults = { ...DEFAULT_CHUNK_PARAMS };

  // JIT warm-up: every code path, several times, on 64 MiB.
  const warm = data.subarray(0, 64 * MiB);
  for (let i = 0; i < 3; i++) {
    countChunks(warm, defaults);
    chunkHashes(warm, defaults);
    variantOneByteInt32(warm, defaults);
    variantOneByteUint32(warm, defaults);
    variantTwoBytes(warm, defaults);
    sha256Pieces(warm);
  }

  // 1. Inner-loop variants over the whole buffer, interleaved.
  if (THROUGHPUT)
    console.log(`\n## 1. Inner-loop variants (${label(defaults)}, over ${fmt(DATA_BYTES / MiB)} MiB)`);
  const expected = countChunks(data, defaults);
  const variants: [string, (src: Buffer, x: Params) => number][] = [
    ["one byte/step, int32", variantOneByteInt32],
    ["one byte/step, uint32", variantOneByteUint32],
    ["two bytes/step", variantTwoBytes],
    ["library (two bytes/step), 1 MiB pushes", countChunks],
  ];
  const variantRates = new Map<string, Timing[]>();
  for (let run = 0; run < (THROUGHPUT ? RUNS : 0); run++) {
    for (const [name, fn] of variants) {
      let count = 0;
      const t = timed(DATA_BYTES, () => {
        count = fn(data, defaults);
      });
      if (count !== expected) throw new Error(`${name} cut ${count} chunks, the library ${expected}`);
      console.log(runLine(name, t));
      variantRates.set(name, [...(variantRates.get(name) ?? []), t]);
    }
  }

  // 2. The library, streamed in 1 MiB pieces: chunker alone, with SHA-256, and SHA-256 alone.
  if (THROUGHPUT)
    console.log(
      `\n## 2. Throughput, ${label(defaults)}, ${fmt(DATA_BYTES / MiB)} MiB pushed in 1 MiB pieces`,
    );
  const workloads: [string, () => void][] = [
    ["chunker alone", () => countChunks(data, defaults)],
    ["chunker + SHA-256", () => chunkHashes(data, defaults)],
    ["SHA-256 alone (1 MiB)", () => sha256Pieces(data)],
  ];
  const workloadRates = new Map<string, Timing[]>();
  for (let run = 0; run < (THROUGHPUT ? RUNS : 0); run++) {
    for (const [name, fn] of workloads) {
      const t = timed(DATA_BYTES, fn);
      console.log(runLine(name, t));
      workloadRates.set(name, [...(workloadRates.get(name) ?? []), t]);
    }
  }

  // 3. Candidate parameters.
  if (CANDIDATES_PART)
    console.log(
      `\n## 3. Candidate parameters (${fmt(DATA_BYTES / MiB)} MiB; ${RANDOM_EDITS} random edits each)`,
    );
  const costRows: string[] = [];
  const editRows: string[] = [];
  for (const candidate of CANDIDATES_PART ? CANDIDATES : []) {
    countChunks(warm, candidate);
    const speeds: Timing[] = [];
    for (let run = 0; run < CANDIDATE_RUNS; run++) {
      const t = timed(DATA_BYTES, () => countChunks(data, candidate));
      console.log(runLine(label(candidate), t));
      speeds.push(t);
    }
    const original = chunkHashes(data, candidate);
    const ids = new Map<string, number>();
    original.ids.forEach((id, i) => {
      if (!ids.has(id)) ids.set(id, i);
    });
    const ends = new Float64Array(original.lengths.length);
    let end = 0;
    original.lengths.forEach((length, i) => {
      end += length;
      ends[i] = end;
    });
    const mid = data.length >> 1;
    data[mid] = (data[mid] as number) ^ 1;
    const flipped = editCost(ids, chunkHashes(data, candidate));
    data[mid] = (data[mid] as number) ^ 1;
    const inserted = editCost(ids, chunkHashes(data, candidate, generate(100, 7)));
    const small = randomEdits(data, candidate, ends, 1, 64);
    const large = randomEdits(data, candidate, ends, 1 * KiB, 64 * KiB);
    const count = original.ids.length;
    const manifest = count * MANIFEST_ENTRY;
    costRows.push(
      [
        label(candidate),
        fmt((count * GiB) / DATA_BYTES),
        `${fmt(DATA_BYTES / count / KiB, 1)} KiB`,
        sizeStats(original.lengths, candidate.maxSize),
        spread(speeds.map((t) => t.mbps)),
        spread(speeds.map((t) => t.cpuMbps)),
        `${fmt(manifest / 1000)} KB`,
      ].join(" | "),
    );
    editRows.push(
      [
        label(candidate),
        `${fmt(flipped.bytes / 1000)} KB / ${flipped.chunks} / ${flipped.opsBytes} B`,
        `${fmt(inserted.bytes / 1000)} KB / ${inserted.chunks} / ${inserted.opsBytes} B`,
        editCell(small),
        editCell(large),
      ].join(" | "),
    );
  }

  console.log("\n## Summary\n");
  console.log(`load average at end: ${loadLine()}\n`);
  if (THROUGHPUT) printThroughput(variantRates, workloadRates, defaults);
  if (!CANDIDATES_PART) return;
  const size = DATA_BYTES === GiB ? "1 GiB" : `${fmt(DATA_BYTES / MiB)} MiB`;
  console.log(
    `\n| params min/avg/max | chunks per GiB | mean size | standard deviation | 5th / 50th / 95th percentile | cut at maxSize | MB/s chunker alone, median (min–max) of ${CANDIDATE_RUNS} | per CPU-second | full manifest of ${size} (36 B/chunk) |`,
  );
  console.log(`| ${Array(9).fill("---").join(" | ")} |`);
  for (const row of costRows) console.log(`| ${row} |`);
  console.log(
    `\n| params min/avg/max | 1 byte flipped mid-file: new bytes / chunks / manifest ops | 100 B inserted at start: same | ${RANDOM_EDITS} edits of 1–64 B: mean new bytes / chunks / share ≤ 3 chunks | ${RANDOM_EDITS} edits of 1–64 KiB: same |`,
  );
  console.log(`| ${Array(5).fill("---").join(" | ")} |`);
  for (const row of editRows) console.log(`| ${row} |`);
}

function printThroughput(
  variantRates: Map<string, Timing[]>,
  workloadRates: Map<string, Timing[]>,
  defaults: Params,
): void {
  const onCpu = (r: Timing[]): string => spread(r.map((t) => t.onCpu * 100));
  console.log(
    `| inner loop | MB/s, median (min–max) of ${RUNS} | MB/s per CPU-second | on-CPU % |\n| --- | --- | --- | --- |`,
  );
  for (const [name, r] of variantRates) {
    console.log(
      `| ${name} | ${spread(r.map((t) => t.mbps))} | ${spread(r.map((t) => t.cpuMbps))} | ${onCpu(r)} |`,
    );
  }
  console.log(
    `\n| ${label(defaults)}, 1 MiB pushes | median (min–max) of ${RUNS} | MB/s per CPU-second | on-CPU % |\n| --- | --- | --- | --- |`,
  );
  for (const [name, r] of workloadRates) {
    console.log(
      `| ${name} | ${rates(r.map((t) => t.mbps))} | ${spread(r.map((t) => t.cpuMbps))} | ${onCpu(r)} |`,
    );
  }
}

main();
