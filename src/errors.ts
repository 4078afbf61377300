// Errors a person or a peer can cause, each with a stable code listed in docs/errors.md.
// Callers match on `code`, never on message text; the CLI prints `message` as one sentence
// and exits with `exitCode`.

/** Exit codes shared by every command; `--help` lists them. */
export const ExitCode = {
  ok: 0,
  failure: 1,
  usage: 2,
  localFiles: 3,
  network: 4,
  refused: 5,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/**
 * Every code keepwatch can raise. Codes sent on the wire (marked `wire`) are part of the
 * protocol: never rename one, only add.
 */
export const ErrorCodes = {
  // protocol violations and refusals (wire)
  KW_BAD_MAGIC: { exit: ExitCode.refused, wire: true },
  KW_VERSION_MISMATCH: { exit: ExitCode.refused, wire: true },
  KW_FRAME_TOO_LARGE: { exit: ExitCode.refused, wire: true },
  KW_BAD_FRAME: { exit: ExitCode.refused, wire: true },
  KW_BAD_MESSAGE: { exit: ExitCode.refused, wire: true },
  KW_UNEXPECTED_MESSAGE: { exit: ExitCode.refused, wire: true },
  KW_UNKNOWN_REQUEST: { exit: ExitCode.refused, wire: true },
  KW_WINDOW_EXCEEDED: { exit: ExitCode.refused, wire: true },
  KW_TIMEOUT: { exit: ExitCode.network, wire: true },
  KW_TOO_MANY_CONNECTIONS: { exit: ExitCode.refused, wire: true },
  KW_SHUTTING_DOWN: { exit: ExitCode.network, wire: true },
  KW_BAD_PATH: { exit: ExitCode.refused, wire: true },
  KW_BAD_SET_NAME: { exit: ExitCode.refused, wire: true },
  KW_SIZE_MISMATCH: { exit: ExitCode.refused, wire: true },
  KW_HASH_MISMATCH: { exit: ExitCode.refused, wire: true },
  KW_SERVER_IO: { exit: ExitCode.failure, wire: true },
  KW_DISK_FULL: { exit: ExitCode.failure, wire: true },
  KW_CHUNK_MISSING: { exit: ExitCode.failure, wire: true },
  KW_CHUNK_CORRUPT: { exit: ExitCode.failure, wire: true },
  KW_CONTENT_UNKNOWN: { exit: ExitCode.failure, wire: true },
  KW_NOT_FOUND: { exit: ExitCode.failure, wire: true },
  KW_AUTH_FAILED: { exit: ExitCode.refused, wire: true },
  KW_FILE_TOO_LARGE: { exit: ExitCode.failure, wire: true },
  KW_FORBIDDEN: { exit: ExitCode.refused, wire: true },
  // local conditions (never on the wire)
  KW_USAGE: { exit: ExitCode.usage, wire: false },
  KW_SOURCE_MISSING: { exit: ExitCode.localFiles, wire: false },
  KW_SOURCE_NOT_DIR: { exit: ExitCode.localFiles, wire: false },
  KW_SOURCE_UNREADABLE: { exit: ExitCode.localFiles, wire: false },
  KW_DEST_NOT_DIR: { exit: ExitCode.localFiles, wire: false },
  KW_DEST_NOT_WRITABLE: { exit: ExitCode.localFiles, wire: false },
  KW_STATE_UNUSABLE: { exit: ExitCode.localFiles, wire: false },
  KW_PORT_IN_USE: { exit: ExitCode.network, wire: false },
  KW_ADDRESS_UNAVAILABLE: { exit: ExitCode.network, wire: false },
  KW_UNREACHABLE: { exit: ExitCode.network, wire: false },
  KW_CONNECTION_LOST: { exit: ExitCode.network, wire: false },
  KW_NOT_KEEPWATCH: { exit: ExitCode.refused, wire: false },
  KW_PUSH_INCOMPLETE: { exit: ExitCode.failure, wire: false },
  KW_TARGET_EXISTS: { exit: ExitCode.localFiles, wire: false },
  KW_TARGET_UNUSABLE: { exit: ExitCode.localFiles, wire: false },
  KW_INTERRUPTED: { exit: ExitCode.failure, wire: false },
  KW_DEST_IN_USE: { exit: ExitCode.localFiles, wire: false },
  KW_NO_HISTORY: { exit: ExitCode.localFiles, wire: false },
  KW_HISTORY_DAMAGED: { exit: ExitCode.failure, wire: false },
  KW_FINGERPRINT_MISMATCH: { exit: ExitCode.refused, wire: false },
  KW_TLS_FAILED: { exit: ExitCode.refused, wire: false },
  KW_IDENTITY_DAMAGED: { exit: ExitCode.localFiles, wire: false },
  KW_NO_IDENTITY: { exit: ExitCode.localFiles, wire: false },
  KW_SECRET_UNREADABLE: { exit: ExitCode.localFiles, wire: false },
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export function isErrorCode(value: string): value is ErrorCode {
  return Object.hasOwn(ErrorCodes, value);
}

/** An error meant for a person: `message` is one complete sentence saying what to do. */
export class KeepwatchError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "KeepwatchError";
    this.code = code;
  }

  get exitCode(): ExitCodeValue {
    return ErrorCodes[this.code].exit;
  }
}

/** The peer broke the protocol; the connection must close and nothing may be written. */
export class ProtocolError extends KeepwatchError {
  constructor(code: ErrorCode, message: string) {
    super(code, message);
    this.name = "ProtocolError";
  }
}

/** An error the remote side reported with an ERROR message. */
export class RemoteError extends KeepwatchError {
  constructor(code: ErrorCode, message: string) {
    super(code, message);
    this.name = "RemoteError";
  }
}

export function errnoCode(error: unknown): string | undefined {
  if (error && typeof error === "object" && "code" in error && typeof error.code === "string") {
    return error.code;
  }
  return undefined;
}
