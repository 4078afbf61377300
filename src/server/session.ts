// One client connection on the server: the handshake, the table of requests in flight
// (bounded by the window), and dispatch of each message to its handler.

import { KeepwatchError, ProtocolError } from "../errors.js";
import type { Connection } from "../protocol/connection.js";
import type { Frame } from "../protocol/frame.js";
import {
  decode,
  encode,
  MessageType,
  MIN_PROTOCOL_VERSION,
  messageTypeName,
  PROTOCOL_VERSION,
} from "../protocol/messages.js";
import { setNameProblem } from "../protocol/paths.js";
import type { Mirror } from "../store/mirror.js";
import type { Reporter } from "../ui/events.js";
import type { ByteBudget } from "./budget.js";
import type { Destination } from "./destination.js";
import { PutRequest } from "./put.js";
import { handleDelete, handleMkdir } from "./tree.js";

export interface SessionLimits {
  window: number;
  idleTimeoutMs: number;
  helloTimeoutMs: number;
  maxFrame: number;
}

export const SERVER_NAME = "keepwatch/0.1.0";

/** What a handler needs from its session. */
export interface RequestContext {
  readonly mirror: Mirror;
  readonly set: string;
  readonly reporter: Reporter;
  /** Memory the server allows for small files in flight, shared by all sessions. */
  readonly budget: ByteBudget;
  /** Answer request `id` with an ACK and forget it. */
  ack(id: number): void;
  /** Answer request `id` with a typed ERROR and forget it (unless `keepOpen`). */
  reject(id: number, error: KeepwatchError, keepOpen?: boolean): void;
  /** Forget request `id` without an answer (it was already answered with an ERROR). */
  release(id: number): void;
}

type InFlight = { kind: "put"; put: PutRequest } | { kind: "op" };

export class Session implements RequestContext {
  private state: "hello" | "ready" | "closed" = "hello";
  private readonly inFlight = new Map<number, InFlight>();
  private helloTimer: NodeJS.Timeout;
  private pendingWork = new Set<Promise<void>>();
  mirror!: Mirror;
  set = "";
  clientName = "";

  constructor(
    private readonly conn: Connection,
    private readonly destination: Destination,
    private readonly limits: SessionLimits,
    readonly reporter: Reporter,
    readonly peer: string,
    readonly budget: ByteBudget,
  ) {
    // The server MUST receive HELLO within helloTimeoutMs.
    this.helloTimer = setTimeout(() => {
      conn.fail(new KeepwatchError("KW_TIMEOUT", "No HELLO arrived in time, so the connection was closed."));
    }, limits.helloTimeoutMs);
    this.helloTimer.unref();
    conn.setHandler((frame) => this.onFrame(frame));
    conn.on("close", (error) => {
      clearTimeout(this.helloTimer);
      const wasReady = this.state === "ready";
      this.state = "closed";
      for (const entry of this.inFlight.values()) {
        if (entry.kind === "put") void entry.put.discard();
      }
      this.inFlight.clear();
      if (wasReady) {
        reporter.emit({
          kind: "peer-disconnected",
          peer,
          set: this.set,
          ...(error ? { reason: error.message } : {}),
        });
      }
    });
  }

  /** Tell the client the server is going away, and wait for commits already started. */
  async shutdown(): Promise<void> {
    if (this.state === "ready") this.conn.send(MessageType.BYE, 0);
    await Promise.allSettled([...this.pendingWork]);
    this.conn.end();
  }

  ack(id: number): void {
    this.inFlight.delete(id);
    if (this.state === "ready") this.conn.send(MessageType.ACK, id);
  }

  release(id: number): void {
    this.inFlight.delete(id);
  }

  reject(id: number, error: KeepwatchError, keepOpen = false): void {
    if (!keepOpen) this.inFlight.delete(id);
    if (this.state === "ready") this.conn.sendError(id, error);
  }

  private async onFrame(frame: Frame): Promise<void> {
    if (this.state === "hello") {
      if (frame.type !== MessageType.HELLO || frame.requestId !== 0) {
        throw new ProtocolError(
          "KW_UNEXPECTED_MESSAGE",
          `The first message must be HELLO, not ${messageTypeName(frame.type)}.`,
        );
      }
      await this.onHello(decode.hello(frame.payload));
      return;
    }
    if (this.state !== "ready") return;
    switch (frame.type) {
      case MessageType.PUT_BEGIN:
        return this.begin(frame.requestId, () => {
          const put = new PutRequest(frame.requestId, decode.putBegin(frame.payload), this);
          this.inFlight.set(frame.requestId, { kind: "put", put });
          return put.open();
        });
      case MessageType.PUT_DATA:
        return this.putFor(frame).data(frame.payload);
      case MessageType.PUT_END:
        return this.track(this.putFor(frame).end(decode.putEnd(frame.payload)));
      case MessageType.PUT_ABORT:
        decode.putAbort(frame.payload);
        return this.track(this.putFor(frame).abort());
      case MessageType.MKDIR:
        return this.begin(frame.requestId, () => {
          this.inFlight.set(frame.requestId, { kind: "op" });
          return this.track(handleMkdir(frame.requestId, decode.mkdir(frame.payload), this));
        });
      case MessageType.DELETE:
        return this.begin(frame.requestId, () => {
          this.inFlight.set(frame.requestId, { kind: "op" });
          return this.track(handleDelete(frame.requestId, decode.delete(frame.payload), this));
        });
      case MessageType.ERROR: {
        // A client reports only about the connection (id 0), and then leaves.
        const remote = decode.error(frame.payload);
        if (frame.requestId !== 0) {
          throw new ProtocolError(
            "KW_UNEXPECTED_MESSAGE",
            "A client sent an ERROR for a request it does not answer.",
          );
        }
        this.conn.destroy(new KeepwatchError("KW_CONNECTION_LOST", `The client reported: ${remote.message}`));
        return;
      }
      case MessageType.BYE:
        decode.empty(frame.payload, "BYE");
        await Promise.allSettled([...this.pendingWork]);
        this.conn.send(MessageType.BYE, 0);
        this.conn.end();
        return;
      default:
        throw new ProtocolError(
          "KW_UNEXPECTED_MESSAGE",
          `The message type ${messageTypeName(frame.type)} is not allowed from a client here.`,
        );
    }
  }

  private async onHello(hello: ReturnType<typeof decode.hello>): Promise<void> {
    clearTimeout(this.helloTimer);
    const version = Math.min(hello.maxVersion, PROTOCOL_VERSION);
    if (version < Math.max(hello.minVersion, MIN_PROTOCOL_VERSION) || hello.minVersion > hello.maxVersion) {
      throw new ProtocolError(
        "KW_VERSION_MISMATCH",
        `The client speaks protocol versions ${hello.minVersion}-${hello.maxVersion} and this server ` +
          `${MIN_PROTOCOL_VERSION}-${PROTOCOL_VERSION}; install the same keepwatch version on both sides.`,
      );
    }
    const problem = setNameProblem(hello.setName);
    if (problem !== null) {
      throw new ProtocolError(
        "KW_BAD_SET_NAME",
        `The set name ${JSON.stringify(hello.setName)} was refused because ${problem}; choose another with --name.`,
      );
    }
    this.mirror = await this.destination.mirror(hello.setName);
    this.set = hello.setName;
    this.clientName = hello.clientName;
    this.state = "ready";
    this.conn.send(
      MessageType.WELCOME,
      0,
      encode.welcome({
        version,
        storeId: this.destination.storeId,
        maxFrame: this.limits.maxFrame,
        window: this.limits.window,
        idleTimeoutMs: this.limits.idleTimeoutMs,
        serverName: SERVER_NAME,
      }),
    );
    this.reporter.emit({
      kind: "peer-connected",
      peer: this.peer,
      client: hello.clientName,
      set: hello.setName,
    });
  }

  /** Start request `id` after checking the id and the window. */
  private begin(id: number, start: () => Promise<void>): Promise<void> {
    if (id === 0) throw new ProtocolError("KW_BAD_MESSAGE", "A request used the reserved id 0.");
    if (this.inFlight.has(id)) {
      throw new ProtocolError("KW_UNEXPECTED_MESSAGE", `Request id ${id} is already in flight.`);
    }
    if (this.inFlight.size >= this.limits.window) {
      throw new ProtocolError(
        "KW_WINDOW_EXCEEDED",
        `The client has more than ${this.limits.window} requests in flight.`,
      );
    }
    return start();
  }

  private putFor(frame: Frame): PutRequest {
    const entry = this.inFlight.get(frame.requestId);
    if (entry?.kind !== "put") {
      throw new ProtocolError(
        "KW_UNKNOWN_REQUEST",
        `A ${messageTypeName(frame.type)} message names request ${frame.requestId}, which is not an open PUT.`,
      );
    }
    return entry.put;
  }

  /** Run `work` without holding up the frame loop; shutdown waits for it. */
  private track(work: Promise<void>): Promise<void> {
    const guarded = work.catch((error: unknown) => {
      this.conn.fail(
        error instanceof KeepwatchError
          ? error
          : new KeepwatchError("KW_SERVER_IO", `The server failed: ${String(error)}.`),
      );
    });
    this.pendingWork.add(guarded);
    void guarded.finally(() => this.pendingWork.delete(guarded));
    return Promise.resolve();
  }
}
