// A chunk's fingerprint: the 64-bit xxHash (XXH64, seed 0) of its bytes, four times cheaper
// than its SHA-256 on this machine (docs/performance.md). The client keeps one per chunk of
// each large file it backed up, beside the chunk list, for one use only: when it reads an
// edited file again, a chunk whose bytes still have the old chunk's length and fingerprint
// is taken to be that chunk, without its SHA-256 (rechunk.ts). A fingerprint is never an
// identity and never travels: chunk ids on the wire and in the store stay SHA-256.
//
// A fingerprint can lie (two contents, one fingerprint), and nothing in a file's bytes keeps
// a hostile one from doing so on purpose. The whole-file SHA-256, taken by the client over
// every byte it read and checked by the server over the version it assembles, catches it:
// the server refuses the version (KW_HASH_MISMATCH), nothing is stored or acknowledged, and
// the client forgets that file's fingerprints and reads it again with SHA-256 alone
// (docs/decisions.md, "Fingerprints of chunks on the client").

import xxhash from "xxhash-wasm";

export type Fingerprint = (bytes: Uint8Array) => bigint;

let loading: Promise<Fingerprint | null> | null = null;

/**
 * The fingerprint function (its WebAssembly is compiled once, on first use), or null where
 * WebAssembly cannot run (`node --jitless`): chunks are then compared by SHA-256 alone.
 */
export function fingerprints(): Promise<Fingerprint | null> {
  loading ??= xxhash().then(
    ({ h64Raw }) =>
      (bytes: Uint8Array) =>
        h64Raw(bytes),
    () => null,
  );
  return loading;
}
