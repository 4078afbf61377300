// A program for json.test.ts: a --json printer on stdout (fd 1) that emits TURNS turns of
// PER_TURN events each, then exits at once with process.exit(7), without closing the
// printer. "done" on stderr says it got that far.

import { JsonPrinter } from "./json.js";

const [turns, perTurn] = [Number(process.argv[2] ?? "3"), Number(process.argv[3] ?? "2")];
const printer = new JsonPrinter({ dest: 1 });
let turn = 0;
const next = () => {
  for (let i = 0; i < perTurn; i++)
    printer.emit({ kind: "info", message: `turn ${turn} event ${i} ${"x".repeat(40)}` });
  turn++;
  if (turn < turns) setImmediate(next);
  else {
    process.stderr.write("done\n");
    process.exit(7);
  }
};
next();
