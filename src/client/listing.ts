// A folder's names in the state's order (UTF-8 bytes), read a slice at a time in bounded
// memory, and a list of names that goes to disk once it is long. A folder of a million
// entries is never held whole: its names are sorted in runs of `runSize`, each run written
// to a scratch file, and the runs merged as the scan asks for names.

import { randomBytes } from "node:crypto";
import type { Dir } from "node:fs";
import { type FileHandle, open, opendir, readdir, unlink } from "node:fs/promises";
import { join } from "node:path";

/** Names held in memory before a folder's listing is sorted in runs on disk (about 5 MiB). */
export const LISTING_RUN = 65_536;

/** Subfolder paths held in memory before the rest go to disk. */
export const SPILL_LIST_MEMORY = 4_096;

/** Bytes read at a time from each run while they are merged. */
const READ_BLOCK = 32 * 1024;

/**
 * Order of UTF-8 bytes (code points), as SQLite compares paths; JavaScript's own order is
 * of UTF-16 units, which puts characters beyond U+FFFF before U+E000–U+FFFF.
 */
export function byUtf8(a: string, b: string): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return utf8Rank(x) - utf8Rank(y);
  }
  return a.length - b.length;
}

/** A UTF-16 unit's place in code point order: surrogates (of U+10000 and above) go last. */
function utf8Rank(unit: number): number {
  if (unit < 0xd800) return unit;
  return unit < 0xe000 ? unit + 0x2000 : unit - 0x800;
}

/**
 * A scratch file of NUL-separated names (a name never holds a NUL). It is unlinked as soon as
 * it is opened: nothing is left behind, whatever ends the process.
 */
class ScratchFile {
  private size = 0;

  private constructor(private readonly handle: FileHandle) {}

  static async open(folder: string): Promise<ScratchFile> {
    const path = join(folder, `.keepwatch-scratch-${process.pid}-${randomBytes(6).toString("hex")}`);
    const handle = await open(path, "wx+", 0o600);
    await unlink(path).catch(async (error: unknown) => {
      await handle.close();
      throw error;
    });
    return new ScratchFile(handle);
  }

  /** Appends `names`; returns where they lie. */
  async append(names: string[]): Promise<{ start: number; end: number }> {
    const bytes = Buffer.from(names.length === 0 ? "" : `${names.join("\0")}\0`, "utf8");
    const start = this.size;
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done, start + done);
      done += bytesWritten;
    }
    this.size += bytes.length;
    return { start, end: this.size };
  }

  /** The names written between `start` and `end`, in order, a block at a time. */
  reader(start: number, end: number): NameReader {
    return new NameReader(this.handle, start, end);
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

class NameReader {
  private pending: string[] = [];
  private index = 0;
  private carry: Buffer = Buffer.alloc(0);

  constructor(
    private readonly handle: FileHandle,
    private position: number,
    private readonly end: number,
  ) {}

  /** The next name, or undefined after the last. */
  async next(): Promise<string | undefined> {
    while (this.index >= this.pending.length) {
      if (this.position >= this.end) return undefined;
      const block = Buffer.allocUnsafe(Math.min(READ_BLOCK, this.end - this.position));
      let got = 0;
      while (got < block.length) {
        const { bytesRead } = await this.handle.read(block, got, block.length - got, this.position + got);
        if (bytesRead === 0) throw new Error("a scratch file of the listing ended early");
        got += bytesRead;
      }
      this.position += got;
      const bytes = this.carry.length > 0 ? Buffer.concat([this.carry, block]) : block;
      const lastNul = bytes.lastIndexOf(0);
      // Every name ends with a NUL, so the range's last block always ends with one.
      this.carry = Buffer.from(bytes.subarray(lastNul + 1));
      this.pending = lastNul < 0 ? [] : bytes.toString("utf8", 0, lastNul).split("\0");
      this.index = 0;
    }
    return this.pending[this.index++];
  }
}

/** A scratch file could not be opened or written. */
class ScratchFailure extends Error {
  constructor(cause: unknown) {
    super("a scratch file of the listing could not be written", { cause });
  }
}

/** One sorted run being merged, with its next name. */
interface Run {
  head: string;
  reader: NameReader;
}

/**
 * The names of one folder in `byUtf8` order. Up to `runSize` names are held and sorted in
 * memory; a larger folder is sorted in runs written to an unlinked scratch file in
 * `scratchFolder`, which are merged as names are asked for.
 */
export class FolderListing {
  private sorted: string[] = [];
  private position = 0;
  private heap: Run[] = [];
  private scratch: ScratchFile | null = null;
  private runs = 0;

  private constructor() {}

  /**
   * Reads the folder's names (errors of `opendir` and of reading it reach the caller). Where
   * the scratch file cannot be written (a full disk, say), the folder is read again and held
   * in memory whatever its size: a backup that takes more memory, rather than none.
   */
  static async open(path: string, scratchFolder: string, runSize = LISTING_RUN): Promise<FolderListing> {
    const listing = new FolderListing();
    const dir = await opendir(path, { bufferSize: 1024 });
    try {
      await listing.fill(dir, scratchFolder, runSize);
    } catch (error) {
      await listing.close();
      if (!(error instanceof ScratchFailure)) throw error;
      const held = new FolderListing();
      held.sorted = (await readdir(path)).sort(byUtf8);
      return held;
    } finally {
      await dir.close().catch(() => {});
    }
    return listing;
  }

  private async fill(dir: Dir, scratchFolder: string, runSize: number): Promise<void> {
    const runs: { start: number; end: number }[] = [];
    let names: string[] = [];
    const spill = async (sorted: string[]) => {
      try {
        this.scratch ??= await ScratchFile.open(scratchFolder);
        runs.push(await this.scratch.append(sorted));
      } catch (error) {
        throw new ScratchFailure(error);
      }
    };
    for (let entry = await dir.read(); entry !== null; entry = await dir.read()) {
      names.push(entry.name);
      if (names.length < runSize) continue;
      await spill(names.sort(byUtf8));
      names = [];
    }
    names.sort(byUtf8);
    if (this.scratch === null) {
      this.sorted = names;
      return;
    }
    if (names.length > 0) await spill(names);
    this.runs = runs.length;
    for (const { start, end } of runs) {
      const reader = this.scratch.reader(start, end);
      const head = await reader.next();
      if (head !== undefined) this.push({ head, reader });
    }
  }

  /** How many sorted runs went to disk (0: the folder was held in memory). */
  get runsOnDisk(): number {
    return this.runs;
  }

  /** True once every name has been returned. */
  get exhausted(): boolean {
    return this.scratch === null ? this.position >= this.sorted.length : this.heap.length === 0;
  }

  /** The next names, at most `max`, in order; fewer only when the listing ends. */
  async next(max: number): Promise<string[]> {
    if (this.scratch === null) {
      const slice = this.sorted.slice(this.position, this.position + max);
      this.position += slice.length;
      if (this.exhausted) this.sorted = [];
      return slice;
    }
    const out: string[] = [];
    while (out.length < max && this.heap.length > 0) {
      const top = this.heap[0] as Run;
      out.push(top.head);
      const head = await top.reader.next();
      if (head === undefined) {
        const last = this.heap.pop() as Run;
        if (this.heap.length > 0) {
          this.heap[0] = last;
          this.siftDown(0);
        }
      } else {
        top.head = head;
        this.siftDown(0);
      }
    }
    return out;
  }

  async close(): Promise<void> {
    this.sorted = [];
    this.heap = [];
    const scratch = this.scratch;
    this.scratch = null;
    await scratch?.close();
  }

  private push(run: Run): void {
    const heap = this.heap;
    heap.push(run);
    for (let i = heap.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1;
      if (byUtf8((heap[parent] as Run).head, run.head) <= 0) break;
      heap[i] = heap[parent] as Run;
      heap[parent] = run;
      i = parent;
    }
  }

  private siftDown(from: number): void {
    const heap = this.heap;
    for (let i = from; ; ) {
      const left = 2 * i + 1;
      if (left >= heap.length) return;
      const right = left + 1;
      const child =
        right < heap.length && byUtf8((heap[right] as Run).head, (heap[left] as Run).head) < 0 ? right : left;
      if (byUtf8((heap[i] as Run).head, (heap[child] as Run).head) <= 0) return;
      const swap = heap[i] as Run;
      heap[i] = heap[child] as Run;
      heap[child] = swap;
      i = child;
    }
  }
}

/**
 * A list of names appended in order and read back once in that order: the first `memory`
 * are held in memory, the rest go to an unlinked scratch file in `scratchFolder`, a batch
 * of `memory` at a time.
 */
export class SpillList {
  private held: string[] = [];
  private scratch: ScratchFile | null = null;
  private onDisk: { start: number; end: number } | null = null;
  private failed = false;

  constructor(
    private readonly scratchFolder: string,
    private readonly memory = SPILL_LIST_MEMORY,
  ) {}

  /**
   * Where the scratch file cannot be opened or written (a full disk, say), the names stay in
   * memory from then on: a backup that takes more memory, rather than none.
   */
  async push(name: string): Promise<void> {
    this.held.push(name);
    if (this.held.length < this.memory || this.failed) return;
    try {
      this.scratch ??= await ScratchFile.open(this.scratchFolder);
      const written = await this.scratch.append(this.held);
      this.onDisk = { start: this.onDisk?.start ?? written.start, end: written.end };
      this.held = [];
    } catch {
      this.failed = true;
    }
  }

  /** Every name pushed, in order; the list is closed after (or when the loop ends early). */
  async *drain(): AsyncGenerator<string> {
    try {
      if (this.scratch !== null && this.onDisk !== null) {
        const reader = this.scratch.reader(this.onDisk.start, this.onDisk.end);
        for (let name = await reader.next(); name !== undefined; name = await reader.next()) yield name;
      }
      const held = this.held;
      this.held = [];
      yield* held;
    } finally {
      await this.close();
    }
  }

  async close(): Promise<void> {
    this.held = [];
    const scratch = this.scratch;
    this.scratch = null;
    await scratch?.close();
  }
}
