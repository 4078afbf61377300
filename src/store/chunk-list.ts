// A content's chunk list held compactly: 36 bytes a chunk (its 32-byte id and a u32
// length) in two growing arrays, instead of an object and a Buffer per chunk (~250
// bytes). A manifest of the largest file the protocol allows (4,194,304 chunks) then
// takes about 150 MiB while it is checked, instead of about a gigabyte.

import type { ChunkRef } from "./metadata-store.js";

const ID_BYTES = 32;
const FIRST_CAPACITY = 1024;

export class ChunkList implements Iterable<ChunkRef> {
  private ids: Buffer;
  private lengths: Uint32Array;
  private count = 0;

  /** `expected`: how many chunks will come (room grows up to it, then beyond if need be). */
  constructor(private readonly expected = FIRST_CAPACITY) {
    const capacity = Math.max(1, Math.min(expected, FIRST_CAPACITY));
    this.ids = Buffer.alloc(capacity * ID_BYTES);
    this.lengths = new Uint32Array(capacity);
  }

  get length(): number {
    return this.count;
  }

  push(id: Buffer, length: number): void {
    if (id.length !== ID_BYTES) throw new Error(`a chunk id has ${ID_BYTES} bytes, not ${id.length}`);
    if (this.count === this.lengths.length) this.grow();
    id.copy(this.ids, this.count * ID_BYTES);
    this.lengths[this.count] = length;
    this.count++;
  }

  /** The id of chunk `index`: a view into the list, valid until the list is cleared. */
  id(index: number): Buffer {
    this.check(index);
    return this.ids.subarray(index * ID_BYTES, (index + 1) * ID_BYTES);
  }

  lengthOf(index: number): number {
    this.check(index);
    return this.lengths[index] as number;
  }

  at(index: number): ChunkRef {
    return { id: this.id(index), length: this.lengthOf(index) };
  }

  /**
   * 1 for each chunk whose id did not occur earlier in the list, 0 for repeats. Sorts an
   * index (4 bytes a chunk) rather than hashing ids into a set (~100 bytes a chunk).
   */
  firstOccurrences(): Uint8Array {
    const order = new Uint32Array(this.count);
    for (let i = 0; i < this.count; i++) order[i] = i;
    const ids = this.ids;
    order.sort(
      (a, b) => ids.compare(ids, b * ID_BYTES, (b + 1) * ID_BYTES, a * ID_BYTES, (a + 1) * ID_BYTES) || a - b,
    );
    const first = new Uint8Array(this.count);
    for (let k = 0; k < this.count; k++) {
      const i = order[k] as number;
      const previous = k > 0 ? (order[k - 1] as number) : -1;
      const repeat =
        previous >= 0 &&
        ids.compare(ids, previous * ID_BYTES, (previous + 1) * ID_BYTES, i * ID_BYTES, (i + 1) * ID_BYTES) ===
          0;
      first[i] = repeat ? 0 : 1;
    }
    return first;
  }

  *[Symbol.iterator](): Iterator<ChunkRef> {
    for (let i = 0; i < this.count; i++) yield this.at(i);
  }

  /** Drop every chunk and give the memory back. */
  clear(): void {
    this.count = 0;
    this.ids = Buffer.alloc(0);
    this.lengths = new Uint32Array(0);
  }

  private grow(): void {
    const capacity = Math.max(
      1,
      this.lengths.length < this.expected
        ? Math.min(this.expected, this.lengths.length * 2)
        : this.lengths.length * 2,
    );
    const ids = Buffer.alloc(capacity * ID_BYTES);
    this.ids.copy(ids);
    const lengths = new Uint32Array(capacity);
    lengths.set(this.lengths);
    this.ids = ids;
    this.lengths = lengths;
  }

  private check(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new RangeError(`chunk ${index} of a list of ${this.count}`);
    }
  }
}
