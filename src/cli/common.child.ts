// A command for common.test.ts: prints LINES lines through runCommand and exits, so the
// test can check that a slow reader still gets every one of them.

import { runCommand } from "./common.js";
import { printLine } from "./remote.js";

const lines = Number(process.argv[2] ?? "100000");
void runCommand(null, async () => {
  for (let i = 0; i < lines; i++) printLine(`line ${i} ${"x".repeat(40)}`);
  return 3;
});
