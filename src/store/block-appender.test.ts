// The block appender on real files in a temporary folder: whatever the sizes and the order of
// writes and spills, the file ends up with exactly the bytes given, and every byte not yet in
// the file can be read back from memory; where O_DIRECT works, whole blocks go that way, and
// where a direct write is refused, the page cache takes it.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { constants, readFileSync } from "node:fs";
import { mkdtemp, open, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import fc from "fast-check";
import {
  type AppendTarget,
  BLOCK_BYTES,
  BlockAppender,
  openDirect,
  SLAB_BYTES,
  SLAB_COUNT,
} from "./block-appender.js";

async function scratch(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "kw-appender-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A new file with its page-cache handle and, where the file system allows, its direct one. */
async function target(path: string, direct: boolean): Promise<AppendTarget> {
  const handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  return { handle, direct: direct ? await openDirect(path) : null };
}

async function closeTarget(t: AppendTarget): Promise<void> {
  await t.direct?.close();
  await t.handle.close();
}

/** A new file opened both ways in a scratch folder, or null (the test skipped) where O_DIRECT is refused. */
async function directFile(
  t: TestContext,
  name: string,
): Promise<{ path: string; file: AppendTarget } | null> {
  const path = join(await scratch(t), name);
  const file = await target(path, true);
  if (file.direct) return { path, file };
  await closeTarget(file);
  t.skip("this file system does not take O_DIRECT");
  return null;
}

/**
 * Records put the way the pack writer puts them: in place when they fit, after a spill when
 * they do not, and past a buffer too small for them with a write that is then settled.
 */
async function putRecord(out: BlockAppender, t: AppendTarget, record: Buffer): Promise<number> {
  if (record.length > out.room) await out.spill(t);
  const offset = out.size;
  if (record.length <= out.room) {
    record.copy(out.buffer, out.used);
    out.advance(record.length);
  } else {
    await out.write(t, [record]);
    await out.spill(t);
    await out.settle();
  }
  return offset;
}

test("the file holds exactly the bytes given, and those not yet written are read from memory", async (t) => {
  const dir = await scratch(t);
  let run = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        buffers: fc.constantFrom<0 | 1 | 2>(0, 1, 2),
        direct: fc.boolean(),
        bufferBytes: fc.integer({ min: 1, max: 24 * 1024 }),
        steps: fc.array(
          fc.oneof(
            fc.record({ record: fc.integer({ min: 0, max: 40_000 }) }),
            fc.constant({ spill: true }),
            fc.constant({ settle: true }),
          ),
          { maxLength: 40 },
        ),
      }),
      async ({ buffers, direct, bufferBytes, steps }) => {
        const path = join(dir, `f${run++}`);
        const out =
          buffers === 0
            ? new BlockAppender(bufferBytes, false)
            : BlockAppender.ifAligned(bufferBytes, buffers);
        assert.ok(out, "a free slab");
        const file = await target(path, direct);
        const records: { offset: number; bytes: Buffer }[] = [];
        try {
          for (const step of steps) {
            if ("record" in step) {
              const bytes = randomBytes(step.record);
              records.push({ offset: await putRecord(out, file, bytes), bytes });
            } else if ("spill" in step) {
              await out.spill(file);
            } else {
              await out.settle();
            }
            // Every record: from memory while any of it is not written, else from the file at
            // once (read synchronously: a write still under way must not be missed).
            for (const { offset, bytes } of records) {
              const got: Buffer =
                out.held(offset, bytes.length) ?? readFileSync(path).subarray(offset, offset + bytes.length);
              assert.deepEqual(got, bytes);
            }
          }
          await out.spill(file);
          await out.settle();
          assert.deepEqual(await readFile(path), Buffer.concat(records.map((r) => r.bytes)));
        } finally {
          await closeTarget(file);
          out.release();
        }
      },
    ),
    { numRuns: 60 },
  );
});

test("whole blocks go past the page cache where the file system takes O_DIRECT", async (t) => {
  const opened = await directFile(t, "big");
  if (!opened) return;
  const { path, file } = opened;
  const out = BlockAppender.ifAligned(SLAB_BYTES, 2);
  assert.ok(out);
  const data = randomBytes(3 * SLAB_BYTES + 1234);
  try {
    // Uneven parts, so that spills start and end inside blocks.
    for (let at = 0; at < data.length; at += 777_777)
      await out.write(file, [data.subarray(at, at + 777_777)]);
    await out.spill(file);
    await out.settle();
  } finally {
    await closeTarget(file);
    out.release();
  }
  assert.deepEqual(await readFile(path), data);
  // All but the last partial block, and the partial blocks where spills ended.
  assert.ok(out.directBytes >= data.length - 4 * BLOCK_BYTES, `${out.directBytes} bytes written directly`);
});

test("a direct write the kernel refuses goes through the page cache instead", async (t) => {
  const opened = await directFile(t, "refused");
  if (!opened) return;
  const { path, file } = opened;
  // Memory one byte off alignment: the kernel answers EINVAL to a direct write from it.
  const unaligned = Buffer.alloc(64 * 1024 + 1).subarray(1);
  const out = new BlockAppender(unaligned.length, [unaligned]);
  const data = randomBytes(5 * 64 * 1024 + 99);
  try {
    await out.write(file, [data]);
    await out.spill(file);
    await out.settle();
  } finally {
    await closeTarget(file);
  }
  assert.deepEqual(await readFile(path), data);
  assert.equal(out.directBytes, 0);
  assert.equal(file.direct, null, "not tried again for this file");
});

test("aligned memory is a few slabs for the whole process: when they are taken, callers get none", () => {
  const taken: BlockAppender[] = [];
  for (;;) {
    const out = BlockAppender.ifAligned(SLAB_BYTES, 2);
    if (!out) break;
    taken.push(out);
    assert.ok(taken.length <= SLAB_COUNT / 2, "no more than the pool holds");
  }
  assert.equal(taken.length, SLAB_COUNT / 2, "every slab was free to take");
  // An appender that asks for a slab now gets plain memory, and writes through the page cache.
  const plain = new BlockAppender(SLAB_BYTES, true);
  assert.equal(plain.aligned, false);
  for (const out of taken) out.release();
  const again = BlockAppender.ifAligned(SLAB_BYTES, 2);
  assert.ok(again, "given back, the slabs are there again");
  again.release();
});
