#!/usr/bin/env node
// Runs node's test runner on every *.test.ts below the folders given. Node 20's runner
// does not expand globs or look for .ts files itself, so this lists them.
// Usage: node scripts/run-tests.mjs [--concurrency N] DIR...

import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const args = process.argv.slice(2);
let concurrency = "1";
const dirs = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--concurrency") concurrency = args[++i];
  else dirs.push(args[i]);
}

function find(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...find(path));
    else if (entry.name.endsWith(".test.ts")) out.push(path);
  }
  return out;
}

const files = dirs.flatMap(find).sort();
if (files.length === 0) {
  console.error(`no test files found below ${dirs.join(", ")}`);
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", `--test-concurrency=${concurrency}`, ...files],
  { stdio: "inherit" },
);
process.exit(result.status ?? 1);
