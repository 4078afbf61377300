// `keepwatch prune DEST --keep-…`: drop the versions the retention policy does not keep and
// reclaim the space of every chunk no remaining version needs; `--dry-run` only tells.

import { type Command, InvalidArgumentError } from "commander";
import { ExitCode } from "../errors.js";
import { pruneDestination, type RetentionPolicy } from "../server/prune.js";
import { formatBytes } from "../ui/index.js";
import { runCommand, usageError } from "./common.js";
import { chunksAndBytes, describeVersion, lineOutput, plural, withLineOptions } from "./maintenance.js";

interface PruneFlags {
  keepLast?: number;
  keepWithin?: number;
  keepDaily?: number;
  dryRun?: boolean;
  json?: boolean;
  quiet?: boolean;
}

const HELP = `
Examples:
  keepwatch prune data/dest --keep-last 10
  keepwatch prune /srv/backup --keep-within 30d --keep-daily 90 --dry-run

For each file and folder (each path of each set), a version stays when any --keep rule
keeps it; the newest version of a path always stays unless it is a delete, so the latest
state of everything stays restorable. A delete is a version like any other: a path whose
every version, its delete included, is outside the rules loses them all. Then every chunk
that no remaining version needs is deleted, crash-safely (killed at any moment, nothing
still needed is lost; run prune again to finish). No server may serve DEST meanwhile.

Exit codes:
  0  done (or, with --dry-run, reckoned)
  1  an unexpected error (nothing still needed is lost; run prune again)
  2  usage error (no --keep option, a bad number or DURATION)
  3  DEST holds no keepwatch history or cannot be used, or a server, prune or verify is using it`;

export function registerPrune(program: Command): void {
  withLineOptions(
    program
      .command("prune")
      .description("drop the versions a retention policy does not keep and reclaim their space")
      .argument("<DEST>", "the folder a keepwatch server keeps its mirror and history in")
      .option("--keep-last <N>", "keep the newest N versions of each path", parseCount)
      .option(
        "--keep-within <DURATION>",
        "keep every version younger than DURATION: a number and a unit s, m, h, d or w (30d, 12h, 1w2d)",
        parseDuration,
      )
      .option(
        "--keep-daily <N>",
        "keep the newest version of each of the last N days (local time) that have versions of a path",
        parseCount,
      )
      .option("-n, --dry-run", "list what would be dropped and reclaimed, change nothing"),
  )
    .addHelpText("after", HELP)
    .action(async (dest: string, flags: PruneFlags) => {
      const output = lineOutput(flags);
      const say = (message: string) => output.reporter.emit({ kind: "info", message });
      await runCommand(output, async () => {
        const policy: RetentionPolicy = {};
        if (flags.keepLast !== undefined) policy.keepLast = flags.keepLast;
        if (flags.keepWithin !== undefined) policy.keepWithinMs = flags.keepWithin;
        if (flags.keepDaily !== undefined) policy.keepDaily = flags.keepDaily;
        if (Object.keys(policy).length === 0) {
          throw usageError(
            "Prune needs at least one of --keep-last N, --keep-within DURATION and --keep-daily N; see keepwatch prune --help.",
          );
        }
        const dry = flags.dryRun ?? false;
        const report = await pruneDestination(dest, {
          policy,
          dryRun: dry,
          listener: {
            drop: (v) =>
              say(
                `${dry ? "Would drop" : "Dropping"} ${describeVersion(v.set, v.path, v.id, v.time)}: ${kindOf(v)}.`,
              ),
            step: (step, count) =>
              say(
                step === "drop"
                  ? `Dropping ${plural(count, "version")} from the history index.`
                  : `Deleting ${plural(count, "chunk")} no version needs, repacking what remains.`,
              ),
          },
        });
        const kept = report.versions - report.dropped;
        const reclaim = `${chunksAndBytes(report.chunks, report.bytes)}, ${formatBytes(report.storedBytes)} on disk`;
        const garbage =
          report.garbageChunks > 0
            ? ` (${plural(report.garbageChunks, "chunk")} of them already unused before: left by an interrupted prune or upload)`
            : "";
        const versions = `${report.dropped} of ${plural(report.versions, "version")} (from ${report.pathsTouched} of ${plural(report.paths, "path")})`;
        if (dry) {
          say(
            `Dry run: would drop ${versions}, keep ${kept}, and reclaim ${reclaim}${garbage}; nothing was changed.`,
          );
        } else if (report.dropped === 0 && report.chunks === 0) {
          say(`Nothing to prune in ${dest}: the policy keeps all ${plural(report.versions, "version")}.`);
        } else {
          say(`Pruned ${dest}: dropped ${versions}, kept ${kept}, reclaimed ${reclaim}${garbage}.`);
        }
        return ExitCode.ok;
      });
    });
}

function kindOf(v: { kind: string; size: number }): string {
  if (v.kind === "file") return `file, ${formatBytes(v.size)}`;
  return v.kind === "dir" ? "folder" : "delete";
}

function parseCount(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError("give a whole number of at least 1.");
  }
  return n;
}

const UNIT_MS: Record<string, number> = {
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** `30d`, `12h`, `1w2d`, `90m`: milliseconds. */
export function parseDuration(value: string): number {
  const text = value.trim().toLowerCase();
  const part = /(\d+(?:\.\d+)?)([smhdw])/g;
  let total = 0;
  let consumed = 0;
  for (let m = part.exec(text); m !== null; m = part.exec(text)) {
    if (m.index !== consumed) break;
    consumed += m[0].length;
    total += Number(m[1]) * (UNIT_MS[m[2] as string] as number);
  }
  if (text === "" || consumed !== text.length || !(total > 0) || !Number.isSafeInteger(Math.round(total))) {
    throw new InvalidArgumentError(
      "give a DURATION as a number and a unit s, m, h, d or w (seconds to weeks), for example 30d, 12h or 1w2d.",
    );
  }
  return Math.round(total);
}
