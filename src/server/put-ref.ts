// The PUT_REF request: a new version of a file whose content the history may already
// hold (a rename, a copy, a file sent again with --force). No content bytes travel.

import { KeepwatchError } from "../errors.js";
import type { FileHeader } from "../protocol/history-messages.js";
import { pathProblem } from "../protocol/paths.js";
import type { ChunkRefs } from "../store/metadata-store.js";
import type { PendingFile } from "../store/mirror.js";
import { ioError } from "./put.js";
import type { RequestContext } from "./session.js";

export async function handlePutRef(id: number, m: FileHeader, ctx: RequestContext): Promise<void> {
  const problem = pathProblem(m.path);
  if (problem !== null) {
    return ctx.reject(
      id,
      new KeepwatchError("KW_BAD_PATH", `The path ${JSON.stringify(m.path)} was refused because ${problem}.`),
    );
  }
  const since = ctx.history.chunks.lossMark();
  // Only a content this client's own sets hold: another client's is "unknown" (access.ts).
  const chunks = await ctx.reuseScope().content(m.sha256);
  const stored = chunks?.totalLength();
  if (!chunks || stored !== m.size) {
    return ctx.reject(
      id,
      new KeepwatchError(
        "KW_CONTENT_UNKNOWN",
        `The server does not hold the content of ${JSON.stringify(m.path)}; send the file itself.`,
      ),
    );
  }
  try {
    await commitFromHistory(ctx, m, chunks, since);
  } catch (error) {
    return ctx.reject(id, ioError(error, m.path));
  }
  ctx.reporter.emit({ kind: "file-done", path: m.path, op: "put", size: m.size, set: ctx.set });
  ctx.ack(id);
}

/**
 * Record a version whose chunks are all in the history and write it to the mirror: the
 * mirror file is assembled (and its hash checked) first, then the version committed,
 * then the file put in place. `since` is the chunk store's loss mark taken before the
 * chunks were put or looked up (History.commit).
 */
export async function commitFromHistory(
  ctx: RequestContext,
  m: FileHeader,
  chunks: ChunkRefs,
  since: number,
): Promise<void> {
  let pending: PendingFile;
  try {
    pending = await ctx.mirror.writePending(ctx.history.read(chunks), m.sha256);
  } catch (error) {
    throw await lossOr(ctx, since, error);
  }
  await commitPending(ctx, m, chunks, since, pending);
}

/**
 * A chunk the store lost after it was counted stored reads as missing: the failure that
 * lost it (a full disk, say) when there was one since `since`, else `error` itself.
 */
export async function lossOr(ctx: RequestContext, since: number, error: unknown): Promise<unknown> {
  try {
    await ctx.history.chunks.flush(since);
  } catch (loss) {
    return loss;
  }
  return error;
}

/** Commit the version whose mirror file is `pending` (assembled and checked), then install it. */
export async function commitPending(
  ctx: RequestContext,
  m: FileHeader,
  chunks: ChunkRefs,
  since: number,
  pending: PendingFile,
): Promise<void> {
  await ctx.changing(m.path, async () => {
    try {
      await ctx.history.commit(
        {
          set: ctx.set,
          path: m.path,
          kind: "file",
          size: m.size,
          mtimeMs: m.mtimeMs,
          mode: m.mode,
          content: { sha256: m.sha256, chunks },
        },
        since,
      );
    } catch (error) {
      await ctx.mirror.discard(pending);
      throw error;
    }
    await ctx.mirror.install(pending, m.path, { mtimeMs: m.mtimeMs, mode: m.mode });
  });
}
