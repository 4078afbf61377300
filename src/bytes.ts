// Bytes that may come in parts: a chunk as the reads from a socket carried it, a frame's
// payload sent without its pieces being joined first. Neither the protocol nor the store
// copies them into one buffer unless it has to.

/** Bytes in one buffer, or in parts whose concatenation they are. */
export type Bytes = Buffer | readonly Buffer[];

/** The parts of `bytes` (one part for a buffer). */
export function partsOf(bytes: Bytes): readonly Buffer[] {
  return Buffer.isBuffer(bytes) ? [bytes] : bytes;
}

/** How many bytes `parts` hold together. */
export function bytesOf(parts: readonly Buffer[]): number {
  let length = 0;
  for (const part of parts) length += part.length;
  return length;
}
