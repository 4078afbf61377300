// A server-wide allowance of memory, so that no number of clients or requests can make
// the server hold more than a fixed amount: small files between their first and last
// frame (a file that does not fit goes through a temporary file instead), and the chunk
// lists of manifests (a manifest waits until its list fits).

export class ByteBudget {
  private used = 0;
  private readonly waiters: { bytes: number; resolve: () => void }[] = [];

  constructor(readonly limit: number) {}

  /**
   * Reserve `bytes`, waiting (first come, first served) until they fit. The caller must
   * check that `bytes` is at most `limit`, or it waits for ever.
   */
  acquire(bytes: number): Promise<void> {
    if (this.waiters.length === 0 && this.take(bytes)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ bytes, resolve }));
  }

  /** Reserve `bytes`; false when that would exceed the limit. */
  take(bytes: number): boolean {
    if (this.used + bytes > this.limit) return false;
    this.used += bytes;
    return true;
  }

  give(bytes: number): void {
    this.used = Math.max(0, this.used - bytes);
    for (let next = this.waiters[0]; next && this.take(next.bytes); next = this.waiters[0]) {
      this.waiters.shift();
      next.resolve();
    }
  }

  get inUse(): number {
    return this.used;
  }
}
