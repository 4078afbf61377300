#!/usr/bin/env -S node --max-semi-space-size=4
// The keepwatch executable: parses the command line and hands over to one command.
// The line above gives V8 a young generation of 4 MiB semi-spaces instead of 16 (V8 reads
// this only at start-up): peak RSS 10–20 MiB lower for client and server, at the same speed
// (docs/performance.md). Run as `node dist/cli/main.js`, Node's defaults apply.

import "./threadpool.js";

import { Command, CommanderError } from "commander";
import { ExitCode } from "../errors.js";
import { EXIT_CODES_HELP } from "./common.js";

/**
 * Each command's module, loaded only when needed: `keepwatch push` does not load the server,
 * verify or prune (0.05 s of a push's start-up here, docs/performance.md). The order is
 * the order of `--help`.
 */
const COMMANDS: Record<string, () => Promise<(program: Command) => void>> = {
  server: async () => (await import("./server.js")).registerServer,
  client: async () => (await import("./client.js")).registerClient,
  push: async () => (await import("./push.js")).registerPush,
  ls: async () => (await import("./ls.js")).registerLs,
  history: async () => (await import("./history.js")).registerHistory,
  restore: async () => (await import("./restore.js")).registerRestore,
  verify: async () => (await import("./verify.js")).registerVerify,
  prune: async () => (await import("./prune.js")).registerPrune,
  "rebuild-mirror": async () => (await import("./rebuild-mirror.js")).registerRebuildMirror,
  clients: async () => (await import("./clients.js")).registerClients,
  fingerprint: async () => (await import("./identity.js")).registerFingerprint,
};

const program = new Command();
program
  .name("keepwatch")
  .description(
    "Continuous file backup: a watching client streams every change to a server that keeps a mirror.",
  )
  .version("0.1.0")
  .showSuggestionAfterError(true)
  .exitOverride()
  .configureOutput({
    // commander's own messages ("error: unknown command 'x'") become our one-sentence form.
    outputError: (message, write) =>
      write(`keepwatch: ${message.replace(/^error: /, "").trim()}; see "keepwatch --help".\n`),
  })
  .addHelpText("after", EXIT_CODES_HELP);

// A known command name first registers that command alone; anything else (`--help`, `help
// push`, a misspelt name that deserves a suggestion) registers them all.
const named = process.argv[2];
const wanted = named !== undefined && Object.hasOwn(COMMANDS, named) ? [named] : Object.keys(COMMANDS);
for (const register of await Promise.all(
  wanted.map((name) => (COMMANDS[name] as () => Promise<(p: Command) => void>)()),
)) {
  register(program);
}

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    const ok =
      error.code === "commander.helpDisplayed" || error.code === "commander.version" || error.exitCode === 0;
    process.exit(ok ? ExitCode.ok : ExitCode.usage);
  }
  throw error;
}
