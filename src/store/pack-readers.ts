// Read-only file handles of pack files, kept open across reads and shared by concurrent
// readers. A handle is closed only when no read is using it, so a file descriptor is never
// closed (and its number reused for another file) under a positioned read in flight.

import { constants } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";

interface Entry {
  handle: Promise<FileHandle>;
  users: number;
  /** No new reads; close once the last one is done. */
  retired: boolean;
}

export class PackReaders {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly storeFolder: string,
    /** Idle handles kept open at most. */
    private readonly maxOpen = 32,
  ) {}

  /**
   * Up to `length` bytes of the pack at `path` (relative to the store folder) from
   * `offset`; fewer when the file ends first. Rejects with the open error (ENOENT when the
   * pack was removed meanwhile).
   */
  async read(path: string, offset: number, length: number): Promise<Buffer> {
    const entry = this.acquire(path);
    try {
      const handle = await entry.handle;
      const out = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(out, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done === length ? out : out.subarray(0, done);
    } finally {
      this.release(path, entry);
    }
  }

  /** The pack at `path` is going away: new reads open it afresh, this handle closes when idle. */
  retire(path: string): void {
    const entry = this.entries.get(path);
    if (!entry) return;
    this.entries.delete(path);
    entry.retired = true;
    if (entry.users === 0) closeEntry(entry);
  }

  /** Retire every handle (the store is closing). */
  closeAll(): void {
    for (const path of [...this.entries.keys()]) this.retire(path);
  }

  private acquire(path: string): Entry {
    let entry = this.entries.get(path);
    if (!entry) {
      const handle = open(join(this.storeFolder, path), constants.O_RDONLY);
      entry = { handle, users: 0, retired: false };
      this.entries.set(path, entry);
      const created = entry;
      // A failed open is forgotten at once, so the next read tries again.
      handle.catch(() => {
        if (this.entries.get(path) === created) this.entries.delete(path);
        created.retired = true;
      });
    }
    entry.users++;
    return entry;
  }

  private release(path: string, entry: Entry): void {
    entry.users--;
    if (entry.retired) {
      if (entry.users === 0) closeEntry(entry);
      return;
    }
    if (this.entries.size > this.maxOpen) {
      for (const [other, e] of this.entries) {
        if (this.entries.size <= this.maxOpen) break;
        if (e.users === 0 && other !== path) this.retire(other);
      }
    }
  }
}

function closeEntry(entry: Entry): void {
  entry.handle.then(
    (handle) => handle.close().catch(() => {}),
    () => {},
  );
}
