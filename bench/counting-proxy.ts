// A TCP proxy on 127.0.0.1 that counts every byte it forwards, in both directions, for
// benchmarks that want the bytes on the socket (handshakes, headers and all) rather than the
// payload sizes a tool reports. It counts TCP payload: IP and TCP headers are not included.
// Half-closes are forwarded (allowHalfOpen), Nagle is off on both legs so the proxy adds no
// batching delay, and `drained()` waits until every connection has closed on both sides, so
// counters read after it include the last bytes of a client that has just exited.

import { connect, createServer, type Server, type Socket } from "node:net";

export interface ByteCounts {
  /** client → server */
  up: number;
  /** server → client */
  down: number;
  /** connections accepted */
  connections: number;
}

export class CountingProxy {
  private up = 0;
  private down = 0;
  private accepted = 0;
  private active = 0;
  private idleWaiters: (() => void)[] = [];

  private constructor(
    private readonly server: Server,
    readonly port: number,
    readonly targetPort: number,
  ) {}

  /** Listens on 127.0.0.1 (an ephemeral port) and forwards each connection to `targetPort`. */
  static async start(targetPort: number, host = "127.0.0.1"): Promise<CountingProxy> {
    let proxy: CountingProxy | undefined;
    const server = createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
      proxy?.accept(client, host);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, host, () => resolve());
    });
    const address = server.address();
    if (address === null || typeof address === "string") throw new Error("the proxy has no port");
    proxy = new CountingProxy(server, address.port, targetPort);
    return proxy;
  }

  private accept(client: Socket, host: string): void {
    this.accepted++;
    this.active++;
    client.setNoDelay(true);
    const upstream = connect({ port: this.targetPort, host, allowHalfOpen: true, noDelay: true });
    let open = 2;
    const closed = () => {
      if (--open > 0) return;
      this.active--;
      if (this.active === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
    };
    client.on("data", (d: Buffer) => {
      this.up += d.length;
    });
    upstream.on("data", (d: Buffer) => {
      this.down += d.length;
    });
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    client.on("close", () => {
      upstream.end();
      closed();
    });
    upstream.on("close", () => {
      client.end();
      closed();
    });
  }

  /** Bytes forwarded since start (or the last reset). */
  counts(): ByteCounts {
    return { up: this.up, down: this.down, connections: this.accepted };
  }

  reset(): void {
    this.up = 0;
    this.down = 0;
    this.accepted = 0;
  }

  /** Connections still open (on either side). */
  get openConnections(): number {
    return this.active;
  }

  /** Resolves true once no connection is open, false after `timeoutMs`. */
  drained(timeoutMs = 10_000): Promise<boolean> {
    if (this.active === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const i = this.idleWaiters.indexOf(done);
        if (i >= 0) this.idleWaiters.splice(i, 1);
        resolve(false);
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.idleWaiters.push(done);
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Bytes one run moved through a proxy. */
export interface Wire {
  up: number;
  down: number;
  total: number;
  connections: number;
  /** the proxy saw every connection close within the wait */
  drained: boolean;
}

/**
 * What went through `proxy` since `before` was read. With `waitDrainedMs`, first waits until every
 * connection has closed (so the last bytes of a client that has just exited are counted).
 */
export async function wireSince(
  proxy: CountingProxy,
  before: ByteCounts,
  waitDrainedMs = 10_000,
): Promise<Wire> {
  const drained = waitDrainedMs > 0 ? await proxy.drained(waitDrainedMs) : proxy.openConnections === 0;
  const now = proxy.counts();
  const up = now.up - before.up;
  const down = now.down - before.down;
  return { up, down, total: up + down, connections: now.connections - before.connections, drained };
}
