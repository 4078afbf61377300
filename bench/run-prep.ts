// What every timed run of a benchmark is preceded by (/work/shared/BENCHMARKING.md): `sync`, so
// that one run's write-back does not land in the next; a wait for a quiet machine (other
// sessions share its 2 cores); ~2 GiB of memory touched and freed in a separate process
// (pitfall 1); the load average printed (pitfall 3); and a fingerprint of the sources, since
// others edit src/ while benchmarks run the CLI from the working tree.

import { busyOver, fmt, GiB, humanBytes, loadLine, sourceFingerprint, syncDisks, warmMemory } from "./lib.js";

export interface Prep {
  /** source fingerprint when the run started; whether it differs from the first run's or changed during it */
  source: string;
  sourceChanged: boolean;
  load: string;
  warmupS: number;
  busyBefore: number;
  waitedS: number;
  quiet: boolean;
}

export interface PrepOptions {
  /** Do not wait for a quiet machine (a sanity check of a bench itself): runs are flagged instead. */
  noWait?: boolean;
  /** Printed before each line (the scripts indent per level). */
  indent?: string;
  /** Memory touched and freed before each run; 2 GiB by default. */
  warmupBytes?: number;
  /** The machine counts as quiet under this fraction of all cores busy for one second (0.25). */
  quietBusy?: number;
  /** The longest wait for a quiet machine, in seconds (180); the run is flagged as contended after it. */
  quietWaitS?: number;
}

export class RunPreparer {
  readonly noWait: boolean;
  readonly warmupBytes: number;
  readonly quietBusy: number;
  readonly quietWaitS: number;
  private readonly indent: string;
  private firstSource = "";

  constructor(options: PrepOptions = {}) {
    this.noWait = options.noWait ?? false;
    this.indent = options.indent ?? "  ";
    this.warmupBytes = options.warmupBytes ?? 2 * GiB;
    this.quietBusy = options.quietBusy ?? 0.25;
    this.quietWaitS = options.quietWaitS ?? 180;
  }

  /** The fingerprint of the sources at the first prepared run ("" before it). */
  get firstSourceFingerprint(): string {
    return this.firstSource;
  }

  /** One sentence for a benchmark's method text. */
  describe(): string {
    return (
      `Before each timed run: \`sync\` (flushes earlier write-back; drops no cache), ` +
      (this.noWait
        ? "no wait for a quiet machine (--no-wait), "
        : `a wait (at most ${this.quietWaitS} s) until the CPUs were under ${this.quietBusy * 100}% busy for 1 s, `) +
      `a separate Node process touching and freeing ${humanBytes(this.warmupBytes)}, the load average printed.`
    );
  }

  async prepare(label: string): Promise<Prep> {
    syncDisks();
    const q = await this.waitQuiet();
    const warmupS = warmMemory(this.warmupBytes);
    const source = sourceFingerprint();
    if (this.firstSource === "") this.firstSource = source;
    const sourceChanged = source !== this.firstSource;
    if (sourceChanged)
      console.log(
        `${this.indent}[${label}] warning: the sources changed since the first run (now ${source})`,
      );
    const load = loadLine();
    const over = `over ${this.quietBusy * 100}%: run is contended`;
    const waited = this.noWait
      ? `--no-wait${q.quiet ? "" : `; ${over}`}`
      : `waited ${fmt(q.waitedS, 0)} s${q.quiet ? "" : `, never under ${this.quietBusy * 100}%: run is contended`}`;
    console.log(
      `${this.indent}[${label}] load average ${load}; machine ${fmt(q.busy * 100, 0)}% busy in the second before ` +
        `(${waited}); warm-up touched ${humanBytes(this.warmupBytes)} in ${fmt(warmupS, 2)} s`,
    );
    return { source, sourceChanged, load, warmupS, busyBefore: q.busy, waitedS: q.waitedS, quiet: q.quiet };
  }

  /** Flags a run during which the sources changed. */
  checkAfter(label: string, prep: Prep): void {
    const now = sourceFingerprint();
    if (now !== prep.source) {
      prep.sourceChanged = true;
      console.log(
        `${this.indent}[${label}] warning: the sources changed during this run (${prep.source} → ${now})`,
      );
    }
  }

  /** Waits until the machine has been under quietBusy busy for one second, at most quietWaitS. */
  private async waitQuiet(): Promise<{ busy: number; waitedS: number; quiet: boolean }> {
    const t0 = performance.now();
    if (this.noWait) {
      const busy = await busyOver(200);
      return { busy, waitedS: 0, quiet: busy < this.quietBusy };
    }
    for (;;) {
      const busy = await busyOver(1000);
      const waitedS = (performance.now() - t0) / 1000;
      if (busy < this.quietBusy) return { busy, waitedS, quiet: true };
      if (waitedS > this.quietWaitS) return { busy, waitedS, quiet: false };
    }
  }
}
