// The short form of `npm run chaos` (scripts/chaos.ts --quick): a small changing tree, the
// server SIGKILLed and restarted 5 times, then the client 5 times; then the mirror must equal
// the source, every acknowledged version must be in the history and a sample of them must
// restore byte for byte, verify must be clean, no temporary file may be left, and no process
// may crash or give up. The script runs as its own process, as `npm run chaos` runs it, so
// that its cleanup (every child killed, the temporary folder removed) is exercised too.
// KW_CHAOS_SEED replays one seed; otherwise the seed changes from run to run and a failure
// prints it.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { REPO } from "./helpers.js";

/**
 * An idle 2-core machine runs the quick form in 30-40 s (half of it the kills and their
 * restarts, which wait on the processes' own start-up; a third the restores), and in up to
 * 60 s when the mirror differs (the script then waits 12 s for the difference to go away).
 * The limit leaves room for a machine that also runs another test file, as `npm test` does.
 */
const LIMIT_MS = 85_000;

test("the quick chaos run: 5 server kills and 5 client kills lose nothing", {
  timeout: LIMIT_MS + 30_000,
}, async (t) => {
  const seed = process.env.KW_CHAOS_SEED ?? String(Date.now() % 1_000_000);
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  delete env.KEEPWATCH_SECRET;
  const child = spawn(
    process.execPath,
    ["--import", "tsx", join(REPO, "scripts", "chaos.ts"), "--quick", "--seed", seed],
    {
      cwd: REPO,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (text: string) => {
    output += text;
  });
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    output += text;
  });
  const started = Date.now();
  let timedOut = false;
  // SIGINT lets the script kill its children and remove its folder before it exits.
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGINT");
    setTimeout(() => child.kill("SIGKILL"), 20_000).unref();
  }, LIMIT_MS);
  const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
  clearTimeout(timer);
  const elapsed = ((Date.now() - started) / 1000).toFixed(1);
  assert.ok(
    !timedOut,
    `The quick chaos run (seed ${seed}) took longer than ${LIMIT_MS / 1000} s:\n${output}`,
  );
  assert.equal(code, 0, `The quick chaos run (seed ${seed}) failed after ${elapsed} s:\n${output}`);
  assert.match(output, /PASSED/, output);
  assert.match(output, /kills survived: server 5 /, output);
  assert.match(output, /^ +client 5 /m, output);
  // The figures: kills, bytes sent and sent again, phases.
  const summary = output.slice(output.indexOf(`\nseed ${seed}`) + 1);
  for (const line of summary.split("\n")) if (line.trim() !== "") t.diagnostic(line);
});
