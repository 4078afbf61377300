// A content's chunk list held compactly, on both sides: per chunk a 36-byte entry (its
// 32-byte id and a big-endian u32 length, the very form the client keeps in its state) and,
// where the list has them, an 8-byte fingerprint (fingerprint.ts), instead of an object and
// a Buffer per chunk (about 140 bytes, 170 with a fingerprint). The largest file the protocol
// allows (4,194,304 chunks) then takes about 150 MiB on the server while its manifest is
// checked, and an edit of a 64 GiB file (about a million chunks) about 100 MiB on the client,
// its old list, its new one and the index together (docs/performance.md).

/** One chunk of a content, in file order. */
export interface ChunkRef {
  id: Buffer;
  length: number;
  /** The chunk's fingerprint, where the list has them. */
  mark?: bigint;
}

const ID_BYTES = 32;
/** Bytes of an entry: the id, then the length. */
export const ENTRY_BYTES = ID_BYTES + 4;
/** Bytes of one fingerprint. */
export const MARK_BYTES = 8;
const FIRST_CAPACITY = 1024;

export class ChunkList implements Iterable<ChunkRef> {
  private entries: Buffer;
  /** The fingerprints, in list order; null in a list without them. */
  private marks: Buffer | null;
  private count: number;
  /** Where each id first occurs (see indexOf), made on first use, dropped on a push. */
  private index: Int32Array | null = null;

  /**
   * An empty list. `expected`: how many chunks will come (room grows up to it, then beyond
   * if need be); `withMarks`: whether every chunk pushed comes with its fingerprint.
   */
  constructor(
    private readonly expected = FIRST_CAPACITY,
    withMarks = false,
  ) {
    const capacity = Math.max(1, Math.min(expected, FIRST_CAPACITY));
    this.entries = Buffer.alloc(capacity * ENTRY_BYTES);
    this.marks = withMarks ? Buffer.alloc(capacity * MARK_BYTES) : null;
    this.count = 0;
  }

  /**
   * The list stored as `entries` (see `stored`), with the fingerprints `marks` when they fit
   * it (else without). The list is a view: it copies nothing until it grows.
   */
  static fromStored(entries: Buffer, marks: Buffer | null = null): ChunkList {
    if (entries.length % ENTRY_BYTES !== 0) {
      throw new RangeError(
        `a stored chunk list has a multiple of ${ENTRY_BYTES} bytes, not ${entries.length}`,
      );
    }
    const count = entries.length / ENTRY_BYTES;
    const list = new ChunkList(Math.max(1, count));
    list.entries = entries;
    list.marks = marks !== null && count > 0 && marks.length === count * MARK_BYTES ? marks : null;
    list.count = count;
    return list;
  }

  get length(): number {
    return this.count;
  }

  /** Whether every chunk of the list has its fingerprint. */
  get hasMarks(): boolean {
    return this.marks !== null && this.count > 0;
  }

  push(id: Buffer, length: number, mark?: bigint): void {
    if (id.length !== ID_BYTES) throw new Error(`a chunk id has ${ID_BYTES} bytes, not ${id.length}`);
    if ((mark !== undefined) !== (this.marks !== null)) {
      throw new Error(
        this.marks ? "this list needs each chunk's fingerprint" : "this list keeps no fingerprints",
      );
    }
    if (this.count * ENTRY_BYTES === this.entries.length) this.grow();
    const at = this.count * ENTRY_BYTES;
    id.copy(this.entries, at);
    this.entries.writeUInt32BE(length, at + ID_BYTES);
    if (mark !== undefined) this.marks?.writeBigUInt64BE(mark, this.count * MARK_BYTES);
    this.count++;
    this.index = null;
  }

  /**
   * Set every chunk's id at once, from `ids` (32 bytes each, in list order): for a list
   * whose lengths and fingerprints were known before the ids (pushed with any id).
   */
  setIds(ids: Buffer): void {
    if (ids.length !== this.count * ID_BYTES) {
      throw new RangeError(`${ids.length / ID_BYTES} chunk ids for a list of ${this.count}`);
    }
    for (let i = 0; i < this.count; i++) {
      ids.copy(this.entries, i * ENTRY_BYTES, i * ID_BYTES, (i + 1) * ID_BYTES);
    }
    this.index = null;
  }

  /** The id of chunk `index`: a view into the list, valid while the list does not grow. */
  id(index: number): Buffer {
    this.check(index);
    return this.entries.subarray(index * ENTRY_BYTES, index * ENTRY_BYTES + ID_BYTES);
  }

  lengthOf(index: number): number {
    this.check(index);
    return this.entries.readUInt32BE(index * ENTRY_BYTES + ID_BYTES);
  }

  /** The fingerprint of chunk `index`, or undefined in a list without them. */
  markOf(index: number): bigint | undefined {
    this.check(index);
    return this.marks?.readBigUInt64BE(index * MARK_BYTES);
  }

  at(index: number): ChunkRef {
    const ref: ChunkRef = { id: this.id(index), length: this.lengthOf(index) };
    if (this.marks) ref.mark = this.markOf(index);
    return ref;
  }

  /** Whether chunk `index`'s id is `id`. */
  idEquals(index: number, id: Buffer): boolean {
    this.check(index);
    const at = index * ENTRY_BYTES;
    return id.length === ID_BYTES && id.compare(this.entries, at, at + ID_BYTES) === 0;
  }

  /**
   * The first index of a chunk whose id is `id`, or −1. The index behind it is a hash table
   * of 8 bytes a chunk keyed by the id's first four bytes, which is sound for ids that are
   * SHA-256s of the content, as on the client, which hashed them itself; a list of ids
   * someone else chose (a manifest on the server) could make every key the same and this
   * quadratic, so the server uses firstOccurrences, which sorts.
   */
  indexOf(id: Buffer): number {
    if (id.length !== ID_BYTES || this.count === 0) return -1;
    const slots = this.index ?? this.buildIndex();
    const mask = slots.length - 1;
    for (let slot = id.readUInt32LE(0) & mask; ; slot = (slot + 1) & mask) {
      const found = (slots[slot] as number) - 1;
      if (found < 0) return -1;
      if (this.idEquals(found, id)) return found;
    }
  }

  /**
   * 1 for each chunk whose id did not occur earlier in the list, 0 for repeats. Sorts an
   * index (4 bytes a chunk), whatever the ids (see indexOf).
   */
  firstOccurrences(): Uint8Array {
    const order = new Uint32Array(this.count);
    for (let i = 0; i < this.count; i++) order[i] = i;
    const entries = this.entries;
    const compare = (a: number, b: number) =>
      entries.compare(
        entries,
        b * ENTRY_BYTES,
        b * ENTRY_BYTES + ID_BYTES,
        a * ENTRY_BYTES,
        a * ENTRY_BYTES + ID_BYTES,
      );
    order.sort((a, b) => compare(a, b) || a - b);
    const first = new Uint8Array(this.count);
    for (let k = 0; k < this.count; k++) {
      const i = order[k] as number;
      first[i] = k > 0 && compare(order[k - 1] as number, i) === 0 ? 0 : 1;
    }
    return first;
  }

  /** The bytes of all the chunks together (the content's size). */
  totalLength(): number {
    let total = 0;
    for (let i = 0; i < this.count; i++) total += this.lengthOf(i);
    return total;
  }

  /** Where chunk i starts in the file, for every i. */
  offsets(): Float64Array {
    const offsets = new Float64Array(this.count);
    let at = 0;
    for (let i = 0; i < this.count; i++) {
      offsets[i] = at;
      at += this.lengthOf(i);
    }
    return offsets;
  }

  /** The list as stored (ENTRY_BYTES a chunk): a view, valid while the list does not grow. */
  stored(): Buffer {
    return this.entries.subarray(0, this.count * ENTRY_BYTES);
  }

  /** The fingerprints as stored (MARK_BYTES a chunk, big-endian), or null without them. */
  storedMarks(): Buffer | null {
    return this.hasMarks && this.marks ? this.marks.subarray(0, this.count * MARK_BYTES) : null;
  }

  /** Bytes the list holds (entries, fingerprints and index, with the room to grow). */
  get heldBytes(): number {
    return this.entries.length + (this.marks?.length ?? 0) + (this.index?.byteLength ?? 0);
  }

  *[Symbol.iterator](): Iterator<ChunkRef> {
    for (let i = 0; i < this.count; i++) yield this.at(i);
  }

  /** Drop every chunk and give the memory back. */
  clear(): void {
    this.count = 0;
    this.entries = Buffer.alloc(0);
    if (this.marks) this.marks = Buffer.alloc(0);
    this.index = null;
  }

  private grow(): void {
    const room = this.entries.length / ENTRY_BYTES;
    const capacity = Math.max(1, room < this.expected ? Math.min(this.expected, room * 2) : room * 2);
    const entries = Buffer.alloc(capacity * ENTRY_BYTES);
    this.entries.copy(entries, 0, 0, this.count * ENTRY_BYTES);
    this.entries = entries;
    if (this.marks) {
      const marks = Buffer.alloc(capacity * MARK_BYTES);
      this.marks.copy(marks, 0, 0, this.count * MARK_BYTES);
      this.marks = marks;
    }
  }

  /** Open addressing, at most half full: slot → 1 + the first index of an id. */
  private buildIndex(): Int32Array {
    let size = 2;
    while (size < this.count * 2) size *= 2;
    const slots = new Int32Array(size);
    const mask = size - 1;
    for (let i = 0; i < this.count; i++) {
      const at = i * ENTRY_BYTES;
      for (let slot = this.entries.readUInt32LE(at) & mask; ; slot = (slot + 1) & mask) {
        const held = (slots[slot] as number) - 1;
        if (held < 0) {
          slots[slot] = i + 1;
          break;
        }
        if (
          this.entries.compare(
            this.entries,
            at,
            at + ID_BYTES,
            held * ENTRY_BYTES,
            held * ENTRY_BYTES + ID_BYTES,
          ) === 0
        )
          break;
      }
    }
    this.index = slots;
    return slots;
  }

  private check(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new RangeError(`chunk ${index} of a list of ${this.count}`);
    }
  }
}
