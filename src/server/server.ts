// The listener: accepts connections on one address, enforces the connection limit, starts
// a Session for each, and shuts everything down cleanly.

import { createServer, type Server as NetServer, type Socket } from "node:net";
import { createSecureContext, type SecureContext, TLSSocket } from "node:tls";
import { errnoCode, KeepwatchError } from "../errors.js";
import { Connection } from "../protocol/connection.js";
import { MAX_FRAME_PAYLOAD } from "../protocol/frame.js";
import { defaultConfigDir } from "../security/config-dir.js";
import { loadOrCreateIdentity } from "../security/identity.js";
import { removeLocalAccess, writeLocalAccess } from "../security/local-access.js";
import type { Reporter } from "../ui/events.js";
import { AccessControl } from "./access.js";
import { ByteBudget } from "./budget.js";
import { ClientRegistry, readOrCreateLocalSecret } from "./clients.js";
import { Destination } from "./destination.js";
import { MANIFEST_MEMORY } from "./manifest.js";
import { Session, type SessionLimits } from "./session.js";

export { DEFAULT_PORT } from "../protocol/messages.js";

export interface ServerOptions {
  dest: string;
  host: string;
  port: number;
  reporter: Reporter;
  maxConnections?: number;
  limits?: Partial<SessionLimits>;
  /** Plain TCP instead of TLS: nothing that travels is protected. */
  insecure?: boolean;
  /** Where the local-access file for this user's own clients goes (local-access.ts). */
  configDir?: string;
}

/** How often the server looks for clients the operator removed or changed. */
const RECHECK_MS = 1000;

/**
 * Most requests a client may have in flight (WELCOME's window). Each holds at most a
 * request record, a chunk's bytes carried by its chunker and an open temporary file; a
 * small file's bytes count against the server's budget besides. 128 rather than 64: the
 * bench's 20,000 small files took about a quarter less time, because more versions wait
 * for each group commit, for 5–10 MiB more on each side (docs/performance.md).
 */
export const DEFAULT_WINDOW = 128;

const DEFAULT_LIMITS: SessionLimits = {
  window: DEFAULT_WINDOW,
  idleTimeoutMs: 30_000,
  helloTimeoutMs: 10_000,
  maxFrame: MAX_FRAME_PAYLOAD,
};

export class KeepwatchServer {
  private readonly sessions = new Set<Session>();
  /** The unfinished work of sessions whose connection closed. */
  private readonly leftoverWork = new Set<Promise<void>>();
  private readonly sockets = new Set<Socket>();
  /** Every TCP connection until it is really closed, refused ones included. */
  private readonly open = new Set<Socket>();
  private closing = false;
  /** Small files in flight are held in memory up to this many bytes in all. */
  private readonly budget = new ByteBudget(64 * 1024 * 1024);
  /** Manifests' chunk lists, at MANIFEST_BYTES_PER_CHUNK each (manifest.ts). */
  private readonly manifestBudget = new ByteBudget(MANIFEST_MEMORY);
  private readonly recheckTimer: NodeJS.Timeout;

  private constructor(
    private readonly net: NetServer,
    readonly destination: Destination,
    readonly host: string,
    readonly port: number,
    private readonly access: AccessControl,
    private readonly tls: SecureContext | null,
    /** The server's TLS fingerprint; null with --insecure. */
    readonly fingerprint: string | null,
    private readonly localAccess: { configDir: string; secret: string } | null,
  ) {
    let seen = access.registry.changeCounter();
    this.recheckTimer = setInterval(() => {
      const now = access.registry.changeCounter();
      if (now === seen) return;
      seen = now;
      for (const session of this.sessions) session.recheck();
    }, RECHECK_MS);
    this.recheckTimer.unref();
  }

  static async start(options: ServerOptions): Promise<KeepwatchServer> {
    const limits = { ...DEFAULT_LIMITS, ...options.limits };
    const maxConnections = options.maxConnections ?? 256;
    // Check DEST without creating anything, take the port, and only then create what the
    // server needs: a server that cannot start leaves no trace.
    await Destination.check(options.dest);
    const net = createServer();
    // Connections that arrive before DEST is ready wait (unread) until it is.
    let server: KeepwatchServer | null = null;
    const early: Socket[] = [];
    net.on("connection", (socket) => {
      if (server) server.accept(socket, limits, maxConnections, options.reporter);
      else early.push(socket);
    });
    const port = await listen(net, options.host, options.port);
    let destination: Destination;
    let registry: ClientRegistry | undefined;
    let tls: SecureContext | null = null;
    let fingerprint: string | null = null;
    try {
      destination = await Destination.open(options.dest);
      try {
        registry = ClientRegistry.open(destination.controlDir);
        if (!options.insecure) {
          const identity = await loadOrCreateIdentity(destination.controlDir);
          tls = createSecureContext({ key: identity.keyPem, cert: identity.certPem, minVersion: "TLSv1.3" });
          fingerprint = identity.fingerprint;
        }
      } catch (error) {
        registry?.close();
        await destination.close();
        throw error;
      }
    } catch (error) {
      for (const socket of early) socket.destroy();
      await new Promise<void>((resolve) => net.close(() => resolve()));
      throw error;
    }
    const secret = await readOrCreateLocalSecret(destination.controlDir);
    const access = new AccessControl(registry, secret);
    const configDir = options.configDir ?? defaultConfigDir();
    let localAccess: { configDir: string; secret: string } | null = { configDir, secret };
    try {
      await writeLocalAccess(configDir, {
        port,
        fingerprint,
        secret,
        dest: destination.root,
        pid: process.pid,
      });
    } catch (error) {
      localAccess = null;
      options.reporter.emit({
        kind: "warning",
        message: `The file that lets this user's own clients connect without a secret cannot be written in ${configDir} (${errnoCode(error) ?? String(error)}); they need a secret (keepwatch clients add).`,
      });
    }
    server = new KeepwatchServer(net, destination, options.host, port, access, tls, fingerprint, localAccess);
    for (const socket of early.splice(0)) server.accept(socket, limits, maxConnections, options.reporter);
    options.reporter.emit({
      kind: "listening",
      host: options.host,
      port,
      dest: destination.root,
      fingerprint,
    });
    return server;
  }

  private accept(raw: Socket, limits: SessionLimits, maxConnections: number, reporter: Reporter): void {
    const peer = `${raw.remoteAddress}:${raw.remotePort}`;
    const peerAddress = raw.remoteAddress;
    // Past twice the limit a connection is dropped unread: answering it (a TLS handshake
    // and a typed error) would let a flood cost the server more than it costs the sender.
    if (this.open.size >= 2 * maxConnections) {
      raw.destroy();
      return;
    }
    this.open.add(raw);
    raw.once("close", () => this.open.delete(raw));
    // The session's HELLO timer also bounds the TLS handshake.
    const socket = this.tls ? new TLSSocket(raw, { isServer: true, secureContext: this.tls }) : raw;
    const conn = new Connection(socket, {
      idleTimeoutMs: limits.idleTimeoutMs,
      keepaliveMs: Math.floor(limits.idleTimeoutMs / 3),
      maxPayload: limits.maxFrame,
    });
    if (this.closing) {
      conn.fail(new KeepwatchError("KW_SHUTTING_DOWN", "The server is shutting down; try again later."));
      return;
    }
    this.sockets.add(socket);
    conn.on("close", () => this.sockets.delete(socket));
    if (this.sockets.size > maxConnections) {
      conn.fail(
        new KeepwatchError(
          "KW_TOO_MANY_CONNECTIONS",
          `The server already has ${maxConnections} connections; try again later.`,
        ),
      );
      return;
    }
    const session = new Session(
      conn,
      this.destination,
      limits,
      reporter,
      peer,
      this.budget,
      this.manifestBudget,
      this.access,
      peerAddress,
    );
    this.sessions.add(session);
    conn.on("close", () => {
      this.sessions.delete(session);
      // What it started goes on without it (a file whose content all arrived is committed):
      // close() waits for that before it closes the history.
      const settled = session.settled();
      this.leftoverWork.add(settled);
      void settled.finally(() => this.leftoverWork.delete(settled));
    });
  }

  /** Stop accepting, say goodbye to every client, wait for started commits, close. */
  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.recheckTimer);
    const stopped = new Promise<void>((resolve) => this.net.close(() => resolve()));
    await Promise.allSettled([...this.sessions].map((s) => s.shutdown()));
    await Promise.allSettled([...this.leftoverWork]);
    for (const socket of this.sockets) socket.destroy();
    await stopped;
    if (this.localAccess)
      await removeLocalAccess(this.localAccess.configDir, this.port, this.localAccess.secret);
    this.access.registry.close();
    await this.destination.close();
  }
}

function listen(net: NetServer, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => {
      const code = errnoCode(error);
      if (code === "EADDRINUSE") {
        reject(
          new KeepwatchError(
            "KW_PORT_IN_USE",
            `Port ${port} on ${host} is already in use (another keepwatch server?); stop that program or choose another port with --port.`,
          ),
        );
      } else if (code === "EADDRNOTAVAIL" || code === "ENOTFOUND" || code === "EAI_AGAIN") {
        reject(
          new KeepwatchError(
            "KW_ADDRESS_UNAVAILABLE",
            `The address ${host} is not one of this machine's; give a local address such as 127.0.0.1.`,
          ),
        );
      } else if (code === "EACCES") {
        reject(
          new KeepwatchError(
            "KW_PORT_IN_USE",
            `Port ${port} needs privileges this user does not have; choose a port above 1023 with --port.`,
          ),
        );
      } else {
        reject(error);
      }
    };
    net.once("error", onError);
    net.listen({ host, port }, () => {
      net.off("error", onError);
      const address = net.address();
      resolve(typeof address === "object" && address ? address.port : port);
    });
  });
}
