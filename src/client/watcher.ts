// Watches the source folder recursively (new sub-folders included) and reports the
// set-relative paths that something happened to. Event types are not trusted: the client
// looks at the disk for each path. When the watcher fails, the client rescans instead.

import { relative, sep } from "node:path";
import watcher from "@parcel/watcher";

export interface WatchHandle {
  close(): Promise<void>;
}

export interface WatchCallbacks {
  onPaths: (paths: string[]) => void;
  /** The watcher dropped events or failed; everything must be rescanned. */
  onTrouble: (message: string) => void;
}

export async function watchTree(root: string, callbacks: WatchCallbacks): Promise<WatchHandle> {
  const subscription = await watcher.subscribe(root, (error, events) => {
    if (error) {
      callbacks.onTrouble(error.message);
      return;
    }
    const paths: string[] = [];
    for (const event of events) {
      const rel = relative(root, event.path);
      if (rel === "" || rel === ".." || rel.startsWith(`..${sep}`)) continue;
      paths.push(sep === "/" ? rel : rel.split(sep).join("/"));
    }
    if (paths.length > 0) callbacks.onPaths(paths);
  });
  return { close: () => subscription.unsubscribe() };
}
