// Coalesces change events per path: a path is handed on once it has been quiet for
// `quietMs`, or after `maxWaitMs` at the latest so that a file written without pause
// (a growing log) is still backed up now and then.

export interface DebouncerOptions {
  quietMs: number;
  maxWaitMs: number;
  /** Receives the paths that became quiet, in the order they were first touched. */
  onQuiet: (paths: string[]) => void;
  now?: () => number;
}

interface Pending {
  first: number;
  last: number;
}

export class Debouncer {
  private readonly pending = new Map<string, Pending>();
  private timer: NodeJS.Timeout | null = null;
  private readonly now: () => number;

  constructor(private readonly options: DebouncerOptions) {
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.pending.size;
  }

  touch(path: string): void {
    const now = this.now();
    const entry = this.pending.get(path);
    if (entry) entry.last = now;
    else this.pending.set(path, { first: now, last: now });
    this.schedule();
  }

  /** Hand on everything now (used when the client stops or rescans). */
  flush(): void {
    this.fire(Number.POSITIVE_INFINITY);
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.pending.clear();
  }

  private dueAt(entry: Pending): number {
    return Math.min(entry.last + this.options.quietMs, entry.first + this.options.maxWaitMs);
  }

  private schedule(): void {
    if (this.timer) return;
    let next = Number.POSITIVE_INFINITY;
    for (const entry of this.pending.values()) next = Math.min(next, this.dueAt(entry));
    if (next === Number.POSITIVE_INFINITY) return;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.fire(this.now());
      },
      Math.max(0, next - this.now()),
    );
  }

  private fire(now: number): void {
    const ready: string[] = [];
    for (const [path, entry] of this.pending) {
      if (this.dueAt(entry) <= now) ready.push(path);
    }
    for (const path of ready) this.pending.delete(path);
    if (ready.length > 0) this.options.onQuiet(ready);
    this.schedule();
  }
}
