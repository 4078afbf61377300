// `npm start`: a local server and a watching client on the sample data
// (data/source -> data/dest), with both outputs in one terminal. Ctrl-C stops both.

import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const repo = fileURLToPath(new URL("..", import.meta.url));
const cli = ["--import", "tsx", "src/cli/main.ts"];
const children: ChildProcess[] = [];
let stopping = false;

function start(label: string, args: string[], onLine?: (line: string) => void): ChildProcess {
  const child = spawn(process.execPath, [...cli, ...args], { cwd: repo, stdio: ["ignore", "pipe", "pipe"] });
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on("line", (line) => {
      console.log(`${label} | ${line}`);
      onLine?.(line);
    });
  }
  child.on("exit", (code, signal) => {
    if (!stopping) {
      console.log(
        `${label} | stopped unexpectedly (${signal ?? `exit code ${code}`}); stopping the other side.`,
      );
      stop(code || 1);
    }
  });
  children.push(child);
  return child;
}

function stop(exitCode = 0): void {
  if (stopping) return;
  stopping = true;
  let left = children.filter((c) => c.exitCode === null && c.signalCode === null).length;
  if (left === 0) process.exit(exitCode);
  for (const child of children) {
    child.once("exit", () => {
      left--;
      if (left === 0) process.exit(exitCode);
    });
    child.kill("SIGTERM");
  }
  setTimeout(() => process.exit(exitCode), 5000).unref();
}

process.on("SIGINT", () => stop(0));
process.on("SIGTERM", () => stop(0));

let clientStarted = false;
start("server", ["server", "data/dest", "localhost"], (line) => {
  if (clientStarted || !line.includes("listening")) return;
  clientStarted = true;
  start("client", ["client", "data/source", "localhost"], (clientLine) => {
    if (clientLine.includes("watching") && !announced) {
      announced = true;
      console.log(
        "\n  keepwatch is running. Edit data/source/test.txt (or add, rename, delete files in data/source)\n" +
          "  and watch the copy appear in data/dest/source/. Press Ctrl-C to stop both.\n",
      );
    }
  });
});
let announced = false;
