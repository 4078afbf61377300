// The manifest request: the client describes a file as a list of chunks (as edits of a
// base content the server holds), the server answers with the chunks it lacks, and only
// those travel. Then the version is assembled, checked, committed and mirrored.
//
// A streamed manifest (MANIFEST_STREAM, protocol version 5) is described while the client
// still reads the file: the server asks for chunks, and assembles the mirror file, as the
// description arrives, and learns the file's SHA-256 only at MANIFEST_CLOSE. The client's
// reading and the server's writing then overlap instead of following one another.

import { createHash } from "node:crypto";
import { bytesOf } from "../bytes.js";
import { applyDelta, blockSums, DELTA_BLOCK_BYTES, DeltaError } from "../chunking/block-delta.js";
import { ChunkList } from "../chunking/chunk-list.js";
import { KeepwatchError, ProtocolError } from "../errors.js";
import {
  encodeHistory,
  MAX_CHUNKS_PER_FILE,
  type ManifestBegin,
  type ManifestClose,
  type ManifestOp,
  type ManifestStream,
} from "../protocol/history-messages.js";
import { MessageType } from "../protocol/messages.js";
import { pathProblem } from "../protocol/paths.js";
import type { PendingFile } from "../store/mirror.js";
import { Assembler } from "./assembler.js";
import { ioError } from "./put.js";
import { commitPending, lossOr } from "./put-ref.js";
import type { RequestContext } from "./session.js";

/**
 * What manifests in flight may hold in memory together: the new chunk list at 56 bytes a
 * chunk (chunk-list.ts, the NEED bookkeeping and where a chunk copied from the base lies in
 * it), so that the largest list the protocol allows (4,194,304 chunks, 224 MiB) fits, and
 * the base's list at 44 bytes a chunk (chunk-list.ts, and its offsets). A request that could never
 * fit is refused with KW_FILE_TOO_LARGE (the client then sends it without a base); the
 * others wait for room, which holds up their connection.
 */
export const MANIFEST_MEMORY = 256 * 1024 * 1024;
/**
 * The list (36 bytes), its sort order (4), the asked flags (1), the NEED list (4) and the
 * offset in the base of a copied chunk (8).
 */
const NEW_BYTES_PER_CHUNK = 56;
const BASE_BYTES_PER_CHUNK = 44;
/**
 * A streamed manifest remembers the id of every chunk it asked for (a Map entry), so that a
 * chunk repeated in the file travels once; that memory is reserved this many chunks at a time.
 */
const ASKED_BYTES_PER_CHUNK = 160;
const ASKED_BLOCK = 1024;

/** Index ranges per NEED frame (8 bytes each), well within the smallest allowed frame. */
const RANGES_PER_NEED = 4096;
/**
 * A request needing at most this many chunks is offered a basis for each (BASIS, version
 * 4): the chunks of an edit, not those of a new or rewritten file, which share nothing
 * with the base's. Each costs a read of one stored chunk, twice.
 */
const MAX_BASES = 32;
/** How far from a needed chunk a copied one is looked for, to place it in the base. */
const BASIS_REACH = 4;

export class ManifestRequest {
  private base: ChunkList | null = null;
  /** Where each chunk of the base starts in it, and its size at the end. */
  private baseOffsets: Float64Array | null = null;
  /** For each new chunk copied from the base: its offset there (−1 for the others). */
  private copiedFrom: Float64Array | null = null;
  private readonly chunks: ChunkList;
  private total = 0;
  /**
   * The indices of the chunks asked for, in the order the client sends them: all of them
   * at MANIFEST_END, or, for a streamed manifest, a growing list from its start.
   */
  private needed: Uint32Array | number[] | null = null;
  /** How many of `needed` arrived, and how many were listed to the client in NEED frames. */
  private nextNeeded = 0;
  private listed = 0;
  /** A streamed manifest: after MANIFEST_CLOSE; and the ids it asked for (chunk repeats travel once). */
  private closed = false;
  private readonly asked = new Set<string>();
  /** Set once an ERROR was sent; later frames are swallowed until the request ends. */
  private failed = false;
  private ended = false;
  /** Bytes of the server's manifest memory this request holds. */
  private reserved = 0;
  /** The chunk store's loss mark before any chunk was looked up or put (History.commit). */
  private readonly since: number;
  /** Writes the mirror file as the chunks arrive (after MANIFEST_END). */
  private assembler: Assembler | null = null;
  /** The basis offered (BASIS) for a needed chunk: the id of the base's chunk it replaces. */
  private readonly bases = new Map<number, Buffer>();

  /** The manifest's header: for a streamed one, its SHA-256 comes at MANIFEST_CLOSE. */
  private readonly begin: ManifestBegin;
  /** Opened by MANIFEST_STREAM (version 5) rather than MANIFEST_BEGIN. */
  private readonly streamed: boolean;

  constructor(
    private readonly id: number,
    begin: ManifestBegin | ManifestStream,
    private readonly ctx: RequestContext,
  ) {
    if ("maxChunks" in begin) {
      const { maxChunks, ...header } = begin;
      this.begin = { ...header, sha256: Buffer.alloc(0), chunkCount: maxChunks };
      this.streamed = true;
    } else {
      this.begin = begin;
      this.streamed = false;
    }
    this.chunks = new ChunkList(this.begin.chunkCount);
    this.since = ctx.history.chunks.lossMark();
  }

  /** Whether the whole chunk list is known (after MANIFEST_END, or MANIFEST_CLOSE when streamed). */
  private get described(): boolean {
    return this.streamed ? this.closed : this.needed !== null;
  }

  async open(): Promise<void> {
    const problem = pathProblem(this.begin.path);
    if (problem !== null) {
      this.fail(
        new KeepwatchError(
          "KW_BAD_PATH",
          `The path ${JSON.stringify(this.begin.path)} was refused because ${problem}.`,
        ),
      );
      return;
    }
    if (!(await this.reserve(this.begin.chunkCount * NEW_BYTES_PER_CHUNK))) return;
    if (this.begin.base.length > 0) {
      this.base = await this.ctx.reuseScope().content(this.begin.base);
      if (!this.base) {
        this.fail(
          new KeepwatchError(
            "KW_CONTENT_UNKNOWN",
            `The server no longer holds the base of ${JSON.stringify(this.begin.path)}; send the manifest without it.`,
          ),
        );
        return;
      }
      if (!(await this.reserve(this.base.length * BASE_BYTES_PER_CHUNK))) return;
      const offsets = new Float64Array(this.base.length + 1);
      for (let i = 0; i < this.base.length; i++)
        offsets[i + 1] = (offsets[i] as number) + this.base.lengthOf(i);
      this.baseOffsets = offsets;
      this.copiedFrom = new Float64Array(this.begin.chunkCount).fill(-1);
    }
    if (this.streamed) {
      this.needed = [];
      this.assembler = this.newAssembler();
    }
    this.ctx.reporter.emit({ kind: "file-start", path: this.begin.path, size: this.begin.size });
  }

  async data(ops: ManifestOp[]): Promise<void> {
    if (this.described) throw this.violation(`MANIFEST_DATA arrived after ${this.endName}`);
    if (this.failed) return;
    const from = this.chunks.length;
    for (const op of ops) {
      if (op.op === "new") {
        this.add(op.id, op.length);
        continue;
      }
      const base = this.base;
      if (op.start + op.count > (base?.length ?? 0)) {
        throw this.violation(
          `a COPY op reaches chunk ${op.start + op.count} of a base with ${base?.length ?? 0}`,
        );
      }
      for (let i = op.start; base && i < op.start + op.count; i++) {
        if (this.copiedFrom && this.chunks.length < this.copiedFrom.length) {
          this.copiedFrom[this.chunks.length] = this.baseOffsets?.[i] ?? -1;
        }
        this.add(base.id(i), base.lengthOf(i));
      }
    }
    if (this.streamed) await this.ask(from);
  }

  /**
   * A streamed manifest's chunks from `from` on were described: ask for those the store
   * lacks, list them in NEED (with a BASIS where there is one), and let the assembler write
   * what it can.
   */
  private async ask(from: number): Promise<void> {
    const needed = this.needed as number[];
    const scope = this.ctx.reuseScope();
    // A connection that closes during a lookup clears the list, which ends the loop.
    for (let i = from; i < this.chunks.length; i++) {
      // A chunk copied from the base needs no lookup: the base was found in this client's
      // reuse scope, so its chunks are stored and this client may reuse them.
      if ((this.copiedFrom?.[i] ?? -1) >= 0) continue;
      const id = this.chunks.id(i);
      const key = id.toString("latin1");
      if (this.asked.has(key) || (await scope.chunk(id))) continue;
      if (this.asked.size % ASKED_BLOCK === 0 && !(await this.reserve(ASKED_BLOCK * ASKED_BYTES_PER_CHUNK))) {
        return;
      }
      if (this.failed) return;
      this.asked.add(key);
      needed.push(i);
    }
    await this.list();
    this.assembler?.advance(this.assembled());
  }

  /**
   * Send NEED (last 0) for the asked chunks not yet listed, each once the chunks around it
   * are described (its BASIS is placed by them); at MANIFEST_CLOSE the rest, with last 1.
   */
  private async list(): Promise<void> {
    const needed = this.needed as number[];
    let end = this.listed;
    while (end < needed.length && (this.closed || (needed[end] as number) + BASIS_REACH < this.chunks.length))
      end++;
    if (end === this.listed && !this.closed) return;
    const batch = needed.slice(this.listed, end);
    await this.offerBases(batch);
    if (this.failed) return;
    this.listed = end;
    this.sendNeed(batch, this.closed);
  }

  /** The chunks before the first asked one that has not arrived: those the assembler may write. */
  private assembled(): number {
    const needed = this.needed as number[];
    return this.nextNeeded < needed.length ? (needed[this.nextNeeded] as number) : this.chunks.length;
  }

  /** MANIFEST_CLOSE: a streamed manifest's end, with its SHA-256 and chunk count. */
  async close(m: ManifestClose): Promise<void> {
    if (!this.streamed) throw this.violation("MANIFEST_CLOSE ends only a manifest begun by MANIFEST_STREAM");
    if (this.closed) throw this.violation("MANIFEST_CLOSE arrived twice");
    this.closed = true;
    if (this.failed) {
      this.ended = true;
      this.ctx.release(this.id);
      return;
    }
    if (m.chunkCount !== this.chunks.length || this.total !== this.begin.size) {
      throw this.violation(
        `the manifest has ${this.chunks.length} chunks and ${this.total} bytes, not ${m.chunkCount} and ${this.begin.size}`,
      );
    }
    this.begin.sha256 = m.sha256;
    await this.list();
    if (!this.failed && this.nextNeeded === (this.needed as number[]).length) this.ctx.track(this.commit());
  }

  /** MANIFEST_END: check the list, then ask for the chunks the store lacks. */
  async end(): Promise<void> {
    if (this.streamed) throw this.violation("a streamed manifest ends with MANIFEST_CLOSE, not MANIFEST_END");
    if (this.needed) throw this.violation("MANIFEST_END arrived twice");
    if (this.failed) {
      this.ended = true;
      this.ctx.release(this.id);
      return;
    }
    if (this.chunks.length !== this.begin.chunkCount || this.total !== this.begin.size) {
      throw this.violation(
        `the manifest has ${this.chunks.length} chunks and ${this.total} bytes, not ${this.begin.chunkCount} and ${this.begin.size}`,
      );
    }
    // Chunks the store holds for other clients' sets are asked for all the same (access.ts).
    const scope = this.ctx.reuseScope();
    // A chunk that occurs twice in the file travels once: only first occurrences are asked.
    const first = this.chunks.firstOccurrences();
    const asked = new Uint8Array(this.chunks.length);
    let count = 0;
    for (let i = 0; i < this.chunks.length; i++) {
      if (first[i] === 1 && !(await scope.chunk(this.chunks.id(i)))) {
        asked[i] = 1;
        count++;
      }
    }
    const needed = new Uint32Array(count);
    for (let i = 0, n = 0; i < asked.length; i++) if (asked[i] === 1) needed[n++] = i;
    this.needed = needed;
    this.assembler = this.newAssembler();
    if (needed.length <= MAX_BASES) await this.offerBases(needed);
    this.listed = needed.length;
    this.sendNeed(needed, true);
    // Assembling a large file takes a while: it must not hold up the connection's other frames.
    if (needed.length === 0) this.ctx.track(this.commit());
  }

  /** CHUNK: a needed chunk's bytes, in the parts they arrived in. */
  async chunk(index: number, data: readonly Buffer[]): Promise<void> {
    // A streamed manifest refused on the way: its chunks may still be coming.
    if (this.streamed && this.failed) return;
    if (!this.needed) throw this.violation("a CHUNK arrived before MANIFEST_END");
    if (this.failed) return;
    if (this.nextNeeded >= this.listed || this.needed[this.nextNeeded] !== index) {
      throw this.violation(`CHUNK ${index} was not the next one the server asked for`);
    }
    this.nextNeeded++;
    await this.accept(index, data);
  }

  /** CHUNK_DELTA: a needed chunk as a delta of the basis offered for it. */
  async chunkDelta(index: number, ops: Buffer): Promise<void> {
    if (this.streamed && this.failed) return;
    if (!this.needed) throw this.violation("a CHUNK_DELTA arrived before MANIFEST_END");
    if (this.failed) return;
    if (this.nextNeeded >= this.listed || this.needed[this.nextNeeded] !== index) {
      throw this.violation(`CHUNK_DELTA ${index} was not the next chunk the server asked for`);
    }
    const basisId = this.bases.get(index);
    if (!basisId) throw this.violation(`CHUNK_DELTA ${index} is for a chunk the server offered no basis for`);
    this.nextNeeded++;
    let basis: Buffer;
    try {
      basis = await this.ctx.history.chunks.get(basisId);
    } catch (error) {
      this.fail(ioError(error, this.begin.path));
      return;
    }
    let data: Buffer;
    try {
      data = applyDelta(basis, DELTA_BLOCK_BYTES, ops, this.chunks.at(index).length);
    } catch (error) {
      if (error instanceof DeltaError) throw this.violation(`CHUNK_DELTA ${index}: ${error.message}`);
      throw error;
    }
    await this.accept(index, [data]);
  }

  /**
   * A needed chunk's bytes arrived (in the order asked), in parts that are not joined:
   * check, store and write them.
   */
  private async accept(index: number, data: readonly Buffer[]): Promise<void> {
    const needed = this.needed as Uint32Array | number[];
    const ref = this.chunks.at(index);
    const hash = createHash("sha256");
    for (const part of data) hash.update(part);
    if (bytesOf(data) !== ref.length || !hash.digest().equals(ref.id)) {
      this.fail(
        new KeepwatchError(
          "KW_HASH_MISMATCH",
          `A chunk of ${JSON.stringify(this.begin.path)} does not match its hash (the file changed?); it was not stored.`,
        ),
      );
      return;
    }
    try {
      await this.ctx.history.chunks.put(ref.id, data);
    } catch (error) {
      this.fail(ioError(error, this.begin.path));
      return;
    }
    this.ctx.notePossession(ref.id);
    await this.assembler?.add(index, data);
    this.ctx.reporter.emit({
      kind: "file-progress",
      path: this.begin.path,
      bytes: this.nextNeeded,
      size: needed.length,
    });
    if (this.streamed && !this.closed) this.assembler?.advance(this.assembled());
    else if (this.nextNeeded === needed.length) this.ctx.track(this.commit());
  }

  /** The assembler of the new mirror file, reading copied chunks from the old one when it can. */
  private newAssembler(): Assembler {
    const baseSize = this.baseOffsets?.[this.baseOffsets.length - 1];
    const source =
      this.copiedFrom && baseSize !== undefined
        ? { path: this.begin.path, size: baseSize, offsets: this.copiedFrom }
        : null;
    return new Assembler(this.ctx.mirror, this.ctx.history, this.chunks, this.ctx.budget, source);
  }

  private get endName(): string {
    return this.streamed ? "MANIFEST_CLOSE" : "MANIFEST_END";
  }

  /**
   * Send a BASIS for each needed chunk that replaces a chunk of the base (version 4, an
   * edit needing few chunks: at most MAX_BASES in a request): the base's chunk where the
   * new one stands, placed by the nearest chunk copied from the base before it (else after it).
   */
  private async offerBases(needed: Uint32Array | number[]): Promise<void> {
    const base = this.base;
    const copied = this.copiedFrom;
    const offsets = this.baseOffsets;
    if (this.ctx.protocolVersion < 4 || !base || !copied || !offsets) return;
    const baseIndexAt = (offset: number): number => {
      let lo = 0;
      let hi = base.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if ((offsets[mid] as number) <= offset) lo = mid;
        else hi = mid - 1;
      }
      return lo;
    };
    for (const index of needed) {
      if (this.bases.size >= MAX_BASES) return;
      let basisIndex = -1;
      for (let d = 1; d <= BASIS_REACH && basisIndex < 0; d++) {
        const before = copied[index - d] ?? -1;
        const after = copied[index + d] ?? -1;
        if (index - d >= 0 && before >= 0) basisIndex = baseIndexAt(before) + d;
        else if (after >= 0) basisIndex = baseIndexAt(after) - d;
      }
      if (basisIndex < 0 || basisIndex >= base.length) continue;
      // A copy, so that it does not keep the base's whole list alive.
      const basisId = Buffer.from(base.id(basisIndex));
      let basis: Buffer;
      try {
        basis = await this.ctx.history.chunks.get(basisId);
      } catch {
        continue; // A chunk that cannot be read is no basis; the chunk travels whole.
      }
      const { length, sums } = blockSums(basis, DELTA_BLOCK_BYTES);
      this.bases.set(index, basisId);
      this.ctx.send(
        MessageType.BASIS,
        this.id,
        encodeHistory.basis({ index, blockSize: DELTA_BLOCK_BYTES, length, sums }),
      );
    }
  }

  /** `bytes` more of the server's manifest memory; false (and refused) if they never fit. */
  private async reserve(bytes: number): Promise<boolean> {
    if (this.reserved + bytes > this.ctx.manifestBudget.limit) {
      this.fail(
        new KeepwatchError(
          "KW_FILE_TOO_LARGE",
          `The manifest of ${JSON.stringify(this.begin.path)} (${this.begin.chunkCount} chunks${this.base ? `, on a base of ${this.base.length}` : ""}) needs more memory than this server gives one request; it was not stored.`,
        ),
      );
      return false;
    }
    // Waiting here holds up this connection's frames, which slows its client down.
    await this.ctx.manifestBudget.acquire(bytes);
    this.reserved += bytes;
    if (!this.ctx.isOpen) this.releaseMemory();
    return this.ctx.isOpen;
  }

  /**
   * The connection closed. A manifest whose chunks all arrived is committed all the same,
   * and the commit reads the chunk list: its memory goes back when the commit is over. (An
   * ended request has either given its memory back already or is being committed.)
   */
  connectionClosed(): void {
    if (!this.ended) this.releaseMemory();
  }

  /** Give back the manifest memory (at the end, or when the connection closes). */
  releaseMemory(): void {
    if (this.reserved === 0) return;
    this.ctx.manifestBudget.give(this.reserved);
    this.reserved = 0;
    this.base = null;
    this.baseOffsets = null;
    this.copiedFrom = null;
    this.chunks.clear();
    this.asked.clear();
    void this.assembler?.discard();
    this.assembler = null;
  }

  /** PUT_ABORT: the client gave up (the file changed while it re-read it). */
  abort(): void {
    this.releaseMemory();
    this.ended = true;
    if (this.failed) this.ctx.release(this.id);
    else this.ctx.ack(this.id);
  }

  get isEnded(): boolean {
    return this.ended;
  }

  private async commit(): Promise<void> {
    this.ended = true;
    const assembler = this.assembler;
    this.assembler = null;
    try {
      if (!assembler) throw new KeepwatchError("KW_SERVER_IO", "the connection closed");
      let pending: PendingFile;
      try {
        pending = await assembler.finish(this.begin.sha256);
      } catch (error) {
        throw await lossOr(this.ctx, this.since, error);
      }
      await commitPending(this.ctx, this.begin, this.chunks, this.since, pending);
    } catch (error) {
      this.releaseMemory();
      this.ctx.reject(this.id, ioError(error, this.begin.path));
      return;
    }
    this.releaseMemory();
    const { path, size } = this.begin;
    this.ctx.reporter.emit({ kind: "file-done", path, op: "put", size, set: this.ctx.set });
    this.ctx.ack(this.id);
  }

  private add(id: Buffer, length: number): void {
    if (this.chunks.length >= Math.min(this.begin.chunkCount, MAX_CHUNKS_PER_FILE)) {
      throw this.violation(`the manifest has more than the ${this.begin.chunkCount} chunks announced`);
    }
    this.chunks.push(id, length);
    this.total += length;
  }

  /** NEED frames listing `needed`; the last of them says `last` (at least one frame when it does). */
  private sendNeed(needed: Uint32Array | number[], last: boolean): void {
    const ranges: [number, number][] = [];
    for (const index of needed) {
      const last = ranges[ranges.length - 1];
      if (last && last[0] + last[1] === index) last[1]++;
      else ranges.push([index, 1]);
    }
    for (let i = 0; i < ranges.length || (i === 0 && last); i += RANGES_PER_NEED) {
      const part = ranges.slice(i, i + RANGES_PER_NEED);
      const final = last && i + RANGES_PER_NEED >= ranges.length;
      this.ctx.send(MessageType.NEED, this.id, encodeHistory.need({ last: final, ranges: part }));
    }
  }

  /**
   * Refuse the request. Before MANIFEST_END (MANIFEST_CLOSE) the client still ends it
   * (with that frame or PUT_ABORT), and a streamed manifest's chunks on their way are
   * ignored; after it the ERROR ends it, and chunks already on their way are ignored.
   */
  private fail(error: KeepwatchError): void {
    this.failed = true;
    this.ended = this.described;
    this.releaseMemory();
    this.ctx.reject(this.id, error, !this.ended);
  }

  private violation(what: string): ProtocolError {
    return new ProtocolError("KW_BAD_MESSAGE", `Manifest request ${this.id} broke the protocol: ${what}.`);
  }
}
