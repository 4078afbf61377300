// One conformance suite for every MetadataStore implementation: each registers it with
// a function that opens a fresh, empty store.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, test } from "node:test";
import {
  type ChunkRef,
  historyOf,
  type MetadataStore,
  type NewVersion,
  treeAt,
  type VersionRecord,
} from "./metadata-store.js";

export interface OpenedMetadataStore {
  store: MetadataStore;
  /** Close and open the same store again (omitted for stores that do not persist). */
  reopen?: () => Promise<MetadataStore>;
  cleanup(): Promise<void>;
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

/** The tree of `set` at `time` at or below `prefix`, read in one page. */
function listAll(store: MetadataStore, set: string, time?: number, prefix = ""): Promise<VersionRecord[]> {
  return collect(treeAt(store, set, time, prefix, Number.MAX_SAFE_INTEGER));
}

/** Every version of `path` and below it ("" for the whole set), oldest first, read in one page. */
function historyAll(store: MetadataStore, set: string, path: string): Promise<VersionRecord[]> {
  return collect(historyOf(store, set, path, Number.MAX_SAFE_INTEGER));
}

function sha(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

function chunksOf(...parts: string[]): ChunkRef[] {
  return parts.map((p) => ({ id: sha(`chunk:${p}`), length: p.length }));
}

function file(set: string, path: string, body: string, time: number, parts = [body]): NewVersion {
  return {
    set,
    path,
    kind: "file",
    size: body.length,
    mtimeMs: time - 5,
    mode: 0o644,
    time,
    content: { sha256: sha(body), chunks: chunksOf(...parts) },
  };
}

function folder(set: string, path: string, time: number): NewVersion {
  return { set, path, kind: "dir", size: 0, mtimeMs: 1, mode: 0o755, time };
}

function deleted(set: string, path: string, time: number): NewVersion {
  return { set, path, kind: "deleted", size: 0, mtimeMs: 0, mode: 0, time };
}

export function runMetadataStoreConformance(name: string, open: () => Promise<OpenedMetadataStore>): void {
  describe(`MetadataStore conformance: ${name}`, () => {
    test("a file version records its content once; a second file with the same content reuses it", async () => {
      const { store, cleanup } = await open();
      try {
        const v1 = await store.commitVersion(file("s", "a.txt", "hello world", 1000, ["hello ", "world"]));
        assert.equal(v1.kind, "file");
        assert.equal(v1.size, 11);
        assert.deepEqual(v1.sha256, sha("hello world"));
        assert.deepEqual(await store.findContent(sha("hello world")), {
          sha256: sha("hello world"),
          size: 11,
          chunkCount: 2,
        });
        assert.deepEqual([...(await store.contentChunks(sha("hello world")))], chunksOf("hello ", "world"));
        // A copy needs no chunk list: the content is known.
        const copy = await store.commitVersion({
          set: "other",
          path: "copy.txt",
          kind: "file",
          size: 11,
          mtimeMs: 1,
          mode: 0o600,
          time: 1001,
          content: { sha256: sha("hello world") },
        });
        assert.ok(copy.id > v1.id, "ids grow in commit order");
        assert.deepEqual(await store.sets(), ["other", "s"]);
        assert.equal(await store.findContent(sha("nothing")), null);
        await assert.rejects(
          store.commitVersion({ ...file("s", "x", "new", 1002), content: { sha256: sha("new") } }),
          "new content without chunks is refused",
        );
        await assert.rejects(
          store.commitVersion(file("s", "y", "abc", 1003, ["ab"])),
          "chunks that do not add up to the size are refused",
        );
      } finally {
        await cleanup();
      }
    });

    test("commitVersions commits a group in order; a refused version leaves the others in", async () => {
      const { store, cleanup } = await open();
      try {
        const answers = await store.commitVersions([
          file("s", "a.txt", "alpha", 1000),
          { ...file("s", "b.txt", "never stored", 1001), content: { sha256: sha("never stored") } },
          file("s", "c.txt", "alpha", 1002),
          { set: "s", path: "a.txt", kind: "deleted", size: 0, mtimeMs: 0, mode: 0, time: 1003 },
          { set: "s", path: "d", kind: "dir", size: 0, mtimeMs: 900, mode: 0o755, time: 1004 },
        ]);
        assert.equal(answers.length, 5);
        assert.ok(answers[1] instanceof Error, "new content without chunks is refused");
        const records = answers.filter((a): a is VersionRecord => !(a instanceof Error));
        assert.equal(records.length, 4);
        const ids = records.map((r) => r.id);
        assert.deepEqual(
          ids,
          [...ids].sort((x, y) => x - y),
          "ids grow in the order given",
        );
        assert.deepEqual(
          (await listAll(store, "s")).map((v) => [v.path, v.kind]),
          [
            ["c.txt", "file"],
            ["d", "dir"],
          ],
          "a.txt deleted after it was written, b.txt never committed",
        );
        assert.equal((await historyAll(store, "s", "a.txt")).length, 2);
        assert.deepEqual(await store.commitVersions([]), []);
      } finally {
        await cleanup();
      }
    });

    test("contentInSets and chunkInSets see only what versions of the given sets use", async () => {
      const { store, cleanup } = await open();
      try {
        await store.commitVersion(file("mine", "a.txt", "shared words", 1000, ["shared ", "words"]));
        await store.commitVersion(file("theirs", "b.txt", "secret plan", 1001, ["secret ", "plan"]));
        assert.equal(await store.contentInSets(sha("shared words"), ["mine"]), true);
        assert.equal(await store.contentInSets(sha("secret plan"), ["mine"]), false, "another set's content");
        assert.equal(await store.contentInSets(sha("secret plan"), ["mine", "theirs"]), true);
        assert.equal(await store.contentInSets(sha("secret plan"), []), false, "no sets, nothing");
        assert.equal(await store.contentInSets(sha("never stored"), ["mine", "theirs"]), false);
        const [secret] = chunksOf("secret ");
        const [shared] = chunksOf("shared ");
        assert.equal(await store.chunkInSets((shared as ChunkRef).id, ["mine"]), true);
        assert.equal(
          await store.chunkInSets((secret as ChunkRef).id, ["mine"]),
          false,
          "another set's chunk",
        );
        assert.equal(await store.chunkInSets((secret as ChunkRef).id, ["theirs"]), true);
        assert.equal(
          await store.chunkInSets((secret as ChunkRef).id, ['mine", "theirs']),
          false,
          "names are data",
        );
      } finally {
        await cleanup();
      }
    });

    test("versionAt, historyOf and treeAt see the tree as it was at any moment", async () => {
      const { store, cleanup } = await open();
      try {
        await store.commitVersion(file("s", "a.txt", "one", 1000));
        await store.commitVersion({
          set: "s",
          path: "dir",
          kind: "dir",
          size: 0,
          mtimeMs: 1,
          mode: 0o755,
          time: 1000,
        });
        await store.commitVersion(file("s", "dir/b.txt", "bee", 1100));
        await store.commitVersion(file("s", "a.txt", "two", 1200));
        await store.commitVersion({
          set: "s",
          path: "dir",
          kind: "deleted",
          size: 0,
          mtimeMs: 0,
          mode: 0,
          time: 1300,
        });
        await store.commitVersion(file("s", "dir b", "sibling", 1400));

        assert.equal(
          (await store.versionAt("s", "a.txt", 1150))?.sha256?.toString("hex"),
          sha("one").toString("hex"),
        );
        assert.deepEqual((await store.versionAt("s", "a.txt"))?.sha256, sha("two"));
        assert.equal(await store.versionAt("s", "a.txt", 999), null);
        assert.equal(await store.versionAt("nope", "a.txt"), null);
        assert.equal(
          (await store.versionAt("s", "dir/b.txt"))?.kind,
          "deleted",
          "a folder delete reaches below it",
        );

        const paths = async (time?: number, prefix?: string) =>
          (await listAll(store, "s", time, prefix)).map((v) => `${v.path}:${v.kind}`);
        assert.deepEqual(await paths(1150), ["a.txt:file", "dir:dir", "dir/b.txt:file"]);
        assert.deepEqual(await paths(1150, "dir"), ["dir:dir", "dir/b.txt:file"]);
        assert.deepEqual(await paths(1350), ["a.txt:file"]);
        assert.deepEqual(await paths(), ["a.txt:file", "dir b:file"]);
        assert.deepEqual(await paths(1400, "dir"), [], "a sibling sharing the prefix is not below it");

        const history = await historyAll(store, "s", "dir");
        assert.deepEqual(
          history.map((v) => `${v.path}:${v.kind}@${v.time}`),
          ["dir:dir@1000", "dir/b.txt:file@1100", "dir/b.txt:deleted@1300", "dir:deleted@1300"],
        );
        assert.deepEqual(
          (await historyAll(store, "s", "a.txt")).map((v) => v.time),
          [1000, 1200],
        );
        assert.deepEqual(
          (await historyAll(store, "s", "")).map((v) => v.id),
          (await historyAll(store, "s", "a.txt"))
            .concat(history, await historyAll(store, "s", "dir b"))
            .map((v) => v.id)
            .sort((a, b) => a - b),
          '"" is the whole set',
        );
        assert.equal((await store.newestVersion("s"))?.path, "dir b");
        assert.equal((await store.newestVersion("s", 1350))?.kind, "deleted", "a delete counts");
        assert.equal(await store.newestVersion("s", 999), null);
        assert.equal(await store.newestVersion("nope"), null);
      } finally {
        await cleanup();
      }
    });

    test("a folder's listing, history and delete reach below it, never siblings named alike", async () => {
      const { store, cleanup } = await open();
      try {
        // Names that sort between "d" and "d0", as "d/..." does: the range alone would take them.
        await store.commitVersions([
          folder("s", "d", 1000),
          file("s", "d/a", "a", 1000),
          folder("s", "d/e", 1000),
          file("s", "d/e/f", "f", 1000),
          file("s", "d.txt", "dot", 1000),
          folder("s", "d-x", 1000),
          file("s", "d-x/y", "y", 1000),
          file("s", "d!", "bang", 1000),
          file("s", "d0", "zero", 1000),
          file("s", "c", "c", 1000),
        ]);
        const paths = async (prefix: string) =>
          (await listAll(store, "s", undefined, prefix)).map((v) => v.path);
        assert.deepEqual(await paths("d"), ["d", "d/a", "d/e", "d/e/f"]);
        assert.deepEqual(await paths("d/e"), ["d/e", "d/e/f"]);
        assert.deepEqual(
          (await historyAll(store, "s", "d")).map((v) => v.path),
          ["d", "d/a", "d/e", "d/e/f"],
        );
        await store.commitVersion(deleted("s", "d", 1100));
        assert.deepEqual(await paths("d"), []);
        assert.deepEqual(await paths(""), ["c", "d!", "d-x", "d-x/y", "d.txt", "d0"]);
        assert.deepEqual(
          (await historyAll(store, "s", "d")).map((v) => `${v.path}:${v.kind}`),
          [
            "d:dir",
            "d/a:file",
            "d/e:dir",
            "d/e/f:file",
            "d/a:deleted",
            "d/e:deleted",
            "d/e/f:deleted",
            "d:deleted",
          ],
        );
      } finally {
        await cleanup();
      }
    });

    test("treeAt and historyOf, a page at a time, give what one page gives", async () => {
      const { store, cleanup } = await open();
      try {
        const paths = ["a", "b/c", "b/d", "b!", "b.txt", "c", "d/e/f", "d/g", "e", "f"];
        for (const [i, path] of paths.entries()) {
          const folders = path.split("/").slice(0, -1);
          for (let k = 1; k <= folders.length; k++) {
            await store.commitVersion(folder("s", folders.slice(0, k).join("/"), 1000));
          }
          await store.commitVersion(file("s", path, `body ${i}`, 1000 + i));
        }
        // Deletes, among them a run longer than a page, must not end the listing early.
        for (const path of ["b", "b!", "b.txt", "c"]) await store.commitVersion(deleted("s", path, 2000));
        await store.commitVersion(file("t", "d/e/f", "other set", 2500));
        await store.commitVersion(file("s", "d/e/f", "changed", 2600));
        await store.commitVersion(file("s", "zz", "late", 3000));
        await store.commitVersion(file("t", "a", "other set", 1000));

        for (const pageSize of [1, 2, 3, 1000]) {
          for (const [time, prefix] of [
            [undefined, ""],
            [1500, ""],
            [2500, ""],
            [1500, "b"],
            [undefined, "d"],
            [undefined, "d/e"],
            [undefined, "nothing"],
          ] as const) {
            assert.deepEqual(
              (await collect(treeAt(store, "s", time, prefix, pageSize))).map((v) => v.id),
              (await listAll(store, "s", time, prefix)).map((v) => v.id),
              `time ${time}, prefix ${JSON.stringify(prefix)}, pages of ${pageSize}`,
            );
          }
          // Subtrees larger than a page are read by walking the ids, past versions of the
          // other set and of sibling paths ("b!", "b.txt" beside "b").
          for (const path of ["", "a", "b", "d", "d/e", "zz", "nothing"]) {
            assert.deepEqual(
              (await collect(historyOf(store, "s", path, pageSize))).map((v) => v.id),
              (await historyAll(store, "s", path)).map((v) => v.id),
              `history of ${JSON.stringify(path)} in pages of ${pageSize}`,
            );
          }
        }
        assert.deepEqual(await collect(treeAt(store, "nope", undefined, "")), []);
        assert.equal(await store.fileCountAt("s"), 6, "a, d/e/f, d/g, e, f and zz");
        assert.equal(await store.fileCountAt("s", 1500), 10);
        assert.equal(await store.fileCountAt("t"), 2);
        assert.equal(await store.fileCountAt("nope"), 0);
      } finally {
        await cleanup();
      }
    });

    test("versionsByPath gives every version by set, path and commit order, a page at a time", async () => {
      const { store, cleanup } = await open();
      try {
        // Several versions of most paths, two sets whose ids and names sort differently.
        await store.commitVersion(file("z", "b", "z1", 1000));
        for (const [i, path] of ["b", "a", "b", "c/d", "a", "b", "b!"].entries()) {
          await store.commitVersion(file("s", path, `s${i}`, 1001 + i));
        }
        await store.commitVersion(deleted("s", "c", 1010));
        await store.commitVersion(file("z", "a", "z2", 1011));
        const expected = [];
        for await (const v of store.allVersions()) expected.push(v);
        expected.sort((x, y) =>
          x.set !== y.set
            ? x.set < y.set
              ? -1
              : 1
            : x.path !== y.path
              ? x.path < y.path
                ? -1
                : 1
              : x.id - y.id,
        );
        for (const pageSize of [1, 2, 3, 1000]) {
          const got = [];
          for await (const v of store.versionsByPath(pageSize)) got.push(v);
          assert.deepEqual(
            got.map((v) => `${v.set}/${v.path}#${v.id}`),
            expected.map((v) => `${v.set}/${v.path}#${v.id}`),
            `pages of ${pageSize}`,
          );
        }
      } finally {
        await cleanup();
      }
    });

    test("dropVersions frees exactly the chunks nothing else references", async () => {
      const { store, cleanup } = await open();
      try {
        const old = await store.commitVersion(file("s", "f", "aaabbb", 1000, ["aaa", "bbb"]));
        await store.commitVersion(file("s", "f", "aaaccc", 1100, ["aaa", "ccc"]));
        const shared = await store.commitVersion(file("t", "g", "ddd", 1200));
        const sameAsShared = await store.commitVersion(file("t", "h", "ddd", 1300));
        const freed = await store.dropVersions([old.id, shared.id]);
        assert.deepEqual(
          freed.map((id) => id.toString("hex")).sort(),
          [sha("chunk:bbb").toString("hex")],
          "bbb is freed; aaa is still used by the newer version; ddd by the copy",
        );
        assert.equal(await store.findContent(sha("aaabbb")), null);
        assert.ok(await store.findContent(sha("ddd")));
        const left = [];
        for await (const v of store.allVersions()) left.push(v.id);
        assert.equal(left.length, 2);
        assert.ok(left.includes(sameAsShared.id));
        const referenced = [];
        for await (const id of store.referencedChunks()) referenced.push(id.toString("hex"));
        assert.deepEqual(
          referenced.sort(),
          [sha("chunk:aaa"), sha("chunk:ccc"), sha("chunk:ddd")].map((b) => b.toString("hex")).sort(),
        );
        assert.deepEqual(await store.dropVersions([]), []);
      } finally {
        await cleanup();
      }
    });

    test("committed versions survive closing and opening again", async (t) => {
      const opened = await open();
      if (!opened.reopen) {
        t.skip("this store does not persist");
        await opened.cleanup();
        return;
      }
      try {
        const v = await opened.store.commitVersion(file("s", "keep.txt", "kept", 1000));
        const again = await opened.reopen();
        assert.deepEqual(await again.versionAt("s", "keep.txt"), v);
        assert.deepEqual([...(await again.contentChunks(sha("kept")))], chunksOf("kept"));
      } finally {
        await opened.cleanup();
      }
    });
  });
}
