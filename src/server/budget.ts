// A server-wide allowance of memory for small files held between their first and last
// frame, so that no number of clients or requests can make the server buffer without
// bound; a file that does not fit goes through a temporary file instead.

export class ByteBudget {
  private used = 0;

  constructor(readonly limit: number) {}

  /** Reserve `bytes`; false when that would exceed the limit. */
  take(bytes: number): boolean {
    if (this.used + bytes > this.limit) return false;
    this.used += bytes;
    return true;
  }

  give(bytes: number): void {
    this.used = Math.max(0, this.used - bytes);
  }

  get inUse(): number {
    return this.used;
  }
}
