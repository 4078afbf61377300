// Authentication and authorization for one server: which secret a HELLO carries, which
// sets its client may use and read, and which stored contents and chunks it may build on.
// A client may reuse (PUT_REF, a manifest's base, a chunk it does not send) only data
// its own sets already hold, so dedup never lets one client reach another's bytes or
// learn whether another client stored something.

import { timingSafeEqual } from "node:crypto";
import type { ChunkList } from "../chunking/chunk-list.js";
import { ProtocolError } from "../errors.js";
import { isLoopbackAddress } from "../security/local-access.js";
import { type ClientRegistry, hashSecret, LOCAL_CLIENT, type Principal } from "./clients.js";
import type { History } from "./history.js";

/**
 * Chunks a client sent itself whose version is not committed yet (an upload cut short):
 * the client may reuse them, so that a resumed upload does not send them again. Kept in
 * memory for this server's run, the newest POSSESSION_KEPT of all clients together
 * (about 19 GiB of chunks at the default sizes, ~30 MiB of memory).
 */
const POSSESSION_KEPT = 250_000;

/** What a request may reuse from the history without sending the bytes. */
export interface ReuseScope {
  /** The chunks of a content the client's sets hold, or null. */
  content(sha256: Buffer): Promise<ChunkList | null>;
  /** Whether the store holds the chunk and one of the client's sets uses it. */
  chunk(id: Buffer): Promise<boolean>;
}

export class AccessControl {
  private readonly localHash: Buffer;
  /** `principal NUL chunk id` of chunks sent by that principal, oldest first. */
  private readonly possessed = new Map<string, true>();

  constructor(
    readonly registry: ClientRegistry,
    localSecret: string,
  ) {
    this.localHash = hashSecret(localSecret);
  }

  /** The principal a HELLO's token names; throws KW_AUTH_FAILED (the connection closes). */
  authenticate(token: Buffer, peerAddress: string | undefined): Principal {
    if (token.length === 0) {
      throw new ProtocolError(
        "KW_AUTH_FAILED",
        "This server accepts only clients with a secret; ask its operator for one (keepwatch clients add NAME) and give it with --secret-file or KEEPWATCH_SECRET.",
      );
    }
    const hash = hashSecret(token);
    if (timingSafeEqual(hash, this.localHash)) {
      if (isLoopbackAddress(peerAddress)) {
        return { name: LOCAL_CLIENT, admin: true, sets: null, secretHash: hash };
      }
    } else {
      const principal = this.registry.authenticate(token);
      if (principal) return principal;
    }
    throw new ProtocolError(
      "KW_AUTH_FAILED",
      "The server did not accept this client's secret (wrong, or removed by the operator); ask the operator for a new one (keepwatch clients add NAME).",
    );
  }

  /** Throws KW_FORBIDDEN unless `principal` may use `set` (claiming it if it may). */
  authorize(principal: Principal, set: string, setHasData: boolean): void {
    const refusal = this.registry.authorize(principal, set, setHasData);
    if (refusal !== null) {
      throw new ProtocolError(
        "KW_FORBIDDEN",
        `Client ${principal.name} may not use the set ${JSON.stringify(set)} because ${refusal}; choose another set name with --name, or ask the server's operator to give this client that set.`,
      );
    }
  }

  /** The sets `principal` may read, or null for every set. */
  readableSets(principal: Principal): string[] | null {
    return principal.admin ? null : this.registry.readableSets(principal);
  }

  /** Remember that `principal` sent the bytes of chunk `id` (it may reuse the chunk). */
  notePossession(principal: Principal, id: Buffer): void {
    if (principal.admin) return;
    const key = possessionKey(principal, id);
    this.possessed.delete(key);
    this.possessed.set(key, true);
    if (this.possessed.size > POSSESSION_KEPT) {
      this.possessed.delete(this.possessed.keys().next().value as string);
    }
  }

  /** What `principal` may reuse, fixed for the length of one request. */
  reuseScope(principal: Principal, history: History): ReuseScope {
    const sets = this.readableSets(principal);
    const possessed = this.possessed;
    return {
      async content(sha256) {
        const chunks = await history.chunksOf(sha256);
        if (chunks === null || sets === null) return chunks;
        return (await history.meta.contentInSets(sha256, sets)) ? chunks : null;
      },
      async chunk(id) {
        if (!(await history.chunks.has(id))) return false;
        if (sets === null || possessed.has(possessionKey(principal, id))) return true;
        return history.meta.chunkInSets(id, sets);
      },
    };
  }

  stillValid(principal: Principal): boolean {
    return this.registry.stillValid(principal);
  }
}

function possessionKey(principal: Principal, id: Buffer): string {
  return `${principal.name}\0${id.toString("base64")}`;
}
