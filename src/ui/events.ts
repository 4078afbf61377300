// The events that client and server report while they work. Producers emit them on a
// Reporter; printers (TTY bars, plain lines, JSON) subscribe. Nothing here knows about
// terminals.

export type Operation = "put" | "delete" | "mkdir" | "restore";

export type ProgressEvent =
  /** server: listening for clients. */
  | { kind: "listening"; host: string; port: number; dest: string; fingerprint: string | null }
  /** server: a client finished its handshake; `principal` is the credential it used. */
  | { kind: "peer-connected"; peer: string; client: string; principal: string; set: string }
  /** server: a connection was closed before its handshake ended (TLS, credentials, set). */
  | { kind: "peer-refused"; peer: string; code: string; reason: string }
  /** client: a server's fingerprint was recorded in the known-servers file. */
  | { kind: "server-pinned"; where: string; fingerprint: string; file: string }
  /** server: a client's connection ended (reason absent after a clean goodbye). */
  | { kind: "peer-disconnected"; peer: string; set: string; reason?: string }
  /** client: handshake done. */
  | { kind: "connected"; host: string; port: number; set: string }
  /** client: the server went away; the client retries after `retryInMs`. */
  | { kind: "disconnected"; reason: string; retryInMs: number }
  /** client: startup (or recovery) scan of the source folder. */
  | { kind: "scan-start"; root: string }
  | { kind: "scan-done"; files: number; bytes: number; changedFiles: number; changedBytes: number }
  /** work was added to the queue (client: to send; server: being received). */
  | { kind: "queued"; files: number; bytes: number }
  /** one file's transfer began. */
  | { kind: "file-start"; path: string; size: number }
  /** bytes of the current file moved so far. */
  | { kind: "file-progress"; path: string; bytes: number; size: number }
  /**
   * the operation on `path` is acknowledged (client) or committed (server). `sentBytes`
   * (client, puts): content bytes that travelled; the rest was reused from the server.
   */
  | { kind: "file-done"; path: string; op: Operation; size: number; set?: string; sentBytes?: number }
  /** an operation was given up for now; `retry` says whether it is queued again. */
  | { kind: "file-skipped"; path: string; reason: string; retry: boolean }
  /** client: all known changes are acknowledged; watching for more. */
  | { kind: "idle"; files: number; bytes: number }
  | { kind: "info"; message: string }
  | { kind: "warning"; message: string; code?: string }
  | { kind: "error"; message: string; code: string };

export type ProgressEventKind = ProgressEvent["kind"];

/** Where producers send events; printers and tests listen. */
export interface Reporter {
  emit(event: ProgressEvent): void;
}

type Listener = (event: ProgressEvent) => void;

/** Fans events out to every subscriber, adding nothing. */
export class EventHub implements Reporter {
  private listeners: Listener[] = [];

  subscribe(listener: Listener): () => void {
    this.listeners.push(listener);
    return () => {
      this.listeners = this.listeners.filter((l) => l !== listener);
    };
  }

  emit(event: ProgressEvent): void {
    for (const listener of this.listeners) listener(event);
  }
}
