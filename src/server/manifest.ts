// The manifest request: the client describes a file as a list of chunks (as edits of a
// base content the server holds), the server answers with the chunks it lacks, and only
// those travel. Then the version is assembled, checked, committed and mirrored.

import { createHash } from "node:crypto";
import { KeepwatchError, ProtocolError } from "../errors.js";
import {
  encodeHistory,
  MAX_CHUNKS_PER_FILE,
  type ManifestBegin,
  type ManifestOp,
} from "../protocol/history-messages.js";
import { MessageType } from "../protocol/messages.js";
import { pathProblem } from "../protocol/paths.js";
import type { ChunkRef } from "../store/metadata-store.js";
import { ioError } from "./put.js";
import { commitFromHistory } from "./put-ref.js";
import type { RequestContext } from "./session.js";

/** Index ranges per NEED frame (8 bytes each), well within the smallest allowed frame. */
const RANGES_PER_NEED = 4096;

export class ManifestRequest {
  private base: ChunkRef[] | null = null;
  private readonly chunks: ChunkRef[] = [];
  private total = 0;
  /** After MANIFEST_END: the indices still to come, in the order the client sends them. */
  private needed: number[] | null = null;
  private nextNeeded = 0;
  /** Set once an ERROR was sent; later frames are swallowed until the request ends. */
  private failed = false;
  private ended = false;

  constructor(
    private readonly id: number,
    private readonly begin: ManifestBegin,
    private readonly ctx: RequestContext,
  ) {}

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
    if (this.begin.base.length > 0) {
      this.base = await this.ctx.reuseScope().content(this.begin.base);
      if (!this.base) {
        this.fail(
          new KeepwatchError(
            "KW_CONTENT_UNKNOWN",
            `The server no longer holds the base of ${JSON.stringify(this.begin.path)}; send the manifest without it.`,
          ),
        );
      }
    }
    this.ctx.reporter.emit({ kind: "file-start", path: this.begin.path, size: this.begin.size });
  }

  data(ops: ManifestOp[]): void {
    if (this.needed) throw this.violation("MANIFEST_DATA arrived after MANIFEST_END");
    if (this.failed) return;
    for (const op of ops) {
      if (op.op === "new") {
        this.add({ id: op.id, length: op.length });
        continue;
      }
      const base = this.base ?? [];
      if (op.start + op.count > base.length) {
        throw this.violation(`a COPY op reaches chunk ${op.start + op.count} of a base with ${base.length}`);
      }
      for (let i = op.start; i < op.start + op.count; i++) this.add(base[i] as ChunkRef);
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
    const needed: number[] = [];
    const asked = new Set<string>();
    // Chunks the store holds for other clients' sets are asked for all the same (access.ts).
    const scope = this.ctx.reuseScope();
    for (let i = 0; i < this.chunks.length; i++) {
      const ref = this.chunks[i] as ChunkRef;
      const key = ref.id.toString("hex");
      // A chunk that occurs twice in the file travels once.
      if (asked.has(key) || (await scope.chunk(ref.id))) continue;
      asked.add(key);
      needed.push(i);
    }
    this.needed = needed;
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
    const ref = this.chunks[index] as ChunkRef;
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
    this.ctx.reporter.emit({
      kind: "file-progress",
      path: this.begin.path,
      bytes: this.nextNeeded,
      size: this.needed.length,
    });
    if (this.nextNeeded === this.needed.length) this.ctx.track(this.commit());
  }

  /** PUT_ABORT: the client gave up (the file changed while it re-read it). */
  abort(): void {
    this.ended = true;
    if (this.failed) this.ctx.release(this.id);
    else this.ctx.ack(this.id);
  }

  get isEnded(): boolean {
    return this.ended;
  }

  private async commit(): Promise<void> {
    this.ended = true;
    try {
      await commitFromHistory(this.ctx, this.begin, this.chunks);
    } catch (error) {
      this.ctx.reject(this.id, ioError(error, this.begin.path));
      return;
    }
    const { path, size } = this.begin;
    this.ctx.reporter.emit({ kind: "file-done", path, op: "put", size, set: this.ctx.set });
    this.ctx.ack(this.id);
  }

  private add(ref: ChunkRef): void {
    if (this.chunks.length >= Math.min(this.begin.chunkCount, MAX_CHUNKS_PER_FILE)) {
      throw this.violation(`the manifest has more than the ${this.begin.chunkCount} chunks announced`);
    }
    this.chunks.push(ref);
    this.total += ref.length;
  }

  private sendNeed(needed: number[]): void {
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
    this.ctx.reject(this.id, error, !this.ended);
  }

  private violation(what: string): ProtocolError {
    return new ProtocolError("KW_BAD_MESSAGE", `Manifest request ${this.id} broke the protocol: ${what}.`);
  }
}
