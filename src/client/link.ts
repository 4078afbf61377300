// The client's end of a connection: connects, performs the handshake, numbers requests
// and matches each ACK or ERROR to the request that is waiting for it.

import { connect as netConnect, type Socket } from "node:net";
import { hostname, userInfo } from "node:os";
import { type TLSSocket, connect as tlsConnect } from "node:tls";
import { errnoCode, KeepwatchError, ProtocolError, RemoteError } from "../errors.js";
import { Connection, tlsFailureReason } from "../protocol/connection.js";
import type { Frame } from "../protocol/frame.js";
import {
  decode,
  encode,
  MessageType,
  MIN_PROTOCOL_VERSION,
  messageTypeName,
  PROTOCOL_VERSION,
  type Welcome,
} from "../protocol/messages.js";
import { fingerprintOf } from "../security/fingerprint.js";
import { checkFingerprint, knownServersFile } from "../security/known-servers.js";
import { type ClientSecurity, credentialsFor } from "./security.js";

export interface LinkOptions {
  host: string;
  port: number;
  set: string;
  clientName: string;
  security: ClientSecurity;
  /** How long to wait for the TCP connection and the WELCOME. */
  connectTimeoutMs?: number;
}

interface Waiter {
  resolve: () => void;
  reject: (error: KeepwatchError) => void;
  /** Frames other than ACK and ERROR that the server sends for this request (NEED, ENTRY, FILE_DATA). */
  onFrame?: (frame: Frame) => void | Promise<void>;
}

/** The name a client gives in HELLO: user@host, for the server's log. */
export function defaultClientName(): string {
  let user = "unknown";
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (containers): keep "unknown"
  }
  return `${user}@${hostname()}`;
}

export class ServerLink {
  private readonly waiters = new Map<number, Waiter>();
  private nextRequestId = 1;
  private lostError: KeepwatchError | null = null;
  private readonly lostListeners: ((error: KeepwatchError) => void)[] = [];
  private byeResolve: (() => void) | null = null;

  private constructor(
    readonly conn: Connection,
    readonly welcome: Welcome,
  ) {
    conn.setHandler((frame) => this.onFrame(frame));
    conn.on("close", (error) => {
      this.markLost(
        error ??
          new KeepwatchError("KW_CONNECTION_LOST", "The server closed the connection; it will be retried."),
      );
    });
  }

  static async connect(options: LinkOptions): Promise<ServerLink> {
    const timeoutMs = options.connectTimeoutMs ?? 10_000;
    const where = `${options.host}:${options.port}`;
    const { security } = options;
    // With TLS the credentials are read once the handshake is done: a server hands a
    // connection to TLS only after it wrote its local-access file (server.ts), so a client
    // that connects while a server is (re)starting on that port never reads a missing or
    // stale file. A plain TCP connection has no such moment: it reads them first.
    let token: Buffer = Buffer.alloc(0);
    if (security.insecure) ({ token } = await credentialsFor(security, options.host, options.port));
    const socket: Socket = security.insecure
      ? netConnect({ host: options.host, port: options.port })
      : tlsConnect({
          host: options.host,
          port: options.port,
          minVersion: "TLSv1.3",
          // No certificate authority vouches for a keepwatch server: its fingerprint is
          // checked against the pin below before a single byte of ours is sent.
          rejectUnauthorized: false,
        });
    // Registered before the Connection's own listener, so that a refused connection is
    // reported as "unreachable" rather than as a lost connection.
    let onSocketError: (error: Error) => void = () => {};
    socket.on("error", (error) => onSocketError(error));
    const conn = new Connection(socket, { idleTimeoutMs: timeoutMs, keepaliveMs: timeoutMs });
    return new Promise<ServerLink>((resolve, reject) => {
      let settled = false;
      const settle = (error: KeepwatchError | null, link?: ServerLink) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        onSocketError = () => {};
        if (error) {
          conn.destroy(error);
          reject(error);
        } else resolve(link as ServerLink);
      };
      const timer = setTimeout(
        () =>
          settle(
            new KeepwatchError(
              "KW_UNREACHABLE",
              `The server at ${where} did not answer within ${Math.round(timeoutMs / 1000)} s; check that it is running and reachable.`,
            ),
          ),
        timeoutMs,
      );
      onSocketError = (error: Error) => settle(unreachable(where, error, security.insecure));
      const sendHello = () => {
        conn.send(
          MessageType.HELLO,
          0,
          encode.hello({
            minVersion: MIN_PROTOCOL_VERSION,
            maxVersion: PROTOCOL_VERSION,
            clientName: options.clientName,
            setName: options.set,
            token,
          }),
        );
      };
      if (security.insecure) socket.once("connect", sendHello);
      else {
        socket.once("secureConnect", () => {
          const presented = fingerprintOf((socket as TLSSocket).getPeerCertificate().raw);
          const file = knownServersFile(security.configDir);
          credentialsFor(security, options.host, options.port)
            .then((credentials) => {
              token = credentials.token;
              return checkFingerprint({
                where,
                presented,
                expected: security.fingerprint,
                local: credentials.localFingerprint,
                knownServersFile: file,
              });
            })
            .then(
              (outcome) => {
                if (settled) return;
                if (outcome === "pinned") security.onPinned?.(where, presented, file);
                sendHello();
              },
              (error: unknown) =>
                settle(
                  error instanceof KeepwatchError
                    ? error
                    : new KeepwatchError(
                        "KW_STATE_UNUSABLE",
                        `The known-servers file or the local-access file in ${security.configDir} cannot be used: ${String(error)}.`,
                      ),
                ),
            );
        });
      }
      conn.once("close", (error) => {
        settle(
          error?.code === "KW_BAD_MAGIC"
            ? new KeepwatchError(
                "KW_NOT_KEEPWATCH",
                `The program at ${where} is not a keepwatch server; check the host and --port.`,
              )
            : (error ??
                new KeepwatchError(
                  "KW_CONNECTION_LOST",
                  security.insecure
                    ? `The server at ${where} closed the connection during the handshake; if it uses TLS (started without --insecure), connect without --insecure, else check its log.`
                    : `The server at ${where} closed the connection during the handshake; check its log.`,
                )),
        );
      });
      conn.setHandler((frame) => {
        if (frame.type === MessageType.ERROR) {
          const remote = decode.error(frame.payload);
          settle(new RemoteError(remote.code, remote.message));
          return;
        }
        if (frame.type !== MessageType.WELCOME) {
          throw new ProtocolError(
            "KW_UNEXPECTED_MESSAGE",
            `The server answered HELLO with ${messageTypeName(frame.type)} instead of WELCOME.`,
          );
        }
        const welcome = decode.welcome(frame.payload);
        conn.setTiming({
          idleTimeoutMs: welcome.idleTimeoutMs,
          keepaliveMs: Math.floor(welcome.idleTimeoutMs / 3),
        });
        conn.removeAllListeners("close");
        settle(null, new ServerLink(conn, welcome));
      });
    });
  }

  get isLost(): boolean {
    return this.lostError !== null;
  }

  onLost(listener: (error: KeepwatchError) => void): void {
    if (this.lostError) listener(this.lostError);
    else this.lostListeners.push(listener);
  }

  /**
   * Reserve a request id and a promise that settles with the server's answer (ACK or
   * ERROR). `onFrame` receives the request's other frames in order; the connection waits
   * for it before handling the next frame, which is how a slow receiver slows the server.
   */
  open(onFrame?: (frame: Frame) => void | Promise<void>): { id: number; answer: Promise<void> } {
    const id = this.nextRequestId;
    this.nextRequestId = this.nextRequestId >= 0xffffffff ? 1 : this.nextRequestId + 1;
    const answer = new Promise<void>((resolve, reject) => {
      if (this.lostError) reject(this.lostError);
      else this.waiters.set(id, { resolve, reject, ...(onFrame ? { onFrame } : {}) });
    });
    // A caller that stops waiting (the link was lost) must not cause an unhandled rejection.
    answer.catch(() => {});
    return { id, answer };
  }

  /** Say goodbye after everything is answered; resolves when the server has closed. */
  async goodbye(): Promise<void> {
    if (this.lostError) return;
    const closed = new Promise<void>((resolve) => {
      this.byeResolve = resolve;
      this.conn.once("close", () => resolve());
    });
    this.conn.send(MessageType.BYE, 0);
    const timer = setTimeout(() => this.conn.end(), 5000);
    await closed;
    clearTimeout(timer);
  }

  close(): void {
    this.conn.destroy();
  }

  private onFrame(frame: Frame): void | Promise<void> {
    switch (frame.type) {
      case MessageType.ACK: {
        decode.empty(frame.payload, "ACK");
        const waiter = this.waiters.get(frame.requestId);
        if (!waiter) {
          throw new ProtocolError(
            "KW_UNKNOWN_REQUEST",
            `The server acknowledged unknown request ${frame.requestId}.`,
          );
        }
        this.waiters.delete(frame.requestId);
        waiter.resolve();
        return;
      }
      case MessageType.ERROR: {
        const remote = decode.error(frame.payload);
        const error = new RemoteError(remote.code, remote.message);
        if (frame.requestId === 0) {
          this.markLost(error);
          this.conn.end();
          return;
        }
        const waiter = this.waiters.get(frame.requestId);
        if (!waiter) {
          throw new ProtocolError(
            "KW_UNKNOWN_REQUEST",
            `The server reported an error for unknown request ${frame.requestId}.`,
          );
        }
        this.waiters.delete(frame.requestId);
        waiter.reject(error);
        return;
      }
      case MessageType.BYE:
        decode.empty(frame.payload, "BYE");
        if (this.byeResolve) {
          this.conn.end();
          this.byeResolve();
          return;
        }
        this.markLost(
          new KeepwatchError("KW_SHUTTING_DOWN", "The server is shutting down; it will be retried."),
        );
        this.conn.end();
        return;
      default: {
        const waiter = frame.requestId === 0 ? undefined : this.waiters.get(frame.requestId);
        if (waiter?.onFrame) return waiter.onFrame(frame);
        throw new ProtocolError(
          "KW_UNEXPECTED_MESSAGE",
          `The server sent ${messageTypeName(frame.type)}, which a server may not send here.`,
        );
      }
    }
  }

  private markLost(error: KeepwatchError): void {
    if (this.lostError) return;
    this.lostError = error;
    for (const waiter of this.waiters.values()) waiter.reject(error);
    this.waiters.clear();
    for (const listener of this.lostListeners.splice(0)) listener(error);
  }
}

function unreachable(where: string, error: Error, insecure: boolean): KeepwatchError {
  const code = errnoCode(error);
  if (code === "ECONNREFUSED") {
    return new KeepwatchError(
      "KW_UNREACHABLE",
      `No keepwatch server is listening at ${where}; start one with "keepwatch server DEST" or check the host and --port.`,
    );
  }
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
    return new KeepwatchError(
      "KW_UNREACHABLE",
      `The host name in ${where} cannot be resolved; check its spelling.`,
    );
  }
  if (insecure && code === "ECONNRESET") {
    return new KeepwatchError(
      "KW_CONNECTION_LOST",
      `The server at ${where} reset the connection during the handshake; if it uses TLS (started without --insecure), connect without --insecure.`,
    );
  }
  const tlsReason = insecure ? null : tlsFailureReason(error);
  if (tlsReason !== null) {
    return new KeepwatchError(
      "KW_TLS_FAILED",
      `The program at ${where} did not complete a TLS handshake (${tlsReason}); if it is a keepwatch server started with --insecure, connect with --insecure too (then nothing is encrypted), else check the host and --port.`,
    );
  }
  return new KeepwatchError(
    "KW_UNREACHABLE",
    `The server at ${where} cannot be reached (${code ?? error.message}); check that it is running and reachable.`,
  );
}
