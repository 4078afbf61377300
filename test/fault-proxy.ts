// A TCP proxy on 127.0.0.1 that breaks connections on purpose, for tests of how keepwatch
// lives with a bad network. While it is faulty, each connection it accepts gets a fault
// plan drawn from a seeded generator: a cut (both sides closed, or reset) once a random
// number of bytes has passed one way or after a random time, a stall (nothing forwarded for
// a while), a slow period (throttled to a few KiB/s); after a cut the proxy may also refuse
// new connections for a while (it stops listening, so connecting fails with ECONNREFUSED).
// It counts the payload it forwards each way (TCP payload, not headers) and every fault it
// caused. Switched to clean, it lifts every fault, also on the connections already open,
// and forwards faithfully, so that a client can converge. A test can also cut, hold or
// refuse on command (cutAll, cutWhenUpReaches, stallAll, refuse). It never looks at the
// bytes: TLS passes through untouched.

import { connect, createServer, type Server, type Socket } from "node:net";
import { Rng } from "./fuzz-lib.js";

const HOST = "127.0.0.1";
/** A direction stops reading from its source while this many bytes wait to be forwarded. */
const HIGH_WATER = 1024 * 1024;
/** Fault events kept for `describe()`. */
const LOG_LINES = 40;

export type Direction = "up" | "down";
/** "close": both sockets destroyed (FIN, or RST if unread data waits); "reset": RST both ways. */
export type CutStyle = "close" | "reset";

/** A range [lo, hi] of numbers. */
export type Range = readonly [number, number];

/**
 * How likely each fault is, and how large. A connection draws its plan from these once,
 * when it is accepted. Ranges marked log-uniform favour their small end.
 */
export interface FaultSettings {
  /** Chance that a connection is cut at all (otherwise it lives until its peers close it). */
  cutChance: number;
  /** Of the cuts, the share due at a byte offset; the others come after a time. */
  byteCutShare: number;
  /** Of the byte-offset cuts, the share counted on the server → client bytes. */
  downCutShare: number;
  /** Byte offsets of a cut in the client → server bytes (log-uniform). */
  upCutBytes: Range;
  /** Byte offsets of a cut in the server → client bytes (log-uniform). */
  downCutBytes: Range;
  /** When a cut after a time comes, in ms after the connection was accepted (log-uniform). */
  cutAfterMs: Range;
  /** When a connection waiting for its byte offset is cut anyway (log-uniform): idle links break too. */
  byteCutDeadlineMs: Range;
  /** Of the cuts, the share made with a reset (the others close both sides). */
  resetShare: number;
  /** Gaps between one stall or slow period and the next, in ms. */
  faultGapMs: Range;
  /** After each gap: the chance of a stall, else the chance of a slow period (else nothing). */
  stallChance: number;
  slowChance: number;
  /** How long a stall lasts (nothing forwarded either way). */
  stallMs: Range;
  /** How slow a slow period is (log-uniform), and how long it lasts. */
  slowBytesPerSecond: Range;
  slowMs: Range;
  /** Chance that a cut is followed by a period in which new connections are refused. */
  refuseChance: number;
  refuseMs: Range;
}

export const DEFAULT_FAULTS: FaultSettings = {
  cutChance: 1,
  byteCutShare: 0.5,
  downCutShare: 0.15,
  upCutBytes: [256, 4 * 1024 * 1024],
  downCutBytes: [64, 64 * 1024],
  cutAfterMs: [10, 1000],
  byteCutDeadlineMs: [50, 1500],
  resetShare: 0.5,
  faultGapMs: [50, 600],
  stallChance: 0.35,
  slowChance: 0.3,
  stallMs: [50, 800],
  slowBytesPerSecond: [16 * 1024, 2 * 1024 * 1024],
  slowMs: [100, 1000],
  refuseChance: 0.1,
  refuseMs: [100, 600],
};

/** Stalls and slow periods are planned this far ahead; a connection that lives longer meets no more. */
const PLAN_HORIZON_MS = 20_000;

/** The faults one connection will meet. */
export interface ConnectionPlan {
  /** A cut at a byte offset in one direction, or after a time; a byte cut also has a deadline. */
  cut: { trigger: Direction | "time"; at: number; deadlineMs: number; style: CutStyle } | null;
  /** Start times (ms after accept) and lengths of the stalls, in order. */
  stalls: { atMs: number; forMs: number }[];
  slows: { atMs: number; forMs: number; bytesPerSecond: number }[];
  /** After this connection's cut, refuse new connections for this long (0: not at all). */
  refuseAfterCutMs: number;
}

export interface FaultCounts {
  /** Payload bytes forwarded client → server. */
  up: number;
  /** Payload bytes forwarded server → client. */
  down: number;
  /** Connections accepted. */
  connections: number;
  /** Connections the proxy cut: in all, with a reset, at a byte offset, after a time. */
  cuts: number;
  resets: number;
  byteCuts: number;
  timeCuts: number;
  stalls: number;
  slowdowns: number;
  /** Periods in which the proxy refused new connections. */
  refusals: number;
}

/** Draws one connection's plan. */
export function drawPlan(rng: Rng, s: FaultSettings): ConnectionPlan {
  const uniform = ([lo, hi]: Range) => rng.between(Math.round(lo), Math.round(hi));
  const logUniform = ([lo, hi]: Range) =>
    Math.round(Math.exp(Math.log(lo) + rng.float() * (Math.log(hi) - Math.log(lo))));
  let cut: ConnectionPlan["cut"] = null;
  if (rng.chance(s.cutChance)) {
    const style: CutStyle = rng.chance(s.resetShare) ? "reset" : "close";
    if (rng.chance(s.byteCutShare)) {
      const down = rng.chance(s.downCutShare);
      const at = logUniform(down ? s.downCutBytes : s.upCutBytes);
      cut = { trigger: down ? "down" : "up", at, deadlineMs: logUniform(s.byteCutDeadlineMs), style };
    } else {
      const at = logUniform(s.cutAfterMs);
      cut = { trigger: "time", at, deadlineMs: at, style };
    }
  }
  const stalls: ConnectionPlan["stalls"] = [];
  const slows: ConnectionPlan["slows"] = [];
  for (let t = uniform(s.faultGapMs); t < PLAN_HORIZON_MS; t += uniform(s.faultGapMs)) {
    if (rng.chance(s.stallChance)) {
      const forMs = uniform(s.stallMs);
      stalls.push({ atMs: t, forMs });
      t += forMs;
    } else if (rng.chance(s.slowChance)) {
      const forMs = uniform(s.slowMs);
      slows.push({ atMs: t, forMs, bytesPerSecond: logUniform(s.slowBytesPerSecond) });
      t += forMs;
    }
  }
  const refuseAfterCutMs = rng.chance(s.refuseChance) ? uniform(s.refuseMs) : 0;
  return { cut, stalls, slows, refuseAfterCutMs };
}

interface FlowHooks {
  /** Bytes this flow may still forward before a cut armed on the whole proxy. */
  budget(): number;
  forwarded(bytes: number): void;
  /** The flow reached a byte offset at which a cut is due. */
  limitReached(): void;
}

/**
 * One direction of a connection: reads from `from`, writes to `to`, keeping to the
 * writer's backpressure, a stall, a throttle and a byte offset at which it must stop.
 */
class Flow {
  forwarded = 0;
  /** Forward at most this many bytes in all; then `limitReached` (a cut at a byte offset). */
  limit = Number.POSITIVE_INFINITY;
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private stalled = false;
  private bytesPerSecond = 0;
  private allowance = 0;
  private refilledAt = 0;
  private waitingForDrain = false;
  private sourceEnded = false;
  private stopped = false;
  private stallTimer: NodeJS.Timeout | undefined;
  /** Set while the throttle waits for its allowance to grow. */
  private throttleTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly hooks: FlowHooks,
  ) {
    from.on("data", (data: Buffer) => {
      if (this.stopped) return;
      this.queue.push(data);
      this.queued += data.length;
      if (this.queued >= HIGH_WATER) from.pause();
      this.pump();
    });
    from.on("end", () => {
      this.sourceEnded = true;
      this.pump();
    });
    to.on("drain", () => {
      this.waitingForDrain = false;
      this.pump();
    });
  }

  /** Forward nothing for `ms`. */
  stall(ms: number): void {
    this.stalled = true;
    this.from.pause();
    clearTimeout(this.stallTimer);
    this.stallTimer = setTimeout(() => {
      this.stalled = false;
      this.pump();
    }, ms);
  }

  /** Forward at most `bytesPerSecond` (0: no limit). */
  throttle(bytesPerSecond: number): void {
    this.bytesPerSecond = bytesPerSecond;
    this.allowance = 0;
    this.refilledAt = Date.now();
    clearTimeout(this.throttleTimer);
    this.throttleTimer = undefined;
    this.pump();
  }

  /** Back to faithful forwarding: no stall, no throttle, no byte offset to stop at. */
  lift(): void {
    clearTimeout(this.stallTimer);
    this.stalled = false;
    this.limit = Number.POSITIVE_INFINITY;
    this.throttle(0);
  }

  /** Forward nothing more, ever. */
  stop(): void {
    this.stopped = true;
    this.queue.length = 0;
    this.queued = 0;
    clearTimeout(this.stallTimer);
    clearTimeout(this.throttleTimer);
  }

  /** The source is gone without an end (closed by its peer): end the other side once drained. */
  sourceGone(): void {
    this.sourceEnded = true;
    this.pump();
  }

  private pump(): void {
    if (this.stopped || this.stalled || this.waitingForDrain || this.throttleTimer !== undefined) return;
    while (this.queue.length > 0) {
      const head = this.queue[0] as Buffer;
      const room = Math.min(this.limit - this.forwarded, this.hooks.budget());
      if (room <= 0) {
        this.hooks.limitReached();
        return;
      }
      let n = Math.min(head.length, room);
      if (this.bytesPerSecond > 0) {
        const now = Date.now();
        const burst = Math.max(1024, this.bytesPerSecond / 10);
        this.allowance = Math.min(
          burst,
          this.allowance + ((now - this.refilledAt) * this.bytesPerSecond) / 1000,
        );
        this.refilledAt = now;
        n = Math.min(n, Math.floor(this.allowance));
        if (n <= 0) {
          // Wait until about 1 KiB more may go.
          this.throttleTimer = setTimeout(
            () => {
              this.throttleTimer = undefined;
              this.pump();
            },
            Math.max(5, Math.ceil((1000 * 1024) / this.bytesPerSecond)),
          );
          return;
        }
        this.allowance -= n;
      }
      const piece = head.subarray(0, n);
      if (n === head.length) this.queue.shift();
      else this.queue[0] = head.subarray(n);
      this.queued -= n;
      this.forwarded += n;
      this.hooks.forwarded(n);
      const more = this.to.write(piece);
      if (this.stopped) return;
      if (this.forwarded >= this.limit || this.hooks.budget() <= 0) {
        this.hooks.limitReached();
        return;
      }
      if (!more) {
        this.waitingForDrain = true;
        break;
      }
    }
    if (this.queued < HIGH_WATER / 2 && this.from.isPaused() && !this.stalled) this.from.resume();
    if (this.queue.length === 0 && this.sourceEnded && !this.to.destroyed) this.to.end();
  }
}

/** A client's connection and its upstream twin, with the faults planned for them. */
class ProxiedConnection {
  readonly up: Flow;
  readonly down: Flow;
  private readonly timers = new Set<NodeJS.Timeout>();
  private openSockets = 2;
  private finished = false;

  constructor(
    readonly index: number,
    private readonly proxy: FaultProxy,
    private readonly client: Socket,
    private readonly upstream: Socket,
    readonly plan: ConnectionPlan | null,
    onClosed: () => void,
  ) {
    this.up = new Flow(client, upstream, {
      budget: () => proxy.upBudget(),
      forwarded: (n) => proxy.count("up", n),
      limitReached: () => this.limitReached("up"),
    });
    this.down = new Flow(upstream, client, {
      budget: () => Number.POSITIVE_INFINITY,
      forwarded: (n) => proxy.count("down", n),
      limitReached: () => this.limitReached("down"),
    });
    const closed = (side: Socket, other: Socket, flowToOther: Flow, flowFromOther: Flow) => {
      side.on("error", () => {});
      side.on("close", (hadError) => {
        // Whatever the other side still sends has nowhere to go.
        flowFromOther.stop();
        if (hadError) other.destroy();
        else flowToOther.sourceGone();
        if (--this.openSockets === 0) {
          this.finished = true;
          this.clearTimers();
          onClosed();
        }
      });
    };
    closed(client, upstream, this.up, this.down);
    closed(upstream, client, this.down, this.up);
    if (plan) this.apply(plan);
  }

  /** Cut both sides now; counted as a fault unless `why` is null (the proxy is closing). */
  cut(style: CutStyle, why: string | null, kind: "byte" | "time" = "byte"): void {
    if (this.finished) return;
    this.finished = true;
    this.clearTimers();
    this.up.stop();
    this.down.stop();
    if (why !== null) this.proxy.noteCut(this, style, why, kind);
    for (const socket of [this.client, this.upstream]) {
      if (socket.destroyed) continue;
      if (style === "reset") socket.resetAndDestroy();
      else socket.destroy();
    }
  }

  /** Drop every fault still to come; forward faithfully from now on. */
  lift(): void {
    this.clearTimers();
    this.up.lift();
    this.down.lift();
  }

  private apply(plan: ConnectionPlan): void {
    const { cut } = plan;
    if (cut) {
      if (cut.trigger === "up") this.up.limit = cut.at;
      if (cut.trigger === "down") this.down.limit = cut.at;
      const why =
        cut.trigger === "time"
          ? `after ${cut.at} ms`
          : `at the ${cut.trigger} deadline, ${cut.deadlineMs} ms`;
      this.after(cut.deadlineMs, () => this.cut(cut.style, why, "time"));
    }
    for (const stall of plan.stalls) {
      this.after(stall.atMs, () => {
        this.proxy.note(this, `stall ${stall.forMs} ms`, "stalls");
        this.up.stall(stall.forMs);
        this.down.stall(stall.forMs);
      });
    }
    for (const slow of plan.slows) {
      this.after(slow.atMs, () => {
        this.proxy.note(this, `slow to ${slow.bytesPerSecond} B/s for ${slow.forMs} ms`, "slowdowns");
        this.up.throttle(slow.bytesPerSecond);
        this.down.throttle(slow.bytesPerSecond);
      });
      this.after(slow.atMs + slow.forMs, () => {
        this.up.throttle(0);
        this.down.throttle(0);
      });
    }
  }

  private limitReached(direction: Direction): void {
    const flow = direction === "up" ? this.up : this.down;
    if (flow.forwarded >= flow.limit) {
      this.cut(this.plan?.cut?.style ?? "close", `at byte ${flow.forwarded} ${direction}`, "byte");
    } else {
      this.proxy.armedCutReached();
    }
  }

  private after(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  }

  private clearTimers(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}

export interface FaultProxyOptions {
  /** Seeds the fault plans: the same seed draws the same plans in the same order. */
  seed: number;
  /** Start faulty (default) or clean. */
  faulty?: boolean;
  settings?: Partial<FaultSettings>;
}

/** A cut armed on the whole proxy: every connection is cut when `up` reaches `atUp`. */
interface ArmedCut {
  atUp: number;
  style: CutStyle;
  refuseMs: number;
  resolve: (upAtCut: number) => void;
}

export class FaultProxy {
  private faultsOn: boolean;
  private readonly rng: Rng;
  private readonly settings: FaultSettings;
  private readonly live = new Set<ProxiedConnection>();
  private readonly totals: FaultCounts = {
    up: 0,
    down: 0,
    connections: 0,
    cuts: 0,
    resets: 0,
    byteCuts: 0,
    timeCuts: 0,
    stalls: 0,
    slowdowns: 0,
    refusals: 0,
  };
  private readonly log: string[] = [];
  private readonly started = Date.now();
  private refusing: NodeJS.Timeout | undefined;
  private armed: ArmedCut | null = null;
  private drainWaiters: (() => void)[] = [];
  private closed = false;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    readonly targetPort: number,
    readonly seed: number,
    options: FaultProxyOptions,
  ) {
    this.faultsOn = options.faulty ?? true;
    this.rng = new Rng(seed);
    this.settings = { ...DEFAULT_FAULTS, ...options.settings };
  }

  /** Listen on 127.0.0.1 (an ephemeral port) and forward each connection to `targetPort` there. */
  static async start(targetPort: number, options: FaultProxyOptions): Promise<FaultProxy> {
    let proxy: FaultProxy | undefined;
    const server = createServer({ allowHalfOpen: true, noDelay: true }, (client) => proxy?.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, HOST, () => resolve());
    });
    const address = server.address();
    if (address === null || typeof address === "string") throw new Error("the proxy has no port");
    proxy = new FaultProxy(server, address.port, targetPort, options.seed, options);
    return proxy;
  }

  get faulty(): boolean {
    return this.faultsOn;
  }

  /** Faulty: new connections draw fault plans. Clean: every fault is lifted, open connections' too. */
  setFaulty(on: boolean): void {
    this.faultsOn = on;
    this.note(null, on ? "faults on" : "clean forwarding");
    if (on) return;
    for (const conn of this.live) conn.lift();
    if (this.refusing) this.listenAgain();
  }

  counts(): FaultCounts {
    return { ...this.totals };
  }

  get openConnections(): number {
    return this.live.size;
  }

  /** Cut every open connection now; returns how many. */
  cutAll(style: CutStyle, why = "cut all"): number {
    const all = [...this.live];
    for (const conn of all) conn.cut(style, why);
    return all.length;
  }

  /**
   * Cut every open connection once `up` reaches `atUp` bytes, exactly there (the byte that
   * crosses it is not forwarded), then refuse new connections for `refuseMs`. Resolves with
   * `up` at the cut. Works in clean mode too.
   */
  cutWhenUpReaches(atUp: number, style: CutStyle, refuseMs = 0): Promise<number> {
    return new Promise((resolve) => {
      this.armed = { atUp, style, refuseMs, resolve };
      if (this.totals.up >= atUp) this.armedCutReached();
    });
  }

  /** Forward nothing in `direction` on the connections open now, for `ms` (new ones flow). */
  stallAll(direction: Direction, ms: number): void {
    for (const conn of this.live) (direction === "up" ? conn.up : conn.down).stall(ms);
    this.note(null, `every open connection's ${direction} bytes held for ${ms} ms`, "stalls");
  }

  /** Refuse new connections (stop listening) for `ms`. */
  refuse(ms: number): void {
    if (this.closed) return;
    if (this.refusing) clearTimeout(this.refusing);
    else {
      this.totals.refusals++;
      this.server.close();
    }
    this.note(null, `refusing for ${ms} ms`);
    this.refusing = setTimeout(() => this.listenAgain(), ms);
  }

  /** Resolves true once no connection is open, false after `timeoutMs`. */
  drained(timeoutMs = 10_000): Promise<boolean> {
    if (this.live.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.drainWaiters = this.drainWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      this.drainWaiters.push(done);
    });
  }

  /** Stop listening and destroy every connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.refusing);
    // Calls back also when the server was not listening (refusing).
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const conn of [...this.live]) conn.cut("close", null);
    await stopped;
  }

  /** The counts and the latest fault events, for failure messages. */
  describe(): string {
    const c = this.totals;
    return [
      `--- fault proxy :${this.port} -> :${this.targetPort} (seed ${this.seed}, ${this.faultsOn ? "faulty" : "clean"}): ` +
        `${c.connections} connections, ${c.cuts} cuts (${c.byteCuts} at a byte offset, ${c.timeCuts} after a time, ` +
        `${c.resets} resets), ${c.stalls} stalls, ` +
        `${c.slowdowns} slow periods, ${c.refusals} refusals; ${c.up} bytes up, ${c.down} down; ${this.live.size} open`,
      ...this.log.map((line) => `    ${line}`),
    ].join("\n");
  }

  // ------------------------------------------------------------ for the connections

  /** Bytes the up direction may still forward before the armed cut. */
  upBudget(): number {
    return this.armed ? this.armed.atUp - this.totals.up : Number.POSITIVE_INFINITY;
  }

  count(direction: Direction, bytes: number): void {
    this.totals[direction] += bytes;
  }

  armedCutReached(): void {
    const armed = this.armed;
    if (!armed || this.totals.up < armed.atUp) return;
    this.armed = null;
    this.note(null, `armed cut at ${this.totals.up} bytes up`);
    this.cutAll(armed.style, "armed cut");
    if (armed.refuseMs > 0) this.refuse(armed.refuseMs);
    armed.resolve(this.totals.up);
  }

  noteCut(conn: ProxiedConnection, style: CutStyle, why: string, kind: "byte" | "time"): void {
    this.totals.cuts++;
    if (style === "reset") this.totals.resets++;
    if (kind === "byte") this.totals.byteCuts++;
    else this.totals.timeCuts++;
    this.note(conn, `${style} ${why} (${conn.up.forwarded} up, ${conn.down.forwarded} down)`);
    const refuseMs = conn.plan?.refuseAfterCutMs ?? 0;
    if (this.faultsOn && refuseMs > 0) this.refuse(refuseMs);
  }

  note(conn: ProxiedConnection | null, what: string, counter?: "stalls" | "slowdowns"): void {
    if (counter) this.totals[counter]++;
    const ms = String(Date.now() - this.started).padStart(6);
    this.log.push(`${ms} ms ${conn ? `#${conn.index} ` : ""}${what}`);
    if (this.log.length > LOG_LINES) this.log.shift();
  }

  // ------------------------------------------------------------ inside

  private accept(client: Socket): void {
    if (this.closed) {
      client.destroy();
      return;
    }
    const index = this.totals.connections++;
    client.setNoDelay(true);
    const upstream = connect({ port: this.targetPort, host: HOST, allowHalfOpen: true, noDelay: true });
    const plan = this.faultsOn ? drawPlan(this.rng, this.settings) : null;
    const conn = new ProxiedConnection(index, this, client, upstream, plan, () => {
      this.live.delete(conn);
      if (this.live.size === 0) for (const waiter of this.drainWaiters.splice(0)) waiter();
    });
    this.live.add(conn);
  }

  private listenAgain(attempt = 0): void {
    clearTimeout(this.refusing);
    this.refusing = undefined;
    if (this.closed) return;
    this.server.once("error", () => {
      // The port was taken meanwhile (by whom, on loopback?): try again shortly.
      if (attempt < 40) this.refusing = setTimeout(() => this.listenAgain(attempt + 1), 50);
    });
    this.server.listen(this.port, HOST, () => {
      this.server.removeAllListeners("error");
      this.note(null, "listening again");
    });
  }
}
