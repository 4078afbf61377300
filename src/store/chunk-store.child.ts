// A process for chunk-store.test.ts to SIGKILL at chosen moments. It writes one line to
// stdout at each point of interest ("ready", each repack step, "done").
//
//   delete FOLDER IDS_FILE [STEP:N]  open the store and delete the hex ids listed one a line
//                                    in IDS_FILE; with STEP:N, stop for good at the Nth
//                                    repack step STEP, right after reporting it
//   write FOLDER OUT_FILE            put and flush chunks, put more (partly written to the pack
//                                    but not flushed), list both in OUT_FILE (JSON), report
//                                    "ready" and wait to be killed
// Options match the test's: 64 KiB packs, 16 KiB buffer.

import { writeSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { makeChunks } from "./chunk-store.conformance.js";
import { LocalChunkStore, type RepackStep } from "./local-chunk-store.js";

const CHILD_OPTIONS = { packTargetBytes: 64 * 1024, bufferBytes: 16 * 1024 };

function report(line: string): void {
  const bytes = Buffer.from(`${line}\n`);
  for (let done = 0; done < bytes.length; ) {
    try {
      done += writeSync(1, bytes, done);
    } catch (error) {
      // stdout is a non-blocking pipe: when it is full, try again.
      if ((error as NodeJS.ErrnoException).code !== "EAGAIN") throw error;
    }
  }
}

/** Block the whole process (so the store cannot move on) until it is killed. */
function standStill(): never {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (;;) Atomics.wait(cell, 0, 0, 60_000);
}

async function runDelete(folder: string, idsFile: string, stopAt: string | undefined): Promise<void> {
  const ids = (await readFile(idsFile, "utf8"))
    .split("\n")
    .filter((line) => line !== "")
    .map((hex) => Buffer.from(hex, "hex"));
  const [stopStep, stopCount] = stopAt ? stopAt.split(":") : [];
  const seen = new Map<string, number>();
  const store = await LocalChunkStore.open(folder, {
    ...CHILD_OPTIONS,
    onRepackStep: (step: RepackStep) => {
      const n = (seen.get(step) ?? 0) + 1;
      seen.set(step, n);
      report(`${step} ${n}`);
      if (step === stopStep && n === Number(stopCount)) standStill();
    },
  });
  report("ready");
  await store.delete(ids);
  report("done");
  await store.close();
}

async function runWrite(folder: string, outFile: string): Promise<void> {
  const store = await LocalChunkStore.open(folder, { ...CHILD_OPTIONS, packTargetBytes: 64 * 1024 * 1024 });
  const durable = makeChunks(20, 20_000);
  for (const c of durable) await store.put(c.id, c.data);
  await store.flush();
  // More than the buffer holds, so part of it reaches the pack file unflushed.
  const lost = makeChunks(20, 20_000);
  for (const c of lost) await store.put(c.id, c.data);
  await writeFile(
    outFile,
    JSON.stringify({
      durable: durable.map((c) => c.data.toString("base64")),
      lost: lost.map((c) => c.id.toString("hex")),
    }),
  );
  report("ready");
  standStill();
}

const [mode, folder, arg1, arg2] = process.argv.slice(2);
if (mode === "delete" && folder && arg1) await runDelete(folder, arg1, arg2);
else if (mode === "write" && folder && arg1) await runWrite(folder, arg1);
else {
  console.error("usage: chunk-store.child.ts delete FOLDER IDS_FILE [STEP:N] | write FOLDER OUT_FILE");
  process.exit(2);
}
