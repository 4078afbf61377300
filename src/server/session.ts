// One client connection on the server: the handshake, the table of requests in flight
// (bounded by the window), and dispatch of each message to its handler.

import { KeepwatchError, ProtocolError } from "../errors.js";
import type { Connection } from "../protocol/connection.js";
import { type Frame, payloadParts } from "../protocol/frame.js";
import { decodeHistory, type ManifestBegin, type ManifestStream } from "../protocol/history-messages.js";
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
import type { AccessControl, ReuseScope } from "./access.js";
import type { ByteBudget } from "./budget.js";
import type { Principal } from "./clients.js";
import type { Destination } from "./destination.js";
import type { History } from "./history.js";
import { handleList } from "./list.js";
import { ManifestRequest } from "./manifest.js";
import { PutRequest } from "./put.js";
import { handlePutRef } from "./put-ref.js";
import { handleRestore } from "./restore.js";
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
  /** The protocol version agreed in the handshake. */
  readonly protocolVersion: number;
  /** Memory the server allows for small files in flight, shared by all sessions. */
  readonly budget: ByteBudget;
  /** Memory the server allows for manifests' chunk lists, shared by all sessions. */
  readonly manifestBudget: ByteBudget;
  /** Every version of every file of every set on this server. */
  readonly history: History;
  /** The sets this connection's client may read, or null for all. */
  readableSets(): string[] | null;
  /** What this connection's client may reuse from the history without sending it. */
  reuseScope(): ReuseScope;
  /** The client sent the bytes of chunk `id` (stored): it may reuse it from now on. */
  notePossession(id: Buffer): void;
  /** False once the connection has closed: long answers stop early. */
  readonly isOpen: boolean;
  /** Run `work` without holding up the connection's frames; shutdown waits for it. */
  track(work: Promise<void>): Promise<void>;
  /** Send a frame that belongs to the answer of a request (NEED, ENTRY, FILE_DATA). */
  send(type: number, id: number, payload?: Buffer): void;
  /** The same, waiting until the socket can take more (for streamed answers). */
  sendAndWait(type: number, id: number, payload?: Buffer): Promise<void>;
  /** Answer request `id` with an ACK and forget it. */
  ack(id: number): void;
  /** Answer request `id` with a typed ERROR and forget it (unless `keepOpen`). */
  reject(id: number, error: KeepwatchError, keepOpen?: boolean): void;
  /** Forget request `id` without an answer (it was already answered with an ERROR). */
  release(id: number): void;
  /** Run `change` (a history commit and its mirror change) holding `path` in this set. */
  changing<T>(path: string, change: () => Promise<T>): Promise<T>;
}

type InFlight =
  | { kind: "put"; put: PutRequest }
  | { kind: "manifest"; manifest: ManifestRequest }
  | { kind: "op" };

/** A full disk is reported on the server at most this often per connection. */
const DISK_FULL_REPEAT_MS = 10_000;

/** How many request ids ended by an ERROR are remembered, so their stray frames are ignored. */
const ENDED_IDS_KEPT = 1024;

export class Session implements RequestContext {
  private state: "hello" | "ready" | "closed" = "hello";
  private readonly inFlight = new Map<number, InFlight>();
  private helloTimer: NodeJS.Timeout;
  private pendingWork = new Set<Promise<void>>();
  /** Requests an ERROR ended while the client may still be sending their frames. */
  private readonly endedByError = new Set<number>();
  mirror!: Mirror;
  set = "";
  clientName = "";
  /** The protocol version agreed in the handshake. */
  protocolVersion = 0;
  /** Whom the connection speaks for, once HELLO was accepted. */
  principal: Principal | null = null;
  private diskFullSaidAt = 0;

  constructor(
    private readonly conn: Connection,
    private readonly destination: Destination,
    private readonly limits: SessionLimits,
    readonly reporter: Reporter,
    readonly peer: string,
    readonly budget: ByteBudget,
    readonly manifestBudget: ByteBudget,
    private readonly access: AccessControl,
    private readonly peerAddress: string | undefined,
  ) {
    // The server MUST receive HELLO within helloTimeoutMs.
    this.helloTimer = setTimeout(() => {
      const error = new KeepwatchError(
        "KW_TIMEOUT",
        "No HELLO arrived in time, so the connection was closed.",
      );
      // A peer that never finished TLS cannot be told; it is dropped at once.
      if (conn.isHandshaken) conn.fail(error);
      else conn.destroy(error);
    }, limits.helloTimeoutMs);
    this.helloTimer.unref();
    conn.setHandler((frame) => this.onFrame(frame));
    conn.on("close", (error) => {
      clearTimeout(this.helloTimer);
      const wasReady = this.state === "ready";
      this.state = "closed";
      for (const entry of this.inFlight.values()) {
        if (entry.kind === "put") void entry.put.discard();
        if (entry.kind === "manifest") entry.manifest.connectionClosed();
      }
      this.inFlight.clear();
      if (!wasReady && error) {
        reporter.emit({ kind: "peer-refused", peer, code: error.code, reason: error.message });
      }
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
    await this.settled();
    this.conn.end();
  }

  /** Resolves once the work this session started (a commit after PUT_END, say) is over. */
  async settled(): Promise<void> {
    while (this.pendingWork.size > 0) await Promise.allSettled([...this.pendingWork]);
  }

  ack(id: number): void {
    this.inFlight.delete(id);
    if (this.state === "ready") this.conn.send(MessageType.ACK, id);
  }

  release(id: number): void {
    this.inFlight.delete(id);
  }

  async changing<T>(path: string, change: () => Promise<T>): Promise<T> {
    const done = await this.mirror.changes.acquire(path);
    try {
      return await change();
    } finally {
      done();
    }
  }

  get history(): History {
    return this.destination.history;
  }

  get isOpen(): boolean {
    return this.state === "ready";
  }

  readableSets(): string[] | null {
    return this.principal ? this.access.readableSets(this.principal) : [];
  }

  reuseScope(): ReuseScope {
    if (!this.principal) throw new Error("reuseScope before HELLO");
    return this.access.reuseScope(this.principal, this.destination.history);
  }

  notePossession(id: Buffer): void {
    if (this.principal) this.access.notePossession(this.principal, id);
  }

  /** Close the connection if its client was removed or its secret or sets changed. */
  recheck(): void {
    if (this.state !== "ready" || !this.principal || this.access.stillValid(this.principal)) return;
    this.conn.fail(
      new KeepwatchError(
        "KW_AUTH_FAILED",
        `The operator removed or changed client ${this.principal.name}, so the server closed its connection; ask the operator for a new secret.`,
      ),
    );
  }

  send(type: number, id: number, payload?: Buffer): void {
    if (this.state === "ready") this.conn.send(type, id, payload);
  }

  async sendAndWait(type: number, id: number, payload?: Buffer): Promise<void> {
    if (this.state === "ready") await this.conn.sendAndWait(type, id, payload);
  }

  reject(id: number, error: KeepwatchError, keepOpen = false): void {
    // The operator must hear of a full disk on the server's side too, now and then.
    if (error.code === "KW_DISK_FULL" && Date.now() - this.diskFullSaidAt > DISK_FULL_REPEAT_MS) {
      this.diskFullSaidAt = Date.now();
      this.reporter.emit({ kind: "warning", code: error.code, message: error.message });
    }
    if (!keepOpen && this.inFlight.delete(id)) {
      this.endedByError.add(id);
      if (this.endedByError.size > ENDED_IDS_KEPT) {
        this.endedByError.delete(this.endedByError.values().next().value as number);
      }
    }
    if (this.state === "ready") this.conn.sendError(id, error);
  }

  /** A manifest request (MANIFEST_BEGIN, or MANIFEST_STREAM since version 5) opened as `id`. */
  private openManifest(id: number, decodeBegin: () => ManifestBegin | ManifestStream): Promise<void> {
    return this.begin(id, () => {
      const manifest = new ManifestRequest(id, decodeBegin(), this);
      this.inFlight.set(id, { kind: "manifest", manifest });
      return manifest.open();
    });
  }

  /** A message that a version before `version` does not have is a protocol violation. */
  private needVersion(version: number, type: number): void {
    if (this.protocolVersion < version) {
      throw new ProtocolError(
        "KW_UNEXPECTED_MESSAGE",
        `${messageTypeName(type)} needs protocol version ${version}; this connection agreed on version ${this.protocolVersion}.`,
      );
    }
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
    // A connection bound to no set (HELLO with an empty set name) may only list the sets.
    const setless = [MessageType.LIST, MessageType.BYE, MessageType.ERROR] as number[];
    if (this.set === "" && !setless.includes(frame.type)) {
      throw new ProtocolError(
        "KW_UNEXPECTED_MESSAGE",
        `A connection bound to no set may only list the sets, not send ${messageTypeName(frame.type)}.`,
      );
    }
    switch (frame.type) {
      case MessageType.PUT_BEGIN:
        return this.begin(frame.requestId, () => {
          const put = new PutRequest(frame.requestId, decode.putBegin(frame.payload), this);
          this.inFlight.set(frame.requestId, { kind: "put", put });
          return put.open();
        });
      case MessageType.PUT_DATA:
        return this.putFor(frame).data(frame.payload);
      case MessageType.PUT_END: {
        const put = this.putFor(frame);
        put.finished = true;
        return this.track(put.end(decode.putEnd(frame.payload)));
      }
      case MessageType.PUT_ABORT: {
        decode.putAbort(frame.payload);
        const entry = this.openRequest(frame);
        if (entry === null) return;
        // A PUT after PUT_END, or a manifest whose chunks all arrived, is being committed:
        // its answer is on the way, and a second one must never follow.
        if (entry.kind === "manifest" ? entry.manifest.isEnded : entry.put.finished) {
          throw new ProtocolError(
            "KW_UNKNOWN_REQUEST",
            `A PUT_ABORT names request ${frame.requestId}, which is no longer open (it is being committed).`,
          );
        }
        if (entry.kind === "manifest") return entry.manifest.abort();
        entry.put.finished = true;
        return this.track(entry.put.abort());
      }
      case MessageType.PUT_REF:
        return this.begin(frame.requestId, () => {
          this.inFlight.set(frame.requestId, { kind: "op" });
          return this.track(handlePutRef(frame.requestId, decodeHistory.putRef(frame.payload), this));
        });
      case MessageType.MANIFEST_BEGIN:
        return this.openManifest(frame.requestId, () => decodeHistory.manifestBegin(frame.payload));
      case MessageType.MANIFEST_STREAM:
        this.needVersion(5, frame.type);
        return this.openManifest(frame.requestId, () => decodeHistory.manifestStream(frame.payload));
      case MessageType.MANIFEST_CLOSE: {
        this.needVersion(5, frame.type);
        const close = decodeHistory.manifestClose(frame.payload);
        return this.manifestFor(frame)?.close(close);
      }
      case MessageType.MANIFEST_DATA:
        return this.manifestFor(frame)?.data(decodeHistory.manifestData(frame.payload));
      case MessageType.MANIFEST_END: {
        decode.empty(frame.payload, "MANIFEST_END");
        return this.manifestFor(frame)?.end();
      }
      case MessageType.CHUNK: {
        const { index, data } = decodeHistory.chunk(payloadParts(frame));
        return this.manifestFor(frame)?.chunk(index, data);
      }
      case MessageType.CHUNK_DELTA: {
        this.needVersion(4, frame.type);
        const { index, ops } = decodeHistory.chunkDelta(frame.payload);
        return this.manifestFor(frame)?.chunkDelta(index, ops);
      }
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
      case MessageType.LIST:
        return this.begin(frame.requestId, () => {
          this.inFlight.set(frame.requestId, { kind: "op" });
          return this.track(handleList(frame.requestId, decodeHistory.list(frame.payload), this));
        });
      case MessageType.RESTORE:
        return this.begin(frame.requestId, () => {
          this.inFlight.set(frame.requestId, { kind: "op" });
          return this.track(handleRestore(frame.requestId, decodeHistory.restore(frame.payload), this));
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
    // Who it is first: a stranger learns nothing about the sets, not even which names are valid.
    const principal = this.access.authenticate(hello.token, this.peerAddress);
    // An empty set name binds the connection to no set: it may only list the sets.
    const problem = hello.setName === "" ? null : setNameProblem(hello.setName);
    if (problem !== null) {
      throw new ProtocolError(
        "KW_BAD_SET_NAME",
        `The set name ${JSON.stringify(hello.setName)} was refused because ${problem}; choose another with --name.`,
      );
    }
    if (hello.setName !== "") {
      this.access.authorize(principal, hello.setName, await this.destination.setHasData(hello.setName));
      this.mirror = await this.destination.mirror(hello.setName);
    }
    this.principal = principal;
    this.set = hello.setName;
    this.clientName = hello.clientName;
    this.protocolVersion = version;
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
      principal: principal.name,
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

  /**
   * The open PUT or manifest a frame belongs to; null for a request an ERROR already ended
   * (its stray frames are ignored). Anything else breaks the protocol.
   */
  private openRequest(frame: Frame): Exclude<InFlight, { kind: "op" }> | null {
    const entry = this.inFlight.get(frame.requestId);
    if (entry && entry.kind !== "op") return entry;
    if (!entry && this.endedByError.has(frame.requestId)) return null;
    throw new ProtocolError(
      "KW_UNKNOWN_REQUEST",
      `A ${messageTypeName(frame.type)} message names request ${frame.requestId}, which is not open.`,
    );
  }

  private manifestFor(frame: Frame): ManifestRequest | null {
    const entry = this.openRequest(frame);
    if (entry === null) return null;
    if (entry.kind !== "manifest") {
      throw new ProtocolError(
        "KW_UNEXPECTED_MESSAGE",
        `A ${messageTypeName(frame.type)} message names request ${frame.requestId}, which is a PUT.`,
      );
    }
    return entry.manifest;
  }

  private putFor(frame: Frame): PutRequest {
    const entry = this.inFlight.get(frame.requestId);
    // After PUT_END the id stays taken until its answer, but the PUT is no longer open.
    if (entry?.kind !== "put" || entry.put.finished) {
      throw new ProtocolError(
        "KW_UNKNOWN_REQUEST",
        `A ${messageTypeName(frame.type)} message names request ${frame.requestId}, which is not an open PUT.`,
      );
    }
    return entry.put;
  }

  /** Run `work` without holding up the frame loop; shutdown waits for it. */
  track(work: Promise<void>): Promise<void> {
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
