// What every command shares: option parsing (host, port, output mode), turning errors
// into one sentence and an exit code, and stopping on Ctrl-C.

import { type Command, InvalidArgumentError } from "commander";
import type { ClientSecurity } from "../client/security.js";
import { readSecret } from "../client/security.js";
import { ExitCode, KeepwatchError } from "../errors.js";
import { DEFAULT_PORT } from "../protocol/messages.js";
import { defaultConfigDir } from "../security/config-dir.js";
import { parseFingerprint } from "../security/fingerprint.js";
import type { Reporter } from "../ui/events.js";
import { chooseMode, createPrinter, type Side } from "../ui/index.js";

export { DEFAULT_PORT };

export const DEFAULT_HOST = "127.0.0.1";

export interface OutputOptions {
  json?: boolean;
  quiet?: boolean;
}

export const EXIT_CODES_HELP = `
Exit codes:
  0  success
  1  failure (something could not be backed up, or an unexpected error)
  2  usage error (unknown command or option, bad value)
  3  a local folder or file problem (missing source, destination not writable, ...)
  4  network problem (server unreachable, port in use, connection lost, time-out)
  5  refused (wrong secret, set not allowed, server fingerprint changed, protocol
     version mismatch, not a keepwatch peer, bad name)`;

/** How a client reaches a server: the options every connecting command has. */
export interface ConnectionFlags {
  secretFile?: string;
  fingerprint?: string;
  insecure?: boolean;
}

export function withConnectionOptions(command: Command): Command {
  return command
    .option(
      "--secret-file <file>",
      "file holding this client's secret (else $KEEPWATCH_SECRET; none is needed for a server of the same user on this machine)",
    )
    .option(
      "--fingerprint <fp>",
      "the server's TLS fingerprint (keepwatch fingerprint DEST prints it); pinned on first use otherwise",
      parseFingerprintOption,
    )
    .option("--insecure", "plain TCP, for a server started with --insecure: nothing is encrypted");
}

function parseFingerprintOption(value: string): string {
  const fingerprint = parseFingerprint(value);
  if (fingerprint === null) {
    throw new InvalidArgumentError('a fingerprint looks like "SHA256:" and 43 letters, digits, + or /.');
  }
  return fingerprint;
}

/** The ClientSecurity the flags ask for; `say` receives notes for the person (pins, warnings). */
export async function clientSecurity(
  flags: ConnectionFlags,
  say: (
    note:
      | { kind: "pinned"; where: string; fingerprint: string; file: string }
      | { kind: "warning"; message: string },
  ) => void,
): Promise<ClientSecurity> {
  if (flags.insecure && flags.fingerprint !== undefined) {
    throw usageError(
      "--fingerprint and --insecure contradict each other: without TLS there is no fingerprint to check.",
    );
  }
  const { secret, warning } = await readSecret(flags.secretFile);
  if (warning !== undefined) say({ kind: "warning", message: warning });
  return {
    insecure: flags.insecure ?? false,
    secret,
    fingerprint: flags.fingerprint,
    configDir: defaultConfigDir(),
    onPinned: (where, fingerprint, file) => say({ kind: "pinned", where, fingerprint, file }),
  };
}

/** clientSecurity for commands with a Reporter: notes become events. */
export function reporterNotes(reporter: Reporter): Parameters<typeof clientSecurity>[1] {
  return (note) =>
    reporter.emit(
      note.kind === "pinned"
        ? { kind: "server-pinned", where: note.where, fingerprint: note.fingerprint, file: note.file }
        : { kind: "warning", message: note.message },
    );
}

/** "localhost" means the IPv4 loopback address, as in the prototype. */
export function resolveHost(host: string | undefined): string {
  if (!host || host === "localhost") return DEFAULT_HOST;
  return host;
}

export function parsePort(value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new InvalidArgumentError("a port is a whole number from 0 to 65535.");
  }
  return port;
}

export function parseMillis(value: string): number {
  const ms = Number(value);
  if (!/^\d+$/.test(value) || ms > 600_000) {
    throw new InvalidArgumentError("give a whole number of milliseconds from 0 to 600000.");
  }
  return ms;
}

export interface Output {
  reporter: Reporter;
  close(): void;
  json: boolean;
}

export function openOutput(options: OutputOptions, side: Side): Output {
  const mode = chooseMode({
    json: options.json ?? false,
    quiet: options.quiet ?? false,
    isTTY: Boolean(process.stdout.isTTY),
  });
  const printer = createPrinter({ mode, side });
  return { reporter: printer.reporter, close: () => printer.close(), json: mode === "json" };
}

/**
 * Run a command body: a KeepwatchError becomes one sentence on stderr and its exit
 * code; anything else is a bug, reported briefly (the stack only with KEEPWATCH_DEBUG=1).
 */
export async function runCommand(output: Output | null, body: () => Promise<number>): Promise<never> {
  let code: number;
  try {
    code = await body();
  } catch (error) {
    if (error instanceof KeepwatchError) {
      // One sentence, once: as a JSON event for scripts, else on stderr.
      if (output?.json) output.reporter.emit({ kind: "error", code: error.code, message: error.message });
      output?.close();
      if (!output?.json) process.stderr.write(`keepwatch: ${error.message}\n`);
      return exitWhenWritten(error.exitCode);
    }
    output?.close();
    const detail = error instanceof Error ? error.message : String(error);
    process.stderr.write(
      `keepwatch: an unexpected error stopped the program (${detail}); please report it with the command you ran.\n`,
    );
    if (process.env.KEEPWATCH_DEBUG && error instanceof Error) process.stderr.write(`${error.stack}\n`);
    return exitWhenWritten(ExitCode.failure);
  }
  output?.close();
  return exitWhenWritten(code);
}

/**
 * Exit once stdout and stderr have passed on everything written to them: a pipe whose
 * reader is slower than us holds the rest in memory, which process.exit would throw away.
 */
async function exitWhenWritten(code: number): Promise<never> {
  const written = (stream: NodeJS.WriteStream) =>
    new Promise<void>((resolve) => {
      if (stream.destroyed || !stream.writable) return resolve();
      stream.write("", () => resolve());
    });
  await Promise.all([written(process.stdout), written(process.stderr)]);
  process.exit(code);
}

/** An AbortSignal that fires on the first SIGINT or SIGTERM. */
export function stopSignal(): AbortSignal {
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  return controller.signal;
}

export function usageError(message: string): KeepwatchError {
  return new KeepwatchError("KW_USAGE", message);
}
