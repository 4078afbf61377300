// Keeps two operations on the same path, or on a path and one below it, from being in
// flight together (the protocol forbids it), while unrelated paths proceed in parallel.
// Waiters are served in arrival order so operations on one path keep their order.

import { isSameOrBelow } from "../protocol/paths.js";

function overlaps(a: string, b: string): boolean {
  return a === "" || b === "" || isSameOrBelow(a, b) || isSameOrBelow(b, a);
}

interface Waiter {
  path: string;
  grant: () => void;
}

export class PathLocks {
  private readonly held: string[] = [];
  private readonly waiting: Waiter[] = [];

  get busy(): number {
    return this.held.length + this.waiting.length;
  }

  /** Resolves once `path` may be worked on; call the returned function when done. */
  acquire(path: string): Promise<() => void> {
    return new Promise((resolve) => {
      const waiter: Waiter = { path, grant: () => resolve(() => this.release(path)) };
      this.waiting.push(waiter);
      this.grantReady();
    });
  }

  private release(path: string): void {
    const i = this.held.indexOf(path);
    if (i >= 0) this.held.splice(i, 1);
    this.grantReady();
  }

  private grantReady(): void {
    const blockedBefore: string[] = [];
    for (let i = 0; i < this.waiting.length; ) {
      const waiter = this.waiting[i] as Waiter;
      const blocked =
        this.held.some((p) => overlaps(p, waiter.path)) ||
        blockedBefore.some((p) => overlaps(p, waiter.path));
      if (blocked) {
        blockedBefore.push(waiter.path);
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      this.held.push(waiter.path);
      waiter.grant();
    }
  }
}
