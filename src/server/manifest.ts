// The manifest request: the client describes a file as a list of chunks (as edits of a
// base content the server holds), the server answers with the chunks it lacks, and only
// those travel. Then the version is assembled, checked, committed and mirrored.

import { createHash } from "node:crypto";
import { applyDelta, blockSums, DELTA_BLOCK_BYTES, DeltaError } from "../chunking/block-delta.js";
import { KeepwatchError, ProtocolError } from "../errors.js";
import {
  encodeHistory,
  MAX_CHUNKS_PER_FILE,
  type ManifestBegin,
  type ManifestOp,
} from "../protocol/history-messages.js";
import { MessageType } from "../protocol/messages.js";
import { pathProblem } from "../protocol/paths.js";
import { ChunkList } from "../store/chunk-list.js";
import type { ChunkRef } from "../store/metadata-store.js";
import type { PendingFile } from "../store/mirror.js";
import { Assembler } from "./assembler.js";
import { ioError } from "./put.js";
import { commitPending, lossOr } from "./put-ref.js";
import type { RequestContext } from "./session.js";

/**
 * What manifests in flight may hold in memory together: the new chunk list at 56 bytes a
 * chunk (chunk-list.ts, the NEED bookkeeping and where a chunk copied from the base lies in
 * it), so that the largest list the protocol allows (4,194,304 chunks, 224 MiB) fits, and
 * the base's list at ~250 bytes a chunk (objects from the index, and their offsets). A request that could never
 * fit is refused with KW_FILE_TOO_LARGE (the client then sends it without a base); the
 * others wait for room, which holds up their connection.
 */
export const MANIFEST_MEMORY = 256 * 1024 * 1024;
/**
 * The list (36 bytes), its sort order (4), the asked flags (1), the NEED list (4) and the
 * offset in the base of a copied chunk (8).
 */
const NEW_BYTES_PER_CHUNK = 56;
const BASE_BYTES_PER_CHUNK = 256;

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
  private base: ChunkRef[] | null = null;
  /** Where each chunk of the base starts in it, and its size at the end. */
  private baseOffsets: Float64Array | null = null;
  /** For each new chunk copied from the base: its offset there (−1 for the others). */
  private copiedFrom: Float64Array | null = null;
  private readonly chunks: ChunkList;
  private total = 0;
  /** After MANIFEST_END: the indices still to come, in the order the client sends them. */
  private needed: Uint32Array | null = null;
  private nextNeeded = 0;
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

  constructor(
    private readonly id: number,
    private readonly begin: ManifestBegin,
    private readonly ctx: RequestContext,
  ) {
    this.chunks = new ChunkList(begin.chunkCount);
    this.since = ctx.history.chunks.lossMark();
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
      this.base.forEach((ref, i) => {
        offsets[i + 1] = (offsets[i] as number) + ref.length;
      });
      this.baseOffsets = offsets;
      this.copiedFrom = new Float64Array(this.begin.chunkCount).fill(-1);
    }
    this.ctx.reporter.emit({ kind: "file-start", path: this.begin.path, size: this.begin.size });
  }

  data(ops: ManifestOp[]): void {
    if (this.needed) throw this.violation("MANIFEST_DATA arrived after MANIFEST_END");
    if (this.failed) return;
    for (const op of ops) {
      if (op.op === "new") {
        this.add(op.id, op.length);
        continue;
      }
      const base = this.base ?? [];
      if (op.start + op.count > base.length) {
        throw this.violation(`a COPY op reaches chunk ${op.start + op.count} of a base with ${base.length}`);
      }
      for (let i = op.start; i < op.start + op.count; i++) {
        const ref = base[i] as ChunkRef;
        if (this.copiedFrom && this.chunks.length < this.copiedFrom.length) {
          this.copiedFrom[this.chunks.length] = this.baseOffsets?.[i] ?? -1;
        }
        this.add(ref.id, ref.length);
      }
    }
  }

  /** MANIFEST_END: check the list, then ask for the chunks the store lacks. */
  async end(): Promise<void> {
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
    const baseSize = this.baseOffsets?.[this.baseOffsets.length - 1];
    const source =
      this.copiedFrom && baseSize !== undefined
        ? { path: this.begin.path, size: baseSize, offsets: this.copiedFrom }
        : null;
    this.assembler = new Assembler(this.ctx.mirror, this.ctx.history, this.chunks, this.ctx.budget, source);
    await this.offerBases(needed);
    this.sendNeed(needed);
    // Assembling a large file takes a while: it must not hold up the connection's other frames.
    if (needed.length === 0) this.ctx.track(this.commit());
  }

  async chunk(index: number, data: Buffer): Promise<void> {
    if (!this.needed) throw this.violation("a CHUNK arrived before MANIFEST_END");
    if (this.failed) return;
    if (this.nextNeeded >= this.needed.length || this.needed[this.nextNeeded] !== index) {
      throw this.violation(`CHUNK ${index} was not the next one the server asked for`);
    }
    this.nextNeeded++;
    await this.accept(index, data);
  }

  /** CHUNK_DELTA: a needed chunk as a delta of the basis offered for it. */
  async chunkDelta(index: number, ops: Buffer): Promise<void> {
    if (!this.needed) throw this.violation("a CHUNK_DELTA arrived before MANIFEST_END");
    if (this.failed) return;
    if (this.nextNeeded >= this.needed.length || this.needed[this.nextNeeded] !== index) {
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
    await this.accept(index, data);
  }

  /** A needed chunk's bytes arrived (in the order asked): check, store and write them. */
  private async accept(index: number, data: Buffer): Promise<void> {
    const needed = this.needed as Uint32Array;
    const ref = this.chunks.at(index);
    if (data.length !== ref.length || !createHash("sha256").update(data).digest().equals(ref.id)) {
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
    if (this.nextNeeded === needed.length) this.ctx.track(this.commit());
  }

  /**
   * Send a BASIS for each needed chunk that replaces a chunk of the base (version 4, an
   * edit needing few chunks): the base's chunk where the new one stands, placed by the
   * nearest chunk copied from the base before it (else after it).
   */
  private async offerBases(needed: Uint32Array): Promise<void> {
    const base = this.base;
    const copied = this.copiedFrom;
    const offsets = this.baseOffsets;
    if (this.ctx.protocolVersion < 4 || !base || !copied || !offsets || needed.length > MAX_BASES) return;
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
      let basisIndex = -1;
      for (let d = 1; d <= BASIS_REACH && basisIndex < 0; d++) {
        const before = copied[index - d] ?? -1;
        const after = copied[index + d] ?? -1;
        if (index - d >= 0 && before >= 0) basisIndex = baseIndexAt(before) + d;
        else if (after >= 0) basisIndex = baseIndexAt(after) - d;
      }
      const basisRef = base[basisIndex];
      if (!basisRef) continue;
      let basis: Buffer;
      try {
        basis = await this.ctx.history.chunks.get(basisRef.id);
      } catch {
        continue; // A chunk that cannot be read is no basis; the chunk travels whole.
      }
      const { length, sums } = blockSums(basis, DELTA_BLOCK_BYTES);
      this.bases.set(index, basisRef.id);
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

  /** Give back the manifest memory (at the end, or when the connection closes). */
  releaseMemory(): void {
    if (this.reserved === 0) return;
    this.ctx.manifestBudget.give(this.reserved);
    this.reserved = 0;
    this.base = null;
    this.baseOffsets = null;
    this.copiedFrom = null;
    this.chunks.clear();
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

  private sendNeed(needed: Uint32Array): void {
    const ranges: [number, number][] = [];
    for (const index of needed) {
      const last = ranges[ranges.length - 1];
      if (last && last[0] + last[1] === index) last[1]++;
      else ranges.push([index, 1]);
    }
    for (let i = 0; i === 0 || i < ranges.length; i += RANGES_PER_NEED) {
      const part = ranges.slice(i, i + RANGES_PER_NEED);
      const last = i + RANGES_PER_NEED >= ranges.length;
      this.ctx.send(MessageType.NEED, this.id, encodeHistory.need({ last, ranges: part }));
    }
  }

  /**
   * Refuse the request. Before MANIFEST_END the client still ends it (MANIFEST_END or
   * PUT_ABORT); after it the ERROR ends it, and chunks already on their way are ignored.
   */
  private fail(error: KeepwatchError): void {
    this.failed = true;
    this.ended = this.needed !== null;
    this.releaseMemory();
    this.ctx.reject(this.id, error, !this.ended);
  }

  private violation(what: string): ProtocolError {
    return new ProtocolError("KW_BAD_MESSAGE", `Manifest request ${this.id} broke the protocol: ${what}.`);
  }
}
