// Run by scanner.test.ts in a process of its own, with a small stack (--stack-size): one
// scan of ROOT with a fresh state in STATE_DIR in which COUNT files that are not on disk
// are recorded. Prints how many operations of each kind the scan handed on, as JSON.

import { type Operation, scan } from "./scanner.js";
import { ClientState } from "./state.js";

const [root, stateDir, count] = process.argv.slice(2) as [string, string, string];
const state = ClientState.open(stateDir, "store-1", "many", root);
try {
  const entry = { size: 0, mtimeMs: 1, mode: 0o644, ino: 1, ctimeMs: 1 };
  for (let i = 0; i < Number(count); i++) {
    state.recordFile(`gone${i}`, { ...entry, sha256: Buffer.alloc(32), chunks: null, marks: null });
  }
  const kinds: Record<string, number> = {};
  let first: Operation | undefined;
  const summary = await scan(root, "", state, {
    operations: async (ops) => {
      first ??= ops[0];
      for (const op of ops) kinds[op.op] = (kinds[op.op] ?? 0) + 1;
      return true;
    },
    problem: () => {},
  });
  process.stdout.write(`${JSON.stringify({ files: summary.files, kinds, first })}\n`);
} finally {
  state.close();
}
