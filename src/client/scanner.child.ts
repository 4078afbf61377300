// Run by scanner.test.ts in a process of its own, with a small stack (--stack-size): one
// scan of ROOT with a fresh state in STATE_DIR in which COUNT files that are not on disk
// are recorded. Prints how many operations of each kind the scan listed, as JSON.

import { scan } from "./scanner.js";
import { ClientState } from "./state.js";

const [root, stateDir, count] = process.argv.slice(2) as [string, string, string];
const state = ClientState.open(stateDir, "store-1", "many", root);
try {
  const entry = { size: 0, mtimeMs: 1, mode: 0o644, ino: 1, ctimeMs: 1 };
  for (let i = 0; i < Number(count); i++) {
    state.recordFile(`gone${i}`, { ...entry, sha256: Buffer.alloc(32), chunks: null, marks: null });
  }
  const result = await scan(root, "", state);
  const kinds: Record<string, number> = {};
  for (const op of result.operations) kinds[op.op] = (kinds[op.op] ?? 0) + 1;
  process.stdout.write(`${JSON.stringify({ files: result.files, kinds, first: result.operations[0] })}\n`);
} finally {
  state.close();
}
