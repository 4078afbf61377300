#!/usr/bin/env -S node --max-semi-space-size=4
// The keepwatch executable: parses the command line and hands over to one command.
// The line above gives V8 a young generation of 4 MiB semi-spaces instead of 16 (V8 reads
// this only at start-up): peak RSS 10–20 MiB lower for client and server, at the same speed
// (docs/performance.md). Run as `node dist/cli/main.js`, Node's defaults apply.

import "./threadpool.js";

import { Command, CommanderError } from "commander";
import { ExitCode } from "../errors.js";
import { registerClient } from "./client.js";
import { registerClients } from "./clients.js";
import { EXIT_CODES_HELP } from "./common.js";
import { registerHistory } from "./history.js";
import { registerFingerprint } from "./identity.js";
import { registerLs } from "./ls.js";
import { registerPrune } from "./prune.js";
import { registerPush } from "./push.js";
import { registerRebuildMirror } from "./rebuild-mirror.js";
import { registerRestore } from "./restore.js";
import { registerServer } from "./server.js";
import { registerVerify } from "./verify.js";

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

registerServer(program);
registerClient(program);
registerPush(program);
registerLs(program);
registerHistory(program);
registerRestore(program);
registerVerify(program);
registerPrune(program);
registerRebuildMirror(program);
registerClients(program);
registerFingerprint(program);

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
