// The MKDIR and DELETE requests on the server: folder creation and removal in the mirror.

import { KeepwatchError } from "../errors.js";
import type { Delete, Mkdir } from "../protocol/messages.js";
import { pathProblem } from "../protocol/paths.js";
import { ioError } from "./put.js";
import type { RequestContext } from "./session.js";

function badPath(path: string, problem: string): KeepwatchError {
  return new KeepwatchError(
    "KW_BAD_PATH",
    `The path ${JSON.stringify(path)} was refused because ${problem}.`,
  );
}

export async function handleMkdir(id: number, message: Mkdir, ctx: RequestContext): Promise<void> {
  const problem = pathProblem(message.path);
  if (problem !== null) return ctx.reject(id, badPath(message.path, problem));
  try {
    const { path, mode } = message;
    await ctx.changing(path, async () => {
      await ctx.history.commit({ set: ctx.set, path, kind: "dir", size: 0, mtimeMs: 0, mode });
      await ctx.mirror.makeFolder(path, mode);
    });
  } catch (error) {
    return ctx.reject(id, ioError(error, message.path));
  }
  ctx.reporter.emit({ kind: "file-done", path: message.path, op: "mkdir", size: 0, set: ctx.set });
  ctx.ack(id);
}

export async function handleDelete(id: number, message: Delete, ctx: RequestContext): Promise<void> {
  const problem = pathProblem(message.path);
  if (problem !== null) return ctx.reject(id, badPath(message.path, problem));
  try {
    const { path } = message;
    await ctx.changing(path, async () => {
      await ctx.history.commit({ set: ctx.set, path, kind: "deleted", size: 0, mtimeMs: 0, mode: 0 });
      await ctx.mirror.remove(path);
    });
  } catch (error) {
    return ctx.reject(id, ioError(error, message.path));
  }
  ctx.reporter.emit({ kind: "file-done", path: message.path, op: "delete", size: 0, set: ctx.set });
  ctx.ack(id);
}
