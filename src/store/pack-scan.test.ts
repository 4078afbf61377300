// Walking a pack without its index: sound records, a record whose stored bytes are
// damaged (named by its id), a damaged record header (the walk finds the next record
// again), and a file that ends inside a record.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, truncate } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, test } from "node:test";
import { ChunkCodecContext } from "./chunk-codec.js";
import { flipByte } from "./chunk-store.conformance.js";
import { RECORD_HEADER_BYTES } from "./pack-format.js";
import { checkRecord, listPackFiles, PackWalker, type WalkedRecord } from "./pack-scan.js";
import { PackWriter, type RecordPlace } from "./pack-writer.js";

let dir: string;
const codec = new ChunkCodecContext();

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "keepwatch-pack-scan-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Written {
  path: string;
  chunks: { id: Buffer; place: RecordPlace }[];
}

/** A pack of `count` chunks: even ones compressible text, odd ones random bytes. */
async function writePack(count: number): Promise<Written> {
  const writer = new PackWriter(dir, 64 * 1024);
  const chunks: Written["chunks"] = [];
  for (let i = 0; i < count; i++) {
    const data = i % 2 === 0 ? Buffer.from(`chunk ${i} `.repeat(500)) : randomBytes(3000 + i);
    const id = createHash("sha256").update(data).digest();
    chunks.push({ id, place: await writer.appendChunk(id, data, codec) });
  }
  await writer.sync();
  await writer.close();
  return { path: join(dir, writer.path), chunks };
}

async function walk(path: string): Promise<WalkedRecord[]> {
  const walker = await PackWalker.open(path);
  const out: WalkedRecord[] = [];
  try {
    for await (const record of walker.records(codec)) {
      const { data: _data, ...rest } = record;
      out.push(rest);
    }
  } finally {
    await walker.close();
  }
  return out;
}

test("a sound pack walks as its records, in order, each checked", async () => {
  const pack = await writePack(6);
  const records = await walk(pack.path);
  assert.deepEqual(
    records.map((r) => (r.kind === "sound" ? [r.offset, r.header.id.toString("hex")] : r.kind)),
    pack.chunks.map((c) => [c.place.offset, c.id.toString("hex")]),
  );
  assert.deepEqual(await listPackFiles(join(dir, "packs"), "packs"), [pack.path.slice(dir.length + 1)]);
});

test("damaged stored bytes name their chunk; the records after it still read", async () => {
  const pack = await writePack(5);
  const hit = pack.chunks[2] as Written["chunks"][number];
  await flipByte(
    pack.path,
    hit.place.offset + RECORD_HEADER_BYTES + Math.floor(hit.place.storedLength / 2),
    0x40,
  );
  const records = await walk(pack.path);
  assert.equal(records.length, 5);
  const bad = records[2];
  assert.equal(bad?.kind, "damaged");
  assert.ok(bad?.kind === "damaged" && bad.id?.equals(hit.id));
  assert.match(bad?.kind === "damaged" ? bad.problem : "", /CRC-32/);
  assert.deepEqual(records.filter((r) => r.kind === "sound").length, 4, "the other four are sound");
});

test("a damaged record header: the stretch is reported and the walk finds the next record", async () => {
  const pack = await writePack(5);
  const hit = pack.chunks[1] as Written["chunks"][number];
  await flipByte(pack.path, hit.place.offset + 10, 0x40);
  const records = await walk(pack.path);
  const kinds = records.map((r) => r.kind);
  assert.deepEqual(kinds, ["sound", "damaged", "sound", "sound", "sound"]);
  const bad = records[1];
  assert.ok(bad?.kind === "damaged");
  assert.equal(bad.id, undefined, "the header cannot be trusted, so no id");
  assert.equal(bad.offset, hit.place.offset);
  assert.equal(bad.length, RECORD_HEADER_BYTES + hit.place.storedLength);
});

test("a file that ends inside a record ends its walk with a tail, not damage", async () => {
  const pack = await writePack(3);
  const last = pack.chunks[2] as Written["chunks"][number];
  await truncate(pack.path, last.place.offset + RECORD_HEADER_BYTES + 5);
  const records = await walk(pack.path);
  assert.deepEqual(
    records.map((r) => r.kind),
    ["sound", "sound", "tail"],
  );
});

test("checkRecord refuses a record that is not the one the index expects", async () => {
  const pack = await writePack(2);
  const walker = await PackWalker.open(pack.path);
  try {
    const [a, b] = pack.chunks as [Written["chunks"][number], Written["chunks"][number]];
    const record = await walker.read(a.place.offset, RECORD_HEADER_BYTES + a.place.storedLength);
    assert.equal(checkRecord(record, codec).ok, true);
    const wrong = checkRecord(record, codec, { ...b.place, id: b.id });
    assert.deepEqual(wrong, { ok: false, problem: "the record there holds another chunk" });
  } finally {
    await walker.close();
  }
});
