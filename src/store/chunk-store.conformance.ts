// The one test suite every ChunkStore must pass (local disk now, S3 later, the in-memory
// store for other packages' tests). A store's own file calls runChunkStoreConformance with
// a way to open a fresh store, then adds the cases only that store has.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { open } from "node:fs/promises";
import { describe, test } from "node:test";
import { KeepwatchError } from "../errors.js";
import type { ChunkId, ChunkStore } from "./chunk-store.js";

export interface ChunkStoreFixture {
  store: ChunkStore;
  /**
   * Open the same storage again, as after a restart. The suite has closed `store` (and any
   * store an earlier reopen returned) before it calls this. Omit for stores that keep
   * nothing across a restart.
   */
  reopen?: () => Promise<ChunkStore>;
  /** Close whatever is still open and remove everything the fixture created. */
  cleanup(): Promise<void>;
}

export interface Chunk {
  id: ChunkId;
  data: Buffer;
}

export function chunkOf(data: Buffer): Chunk {
  return { id: createHash("sha256").update(data).digest(), data };
}

const WORDS = "the of and to in is that it for was on are as with his they at be this from have or by".split(
  " ",
);

/** `length` bytes of English-like words: compressible, yet different every call. */
export function textBytes(length: number): Buffer {
  const parts: string[] = [];
  let size = 0;
  while (size < length) {
    const word = WORDS[Math.floor(Math.random() * WORDS.length)] as string;
    const piece = Math.random() < 0.1 ? `${word}${Math.floor(Math.random() * 1e6)}. ` : `${word} `;
    parts.push(piece);
    size += piece.length;
  }
  return Buffer.from(parts.join("")).subarray(0, length);
}

/** A chunk of `length` bytes, incompressible or text-like. */
export function makeChunk(length: number, kind: "random" | "text" = "random"): Chunk {
  return chunkOf(kind === "random" ? randomBytes(length) : textBytes(length));
}

/**
 * Chunks of random sizes (64 bytes to `maxBytes`), alternately random and text-like. With
 * `edges`, the first ones take the sizes codecs and buffers get wrong (0, 1, 31, 32, 64 KiB…);
 * tiny chunks can repeat across calls, so only one call per test should ask for them.
 */
export function makeChunks(count: number, maxBytes: number, edges = false): Chunk[] {
  const edgeSizes = edges
    ? [0, 1, 2, 31, 32, 33, 4096, 65_535, 65_536, maxBytes].filter((n) => n <= maxBytes)
    : [];
  const out: Chunk[] = [];
  const seen = new Set<string>();
  for (let i = 0; out.length < count; i++) {
    const size =
      i < edgeSizes.length ? (edgeSizes[i] as number) : 64 + Math.floor(Math.random() * (maxBytes - 63));
    const chunk = makeChunk(size, i % 2 === 0 ? "random" : "text");
    const key = chunk.id.toString("hex");
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(chunk);
  }
  return out;
}

export async function listIds(store: ChunkStore): Promise<string[]> {
  const ids: string[] = [];
  for await (const id of store.list()) ids.push(id.toString("hex"));
  return ids.sort();
}

function hexSorted(chunks: Chunk[]): string[] {
  return chunks.map((c) => c.id.toString("hex")).sort();
}

export async function assertReadable(store: ChunkStore, chunks: Chunk[], label = ""): Promise<void> {
  for (const c of chunks) {
    const back = await store.get(c.id);
    assert.ok(back.equals(c.data), `${label}chunk of ${c.data.length} bytes reads back unchanged`);
  }
}

export async function assertMissing(store: ChunkStore, id: ChunkId): Promise<void> {
  assert.equal(await store.has(id), false);
  await assert.rejects(store.get(id), (error: unknown) => {
    assert.ok(error instanceof KeepwatchError, "a KeepwatchError");
    assert.equal(error.code, "KW_CHUNK_MISSING");
    return true;
  });
}

export function runChunkStoreConformance(name: string, open: () => Promise<ChunkStoreFixture>): void {
  /** Run `fn` on a fresh fixture; `current` follows reopens so cleanup closes the last one. */
  async function withStore(
    fn: (store: ChunkStore, reopen: (() => Promise<ChunkStore>) | undefined) => Promise<void>,
  ): Promise<void> {
    const fixture = await open();
    try {
      const { reopen } = fixture;
      let current = fixture.store;
      const reopenFresh = reopen
        ? async () => {
            await current.close();
            current = await reopen();
            return current;
          }
        : undefined;
      await fn(fixture.store, reopenFresh);
    } finally {
      await fixture.cleanup();
    }
  }

  describe(`ChunkStore conformance: ${name}`, () => {
    test("put then get returns the same bytes for sizes from 0 to 300 KiB, before and after flush", async () => {
      await withStore(async (store) => {
        const chunks = makeChunks(40, 300 * 1024, true);
        for (const c of chunks) await store.put(c.id, c.data);
        await assertReadable(store, chunks, "pending: ");
        await store.flush();
        await assertReadable(store, chunks, "flushed: ");
      });
    });

    test("a chunk put in parts (empty ones, cuts inside the sample) reads back as their concatenation", async () => {
      await withStore(async (store) => {
        const chunks = makeChunks(24, 300 * 1024, true);
        for (const [i, c] of chunks.entries()) {
          // Cut at 16 KiB (a TLS record's size), at odd places, and once not at all.
          const step = i % 3 === 0 ? 16 * 1024 : i % 3 === 1 ? 1000 + i : c.data.length + 1;
          const parts: Buffer[] = [Buffer.alloc(0)];
          for (let at = 0; at < c.data.length; at += step)
            parts.push(Buffer.from(c.data.subarray(at, at + step)));
          parts.push(Buffer.alloc(0));
          await store.put(c.id, parts);
          // Parts are not kept once put resolves.
          for (const part of parts) part.fill(0);
        }
        await assertReadable(store, chunks, "pending: ");
        await store.flush();
        await assertReadable(store, chunks, "flushed: ");
      });
    });

    test("put does not keep a reference to the caller's buffer", async () => {
      await withStore(async (store) => {
        const c = makeChunk(10_000, "text");
        const mine = Buffer.from(c.data);
        await store.put(c.id, mine);
        mine.fill(0);
        assert.ok((await store.get(c.id)).equals(c.data));
      });
    });

    test("put is idempotent and safe to call concurrently, for one id and for many", async () => {
      await withStore(async (store) => {
        const one = makeChunk(50_000, "text");
        const many = makeChunks(30, 40_000);
        await Promise.all([
          ...Array.from({ length: 16 }, () => store.put(one.id, one.data)),
          ...many.map((c) => store.put(c.id, c.data)),
          ...many.map((c) => store.put(c.id, c.data)),
        ]);
        await store.put(one.id, one.data);
        const all = [one, ...many];
        assert.equal((await store.stats()).chunks, all.length);
        assert.deepEqual(await listIds(store), hexSorted(all));
        await Promise.all([store.flush(), store.put(one.id, one.data), store.flush()]);
        assert.equal((await store.stats()).chunks, all.length);
        await assertReadable(store, all);
      });
    });

    test("has, list and stats describe exactly what was put, pending or flushed", async () => {
      await withStore(async (store) => {
        assert.deepEqual(await store.stats(), { chunks: 0, bytes: 0, storedBytes: 0 });
        assert.deepEqual(await listIds(store), []);
        const first = makeChunks(12, 100_000);
        const second = makeChunks(12, 100_000);
        assert.equal(await store.has(first[3]?.id as Buffer), false);
        for (const c of first) await store.put(c.id, c.data);
        await store.flush();
        for (const c of second) await store.put(c.id, c.data);
        const all = [...first, ...second];
        for (const c of all) assert.equal(await store.has(c.id), true);
        assert.deepEqual(await listIds(store), hexSorted(all));
        const stats = await store.stats();
        assert.equal(stats.chunks, all.length);
        assert.equal(
          stats.bytes,
          all.reduce((n, c) => n + c.data.length, 0),
        );
        assert.ok(stats.storedBytes > 0);
        await store.flush();
        assert.deepEqual(await store.stats(), stats, "flush changes no figure");
      });
    });

    test("list pages through many chunks without repeating one", async () => {
      await withStore(async (store) => {
        const chunks = Array.from({ length: 2500 }, () => makeChunk(40));
        for (const c of chunks.slice(0, 2000)) await store.put(c.id, c.data);
        await store.flush();
        for (const c of chunks.slice(2000)) await store.put(c.id, c.data);
        assert.deepEqual(await listIds(store), hexSorted(chunks));
      });
    });

    test("get of a chunk never put throws KW_CHUNK_MISSING", async () => {
      await withStore(async (store) => {
        const stored = makeChunk(1000);
        await store.put(stored.id, stored.data);
        await store.flush();
        await assertMissing(store, makeChunk(1000).id);
      });
    });

    test("after flush and reopen every chunk is there", async (t) => {
      await withStore(async (store, reopen) => {
        if (!reopen) return t.skip("this store keeps nothing across a restart");
        const chunks = makeChunks(30, 300 * 1024);
        for (const c of chunks) await store.put(c.id, c.data);
        await store.flush();
        const before = await store.stats();
        const again = await reopen();
        await assertReadable(again, chunks, "reopened: ");
        assert.deepEqual(await listIds(again), hexSorted(chunks));
        assert.deepEqual(await again.stats(), before);
      });
    });

    test("close makes what was put durable", async (t) => {
      await withStore(async (store, reopen) => {
        if (!reopen) return t.skip("this store keeps nothing across a restart");
        const chunks = makeChunks(10, 100_000);
        for (const c of chunks) await store.put(c.id, c.data);
        const again = await reopen();
        await assertReadable(again, chunks);
      });
    });

    test("delete removes exactly the given ids and keeps every other chunk readable, also after reopen", async () => {
      await withStore(async (store, reopen) => {
        const flushed = makeChunks(60, 120_000);
        const pending = makeChunks(12, 60_000);
        for (const c of flushed) await store.put(c.id, c.data);
        await store.flush();
        for (const c of pending) await store.put(c.id, c.data);
        const doomed = [...flushed.filter((_, i) => i % 3 === 0), ...pending.slice(0, 4)];
        const doomedKeys = new Set(doomed.map((c) => c.id.toString("hex")));
        const kept = [...flushed, ...pending].filter((c) => !doomedKeys.has(c.id.toString("hex")));

        await store.delete(doomed.map((c) => c.id));
        for (const c of doomed) await assertMissing(store, c.id);
        await assertReadable(store, kept, "after delete: ");
        assert.deepEqual(await listIds(store), hexSorted(kept));
        const stats = await store.stats();
        assert.equal(stats.chunks, kept.length);
        assert.equal(
          stats.bytes,
          kept.reduce((n, c) => n + c.data.length, 0),
        );

        if (!reopen) return;
        await store.flush();
        const again = await reopen();
        for (const c of doomed) await assertMissing(again, c.id);
        await assertReadable(again, kept, "reopened: ");
        assert.deepEqual(await listIds(again), hexSorted(kept));
        assert.equal((await again.stats()).chunks, kept.length);
      });
    });

    test("delete of ids not stored, repeated ids, or no ids at all is harmless", async () => {
      await withStore(async (store) => {
        const chunks = makeChunks(10, 50_000);
        for (const c of chunks) await store.put(c.id, c.data);
        await store.flush();
        const before = await store.stats();
        await store.delete([]);
        await store.delete([makeChunk(10).id, makeChunk(20).id]);
        assert.deepEqual(await store.stats(), before);
        const victim = chunks[4] as Chunk;
        await store.delete([victim.id, victim.id]);
        await store.delete([victim.id]);
        await assertMissing(store, victim.id);
        await assertReadable(
          store,
          chunks.filter((c) => c !== victim),
        );
        assert.equal((await store.stats()).chunks, chunks.length - 1);
      });
    });

    test("a deleted chunk can be put again", async () => {
      await withStore(async (store, reopen) => {
        const c = makeChunk(30_000, "text");
        await store.put(c.id, c.data);
        await store.flush();
        await store.delete([c.id]);
        await assertMissing(store, c.id);
        await store.put(c.id, c.data);
        await store.flush();
        assert.ok((await store.get(c.id)).equals(c.data));
        if (reopen) assert.ok((await (await reopen()).get(c.id)).equals(c.data));
      });
    });

    test("close may be called more than once, at once; the store refuses work afterwards", async () => {
      await withStore(async (store) => {
        const c = makeChunk(1000);
        await store.put(c.id, c.data);
        await Promise.all([store.close(), store.close()]);
        await store.close();
        await assert.rejects(async () => store.get(c.id));
        await assert.rejects(async () => store.put(c.id, c.data));
      });
    });

    test("reads and puts running while a delete proceeds all succeed", async () => {
      await withStore(async (store) => {
        const chunks = makeChunks(80, 60_000);
        for (const c of chunks) await store.put(c.id, c.data);
        await store.flush();
        const doomed = chunks.filter((_, i) => i % 2 === 1);
        const kept = chunks.filter((_, i) => i % 2 === 0);
        const late = makeChunks(10, 30_000);
        await Promise.all([
          store.delete(doomed.map((c) => c.id)),
          assertReadable(store, kept, "during delete: "),
          ...late.map((c) => store.put(c.id, c.data)),
          assertReadable(store, kept, "during delete, again: "),
        ]);
        await store.flush();
        await assertReadable(store, [...kept, ...late]);
        for (const c of doomed) await assertMissing(store, c.id);
      });
    });
  });
}

/** Flip the bits in `mask` of the byte at `offset` of a file (to simulate damaged storage). */
export async function flipByte(path: string, offset: number, mask = 0x10): Promise<void> {
  const handle = await open(path, "r+");
  try {
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, offset);
    byte[0] = (byte[0] as number) ^ mask;
    await handle.write(byte, 0, 1, offset);
  } finally {
    await handle.close();
  }
}
