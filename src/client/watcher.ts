// Watches the source folder recursively, new and moved-in sub-folders included, and
// reports the set-relative paths that something happened to. It keeps one inotify watch
// (fs.watch) per folder and updates that set itself as folders appear, move and vanish:
// see docs/decisions.md for why not @parcel/watcher or chokidar. Event types are not
// trusted: the client looks at the disk for each path. When watches run out, the
// client falls back to rescanning (onTrouble).

import { type FSWatcher, lstatSync, readdirSync, watch } from "node:fs";
import { join } from "node:path";
import { errnoCode } from "../errors.js";

export interface WatchHandle {
  close(): Promise<void>;
}

export interface WatchCallbacks {
  onPaths: (paths: string[]) => void;
  /** Watching is incomplete (for example the inotify limit was reached): rescan instead. */
  onTrouble: (message: string) => void;
}

function joinRel(parent: string, name: string): string {
  return parent === "" ? name : `${parent}/${name}`;
}

class TreeWatcher implements WatchHandle {
  /** One watcher per folder, by set-relative path ("" is SRC itself). */
  private readonly watchers = new Map<string, FSWatcher>();
  private closed = false;
  private troubled = false;

  constructor(
    private readonly root: string,
    private readonly callbacks: WatchCallbacks,
  ) {}

  start(): void {
    this.addTree("");
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const watcher of this.watchers.values()) watcher.close();
    this.watchers.clear();
  }

  /** Watch `rel` and every folder below it. */
  private addTree(rel: string): void {
    if (this.closed || !this.add(rel)) return;
    let entries: import("node:fs").Dirent[];
    try {
      entries = readdirSync(join(this.root, rel), { withFileTypes: true });
    } catch {
      return; // gone or unreadable: the scan reports it
    }
    for (const entry of entries) {
      if (entry.isDirectory()) {
        const child = joinRel(rel, entry.name);
        if (!this.watchers.has(child)) this.addTree(child);
      }
    }
  }

  private add(rel: string): boolean {
    if (this.watchers.has(rel)) return true;
    try {
      const watcher = watch(join(this.root, rel), { persistent: true }, (_event, name) =>
        this.onEvent(rel, name === null ? null : String(name)),
      );
      // A watched folder that disappears reports an error on some systems: drop it.
      watcher.on("error", () => this.removeTree(rel));
      this.watchers.set(rel, watcher);
      return true;
    } catch (error) {
      const code = errnoCode(error);
      if (code === "ENOENT" || code === "ENOTDIR" || code === "EACCES") return false;
      this.trouble(
        code === "ENOSPC"
          ? "the system's limit of inotify watches is reached (raise fs.inotify.max_user_watches)"
          : `a folder cannot be watched (${code ?? String(error)})`,
      );
      return false;
    }
  }

  private removeTree(rel: string): void {
    for (const [path, watcher] of this.watchers) {
      if (rel === "" || path === rel || path.startsWith(`${rel}/`)) {
        watcher.close();
        this.watchers.delete(path);
      }
    }
  }

  private onEvent(dir: string, name: string | null): void {
    if (this.closed) return;
    if (name === null) {
      // The system did not say which entry changed: look at the whole folder.
      this.callbacks.onPaths([dir]);
      return;
    }
    const rel = joinRel(dir, name);
    let isFolder = false;
    try {
      isFolder = lstatSync(join(this.root, rel)).isDirectory();
    } catch {
      // gone: handled below
    }
    // Keep the watch set in step at once, so nothing written into a new folder is missed;
    // whatever was written before its watch existed is found by the scan of `rel`.
    if (isFolder) this.addTree(rel);
    else if (this.watchers.has(rel)) this.removeTree(rel);
    this.callbacks.onPaths([rel]);
  }

  private trouble(message: string): void {
    if (this.troubled) return;
    this.troubled = true;
    this.callbacks.onTrouble(message);
  }
}

export async function watchTree(root: string, callbacks: WatchCallbacks): Promise<WatchHandle> {
  const watcher = new TreeWatcher(root, callbacks);
  watcher.start();
  return watcher;
}
