// `keepwatch verify DEST`: read every stored chunk and check every file version; exit 0 when
// the history is sound, 1 naming each damaged chunk and each version it affects.

import type { Command } from "commander";
import { ExitCode } from "../errors.js";
import { type AffectedVersion, type DamagedChunk, verifyDestination } from "../server/verify.js";
import { formatBytes } from "../ui/index.js";
import { runCommand } from "./common.js";
import {
  chunksAndBytes,
  describeVersion,
  lineOutput,
  plural,
  throttle,
  withLineOptions,
} from "./maintenance.js";

interface VerifyFlags {
  full?: boolean;
  json?: boolean;
  quiet?: boolean;
}

/** Chunk ids listed in full in one version's line; the rest are counted. */
const IDS_PER_LINE = 5;
const PROGRESS_EVERY_MS = 2000;

const HELP = `
Examples:
  keepwatch verify data/dest
  keepwatch verify /srv/backup --full --json

It is safe to run while a server serves DEST: it writes nothing. A prune cannot run
meanwhile (and verify does not start while one runs).

Exit codes:
  0  the history is sound: every stored chunk reads back, every file version is complete
  1  damage found (each damaged chunk and each affected version is listed), or an unexpected error
  2  usage error (unknown option, missing DEST)
  3  DEST holds no keepwatch history or cannot be read, or a prune is running on it`;

export function registerVerify(program: Command): void {
  withLineOptions(
    program
      .command("verify")
      .description("read every stored chunk of DEST's history and check every file version against it")
      .argument("<DEST>", "the folder a keepwatch server keeps its mirror and history in")
      .option("--full", "also read each content whole and check it against its SHA-256"),
  )
    .addHelpText("after", HELP)
    .action(async (dest: string, flags: VerifyFlags) => {
      const output = lineOutput(flags);
      const say = (message: string) => output.reporter.emit({ kind: "info", message });
      await runCommand(output, async () => {
        const progress = throttle(PROGRESS_EVERY_MS, (phase: string, done: number, total: number) => {
          if (phase === "reading") {
            const percent = total > 0 ? Math.floor((done / total) * 100) : 100;
            say(`Read ${formatBytes(done)} of ${formatBytes(total)} of stored chunks (${percent}%).`);
          } else say(`Checked ${done} of ${plural(total, "content")}.`);
        });
        say(`Verifying the history in ${dest}${flags.full ? ", with every content re-hashed" : ""}.`);
        const report = await verifyDestination(dest, {
          full: flags.full ?? false,
          listener: {
            reading: (mode) => {
              if (mode === "packs") {
                say("A server holds the chunk index, so every pack file is read directly.");
              }
            },
            progress,
            damagedChunk: (damage) =>
              output.reporter.emit({
                kind: "warning",
                code: "KW_CHUNK_CORRUPT",
                message: damagedSentence(damage),
              }),
            affectedVersion: (version) =>
              output.reporter.emit({
                kind: "warning",
                code:
                  version.chunks.every((c) => c.problem === "missing") && version.chunks.length > 0
                    ? "KW_CHUNK_MISSING"
                    : "KW_CHUNK_CORRUPT",
                message: affectedSentence(version),
              }),
          },
        });
        const read = `${chunksAndBytes(report.chunks, report.bytes)} read from ${plural(report.packs, "pack")}`;
        const versions = `${plural(report.versions, "version")} of ${plural(report.sets, "set")}`;
        if (!report.clean) {
          const faults: string[] = [];
          if (report.damagedChunks > 0) faults.push(plural(report.damagedChunks, "damaged chunk"));
          if (report.damagedStretches > 0) faults.push(plural(report.damagedStretches, "unreadable stretch"));
          if (report.missingChunks > 0) faults.push(plural(report.missingChunks, "missing chunk"));
          output.reporter.emit({
            kind: "error",
            code: "KW_HISTORY_DAMAGED",
            message: `The history in ${dest} is damaged: ${faults.join(", ") || "contents that do not add up"}, affecting ${plural(report.affectedVersions, "file version")} (listed above); those versions cannot be restored as stored; copy DEST before changing anything in it, and see docs/storage.md.`,
          });
          return ExitCode.failure;
        }
        const garbage =
          report.unreferenced.chunks > 0 && report.mode === "index"
            ? ` ${chunksAndBytes(report.unreferenced.chunks, report.unreferenced.bytes)} no version uses can be reclaimed by keepwatch prune.`
            : "";
        say(
          `The history in ${dest} is sound: ${read}, ${versions} checked${report.full ? " and every content re-hashed" : ""}.${garbage}`,
        );
        return ExitCode.ok;
      });
    });
}

function damagedSentence(damage: DamagedChunk): string {
  const where = `${damage.pack} at offset ${damage.offset}`;
  if (damage.id === undefined) return `The bytes of ${where} hold no readable chunk: ${damage.problem}.`;
  return `Stored chunk ${damage.id} (${where}) is damaged: ${damage.problem}.`;
}

function affectedSentence(version: AffectedVersion): string {
  const name = describeVersion(version.set, version.path, version.versionId, version.time);
  const listed = version.chunks.slice(0, IDS_PER_LINE).map((c) => `${c.id} (${c.problem})`);
  const more = version.chunks.length - listed.length;
  const chunks = listed.length === 0 ? "" : `: ${listed.join(", ")}${more > 0 ? ` and ${more} more` : ""}`;
  return `${name}, ${formatBytes(version.size)}, cannot be restored: ${version.problem}${chunks}.`;
}
