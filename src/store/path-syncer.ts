// fsync of a file or folder by its path, coalesced: callers that arrive while an fsync of
// the same path runs share the next one (which starts after theirs arrived, so it covers
// everything they wrote before calling). Used for the mirror's folders after a rename and
// for SQLite's write-ahead logs (wal-sync.ts).

import { constants } from "node:fs";
import { open } from "node:fs/promises";

export class PathSyncer {
  private readonly running = new Map<string, Promise<void>>();
  private readonly queued = new Map<string, Promise<void>>();

  /** Resolves once an fsync of `path` that started after this call has completed. */
  sync(path: string): Promise<void> {
    const waiting = this.queued.get(path);
    if (waiting) return waiting;
    const current = this.running.get(path);
    if (!current) return this.start(path);
    const startNext = () => {
      this.queued.delete(path);
      return this.start(path);
    };
    const next = current.then(startNext, startNext);
    this.queued.set(path, next);
    return next;
  }

  private start(path: string): Promise<void> {
    const run = (async () => {
      // Read-only is enough: fsync applies to the file, whatever the descriptor's mode.
      const handle = await open(path, constants.O_RDONLY);
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    })();
    const tracked = run.finally(() => {
      if (this.running.get(path) === tracked) this.running.delete(path);
    });
    this.running.set(path, tracked);
    return tracked;
  }
}

/** fsync a folder, so the entries created or removed in it are durable. */
export async function syncFolder(path: string): Promise<void> {
  const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
