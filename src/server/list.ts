// The LIST request on the server (protocol section 11.3): the tree of the connection's set
// at a moment, every version of a path, or, on a connection bound to no set, the sets.

import { KeepwatchError, ProtocolError } from "../errors.js";
import { type Entry, encodeHistory, type ListRequest, TIME_NOW } from "../protocol/history-messages.js";
import { MessageType } from "../protocol/messages.js";
import { pathProblem } from "../protocol/paths.js";
import { historyOf, treeAt, type VersionRecord } from "../store/metadata-store.js";
import type { RequestContext } from "./session.js";

export async function handleList(id: number, message: ListRequest, ctx: RequestContext): Promise<void> {
  // A connection bound to no set may send only LIST with path "" and mode 0.
  if (ctx.set === "") {
    if (message.path !== "" || message.mode !== 0) {
      throw new ProtocolError(
        "KW_UNEXPECTED_MESSAGE",
        "A connection bound to no set may only list the sets (LIST with an empty path and mode 0).",
      );
    }
    return answer(id, ctx, () => listSets(id, message.time, ctx));
  }
  const refusal = historyPathRefusal(message.path);
  if (refusal) return ctx.reject(id, refusal);
  return answer(id, ctx, async () => {
    const meta = ctx.history.meta;
    // The tree and the history are read a page at a time, so that a set of any size is
    // listed in bounded memory.
    const versions =
      message.mode === 0
        ? treeAt(meta, ctx.set, atTime(message.time), message.path)
        : historyOf(meta, ctx.set, message.path);
    let found = false;
    for await (const version of versions) {
      found = true;
      if (!ctx.isOpen) return;
      await ctx.sendAndWait(MessageType.ENTRY, id, encodeHistory.entry(toEntry(version)));
    }
    if (!found) {
      ctx.reject(id, notFound(ctx.set, message.path, message.mode === 0 ? message.time : null));
      return;
    }
    ctx.ack(id);
  });
}

/**
 * One ENTRY per set that has a version at or before `time`: kind dir, path the set's
 * name, size the number of files in its tree at `time`, versionId and time those of its
 * newest version (deletes included). An empty list is a valid answer (ACK alone).
 */
async function listSets(id: number, time: number, ctx: RequestContext): Promise<void> {
  const meta = ctx.history.meta;
  const readable = ctx.readableSets();
  for (const set of await meta.sets()) {
    if (readable !== null && !readable.includes(set)) continue;
    const newest = await meta.newestVersion(set, atTime(time));
    if (newest === null) continue;
    const files = await meta.fileCountAt(set, atTime(time));
    if (!ctx.isOpen) return;
    await ctx.sendAndWait(
      MessageType.ENTRY,
      id,
      encodeHistory.entry({
        path: set,
        kind: "dir",
        size: files,
        mtimeMs: 0,
        mode: 0,
        sha256: Buffer.alloc(0),
        versionId: newest.id,
        time: newest.time,
      }),
    );
  }
  ctx.ack(id);
}

/** Run the body of a history answer; a failure of the store ends the request, not the connection. */
async function answer(id: number, ctx: RequestContext, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (error) {
    if (error instanceof ProtocolError) throw error;
    ctx.reject(id, historyError(error));
  }
}

/** The metadata store's time argument for a wire time: undefined means now. */
export function atTime(time: number): number | undefined {
  return time === TIME_NOW ? undefined : time;
}

export function toEntry(version: VersionRecord): Entry {
  return {
    path: version.path,
    kind: version.kind,
    size: version.size,
    mtimeMs: version.mtimeMs,
    mode: version.mode,
    sha256: version.kind === "file" && version.sha256 ? version.sha256 : Buffer.alloc(0),
    versionId: version.id,
    time: version.time,
  };
}

/** KW_BAD_PATH for a path that is neither "" (the whole set) nor a valid set-relative path. */
export function historyPathRefusal(path: string): KeepwatchError | null {
  if (path === "") return null;
  const problem = pathProblem(path);
  if (problem === null) return null;
  return new KeepwatchError(
    "KW_BAD_PATH",
    `The path ${JSON.stringify(path)} was refused because ${problem}.`,
  );
}

/** KW_NOT_FOUND for a LIST or RESTORE that matched nothing (`time` TIME_NOW for now, null for any time). */
export function notFound(set: string, path: string, time: number | null): KeepwatchError {
  const where = JSON.stringify(path === "" ? set : `${set}/${path}`);
  if (time === null) {
    return new KeepwatchError("KW_NOT_FOUND", `Nothing was ever backed up at ${where}; check the path.`);
  }
  const what =
    time === TIME_NOW
      ? `Nothing is at ${where} now`
      : `Nothing was at ${where} at ${new Date(time).toISOString()}`;
  return new KeepwatchError("KW_NOT_FOUND", `${what}; check the path and the time.`);
}

/** A failure while reading the history, as the request's ERROR. */
export function historyError(error: unknown): KeepwatchError {
  if (error instanceof KeepwatchError) return error;
  return new KeepwatchError(
    "KW_SERVER_IO",
    `The server could not read its history (${error instanceof Error ? error.message : String(error)}); check the server's log and run "keepwatch verify".`,
    { cause: error },
  );
}
