// The RESTORE request on the server (protocol section 11.3): the tree of the connection's
// set at a moment, at or below a path, as ENTRY frames with each file's content streamed
// after its entry in FILE_DATA frames, at the pace the client's socket takes them.

import { ChunkList } from "../chunking/chunk-list.js";
import { KeepwatchError } from "../errors.js";
import { encodeHistory, type RestoreRequest } from "../protocol/history-messages.js";
import { MessageType } from "../protocol/messages.js";
import { treeAt } from "../store/metadata-store.js";
import { atTime, historyError, historyPathRefusal, notFound, toEntry } from "./list.js";
import type { RequestContext } from "./session.js";

/** Largest FILE_DATA payload sent; well below any peer's frame limit. */
export const FILE_DATA_PIECE = 256 * 1024;

export async function handleRestore(id: number, message: RestoreRequest, ctx: RequestContext): Promise<void> {
  const refusal = historyPathRefusal(message.path);
  if (refusal) return ctx.reject(id, refusal);
  try {
    // Sorted by path, so every folder comes before what it contains; read a page at a time.
    let found = false;
    for await (const version of treeAt(ctx.history.meta, ctx.set, atTime(message.time), message.path)) {
      found = true;
      if (!ctx.isOpen) return;
      const entry = toEntry(version);
      const chunks =
        entry.kind === "file" && entry.size > 0 ? await ctx.history.chunksOf(entry.sha256) : new ChunkList(1);
      // Checked before the ENTRY goes out, so that FILE_DATA always adds up to its size.
      if (chunks === null) {
        throw new KeepwatchError(
          "KW_CHUNK_MISSING",
          `The history has no content for ${JSON.stringify(`${ctx.set}/${entry.path}`)} (its index is damaged); run "keepwatch verify" on the server.`,
        );
      }
      const total = chunks.totalLength();
      if (entry.kind === "file" && total !== entry.size) {
        throw new KeepwatchError(
          "KW_CHUNK_CORRUPT",
          `The chunks of ${JSON.stringify(`${ctx.set}/${entry.path}`)} add up to ${total} bytes instead of ${entry.size}; run "keepwatch verify" on the server.`,
        );
      }
      await ctx.sendAndWait(MessageType.ENTRY, id, encodeHistory.entry(entry));
      // The store checks every chunk against its id as it reads it back.
      for await (const data of ctx.history.read(chunks)) {
        for (let offset = 0; offset < data.length; offset += FILE_DATA_PIECE) {
          if (!ctx.isOpen) return;
          await ctx.sendAndWait(MessageType.FILE_DATA, id, data.subarray(offset, offset + FILE_DATA_PIECE));
        }
      }
    }
    if (!found) return ctx.reject(id, notFound(ctx.set, message.path, message.time));
    ctx.ack(id);
  } catch (error) {
    // Possibly in the middle of a file: the client throws away what it received of it.
    ctx.reject(id, historyError(error));
  }
}
