// `keepwatch rebuild-mirror`: makes DEST/<set>/ the latest state of the history again,
// whatever happened to it (files deleted, changed or added by hand, a crash between a
// commit and its rename). The history is the source of truth; the mirror is its view.
// Every file is rewritten the way the server writes one (temporary file, SHA-256 checked,
// fsync, rename, fsync of the folder: src/store/mirror.ts), so a reader of the mirror never
// sees a mix; a file that already matches (size, mode, mtime and SHA-256) is left alone.
// The DEST lock is held in write mode, so no server writes the mirror meanwhile.

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { lstat, readdir, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { errnoCode, KeepwatchError } from "../errors.js";
import { pathProblem } from "../protocol/paths.js";
import { treeAt, type VersionRecord } from "../store/metadata-store.js";
import type { Mirror } from "../store/mirror.js";
import type { Reporter } from "../ui/events.js";
import { CONTROL_DIR, Destination } from "./destination.js";
import { assertHistory } from "./verify.js";

export interface RebuildOptions {
  /** Only this set (default: every set of the history). */
  set?: string;
  reporter: Reporter;
}

export interface RebuildReport {
  sets: number;
  /** Files written from the history, and the bytes written. */
  written: number;
  bytes: number;
  /** Files that already matched the history. */
  unchanged: number;
  /** Folders created or whose permission bits were set. */
  folders: number;
  /** Entries of the mirror the history does not have, removed. */
  removed: number;
  /** Files the history could not give back (damaged or missing chunks); left as they were. */
  failed: number;
}

/** Rebuild the mirror of one set or of every set. Throws KW_NO_HISTORY, KW_DEST_IN_USE, KW_NOT_FOUND. */
export async function rebuildMirror(dest: string, options: RebuildOptions): Promise<RebuildReport> {
  const control = join(resolve(dest), CONTROL_DIR);
  await assertHistory(dest, control);
  const destination = await Destination.open(dest, "rebuild-mirror");
  try {
    const all = await destination.history.meta.sets();
    let sets = all;
    if (options.set !== undefined) {
      if (!all.includes(options.set)) {
        const known = all.length === 0 ? "it holds none" : `its sets are ${all.join(", ")}`;
        throw new KeepwatchError(
          "KW_NOT_FOUND",
          `The history in ${destination.root} has no set named ${JSON.stringify(options.set)} (${known}); give one of those with --set.`,
        );
      }
      sets = [options.set];
    }
    const report: RebuildReport = {
      sets: 0,
      written: 0,
      bytes: 0,
      unchanged: 0,
      folders: 0,
      removed: 0,
      failed: 0,
    };
    for (const set of sets) {
      await new SetRebuild(destination, set, await destination.mirror(set), options.reporter, report).run();
      report.sets++;
    }
    return report;
  } finally {
    await destination.close();
  }
}

class SetRebuild {
  constructor(
    private readonly destination: Destination,
    private readonly set: string,
    private readonly mirror: Mirror,
    private readonly reporter: Reporter,
    private readonly report: RebuildReport,
  ) {}

  async run(): Promise<void> {
    await this.removeExtras("");
    // Sorted by path, so a folder comes before everything in it; read a page at a time, so
    // that what the rebuild holds does not grow with the set.
    for await (const version of treeAt(this.destination.history.meta, this.set, undefined, "")) {
      if (version.kind === "dir") await this.rebuildFolder(version);
      else if (version.kind === "file") await this.rebuildFile(version);
    }
  }

  private async rebuildFolder(version: VersionRecord): Promise<void> {
    try {
      const st = await lstat(join(this.mirror.root, version.path));
      if (st.isDirectory() && (st.mode & 0o7777) === version.mode) return;
    } catch (error) {
      if (errnoCode(error) !== "ENOENT") throw error;
    }
    await this.mirror.makeFolder(version.path, version.mode);
    this.report.folders++;
    this.reporter.emit({
      kind: "file-done",
      path: this.shown(version.path),
      op: "mkdir",
      size: 0,
      set: this.set,
    });
  }

  /**
   * Remove, below the set-relative folder `rel`, every entry the latest tree does not have
   * as that kind. Only real folders are entered: a link is an entry like a file.
   */
  private async removeExtras(rel: string): Promise<void> {
    const abs = join(this.mirror.root, rel);
    let names: string[];
    try {
      names = await readdir(abs);
    } catch (error) {
      if (errnoCode(error) === "ENOENT") return;
      throw error;
    }
    for (const name of names.sort()) {
      const path = rel === "" ? name : `${rel}/${name}`;
      const st = await lstat(join(abs, name));
      // The path's newest version, looked up one by one rather than a map of the whole tree.
      const want = await this.destination.history.meta.versionAt(this.set, path);
      const fits =
        want !== null && want.kind !== "deleted" && (want.kind === "dir" ? st.isDirectory() : st.isFile());
      if (fits && st.isDirectory()) await this.removeExtras(path);
      if (fits) continue;
      // A file where a folder goes, a folder where a file goes, or no such path: it goes.
      if (pathProblem(path) === null) await this.mirror.remove(path);
      else await rm(join(abs, name), { recursive: true, force: true });
      this.report.removed++;
      this.reporter.emit({ kind: "file-done", path: this.shown(path), op: "delete", size: 0, set: this.set });
    }
  }

  private async rebuildFile(version: VersionRecord): Promise<void> {
    const shown = this.shown(version.path);
    const sha = version.sha256 as Buffer;
    if (await this.matches(version, sha)) {
      this.report.unchanged++;
      return;
    }
    this.reporter.emit({ kind: "queued", files: 1, bytes: version.size });
    this.reporter.emit({ kind: "file-start", path: shown, size: version.size });
    const history = this.destination.history;
    try {
      const chunks = await history.chunksOf(sha);
      if (!chunks) {
        throw new KeepwatchError("KW_CHUNK_MISSING", "its content is not in the history index");
      }
      const reporter = this.reporter;
      let moved = 0;
      async function* counted(): AsyncIterable<Buffer> {
        for await (const piece of history.read(chunks ?? [])) {
          moved += piece.length;
          reporter.emit({ kind: "file-progress", path: shown, bytes: moved, size: version.size });
          yield piece;
        }
      }
      const pending = await this.mirror.writePending(counted(), sha);
      await this.mirror.install(pending, version.path, { mtimeMs: version.mtimeMs, mode: version.mode });
    } catch (error) {
      if (!(error instanceof KeepwatchError)) throw error;
      this.report.failed++;
      this.reporter.emit({
        kind: "file-skipped",
        path: shown,
        reason: `${error.message.replace(/\.$/, "")}; the mirror's file was left as it was`,
        retry: false,
      });
      return;
    }
    this.report.written++;
    this.report.bytes += version.size;
    this.reporter.emit({ kind: "file-done", path: shown, op: "restore", size: version.size, set: this.set });
  }

  /** True when the mirror already has exactly this version: a plain file of its size, mode, mtime and hash. */
  private async matches(version: VersionRecord, sha: Buffer): Promise<boolean> {
    const abs = join(this.mirror.root, version.path);
    let st: Awaited<ReturnType<typeof lstat>>;
    try {
      st = await lstat(abs);
    } catch (error) {
      if (errnoCode(error) === "ENOENT" || errnoCode(error) === "ENOTDIR") return false;
      throw error;
    }
    if (!st.isFile() || st.size !== version.size || (st.mode & 0o7777) !== version.mode) return false;
    // The mtime crosses the wire as a float of milliseconds: a difference below 1 ms is rounding.
    if (Math.abs(st.mtimeMs - version.mtimeMs) >= 1) return false;
    const hash = createHash("sha256");
    for await (const piece of createReadStream(abs)) hash.update(piece as Buffer);
    return hash.digest().equals(sha);
  }

  private shown(path: string): string {
    return `${this.set}/${path}`;
  }
}
