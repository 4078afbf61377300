// Who may use the server: the clients the operator added (DEST/.keepwatch/clients.db, each
// with the SHA-256 of its secret, never the secret) and the sets each may use. A secret
// is 32 random bytes, so one SHA-256 is enough to keep it from being read back out of the
// file; a slow password hash would add nothing but work for every connection.
//
// A client added with --sets may use exactly those sets. A client added without them
// claims a set by being the first to use it, provided no data and no other client has it
// already; a removed client's sets stay its own, so nobody else can claim what it left.

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { mkdirSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import Database from "better-sqlite3";
import { errnoCode, KeepwatchError } from "../errors.js";
import { setNameProblem } from "../protocol/paths.js";
import { writePrivateFile } from "../security/private-file.js";

export const CLIENTS_FILE = "clients.db";
const LOCAL_SECRET_FILE = "local-secret";
const SCHEMA_VERSION = 1;
const SECRET_PREFIX = "kw1-";
/** The name of the server's own user connecting over loopback (local-access.ts). */
export const LOCAL_CLIENT = "local";

export interface ClientRecord {
  name: string;
  /** The sets it may use, or null when it claims sets on first use. */
  sets: string[] | null;
  /** Sets it claimed. */
  owned: string[];
  createdMs: number;
}

/** Whom a connection speaks for, once its secret was checked. */
export interface Principal {
  name: string;
  /** The server's own user: every set. */
  admin: boolean;
  /** The sets it was given, or null (claims on first use, or admin). */
  sets: readonly string[] | null;
  secretHash: Buffer;
}

export function hashSecret(secret: string | Buffer): Buffer {
  return createHash("sha256").update(secret).digest();
}

export function newSecret(): string {
  return SECRET_PREFIX + randomBytes(32).toString("base64url");
}

/**
 * The secret of the server's own user (handed over by local-access.ts), the same at every
 * start of a server on this DEST so that a watching client survives a restart.
 */
export async function readOrCreateLocalSecret(controlDir: string): Promise<string> {
  const file = join(controlDir, LOCAL_SECRET_FILE);
  try {
    const secret = (await readFile(file, "utf8")).trim();
    if (secret.startsWith(SECRET_PREFIX)) return secret;
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") throw error;
  }
  const secret = newSecret();
  await writePrivateFile(file, `${secret}\n`);
  return secret;
}

/** Why `name` cannot name a client, or null. */
export function clientNameProblem(name: string): string | null {
  if (!/^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/.test(name)) {
    return "a client name is 1 to 64 letters, digits, dots, dashes, underscores or @, starting with a letter or digit";
  }
  if (name === LOCAL_CLIENT) return `"${LOCAL_CLIENT}" is the name of the server's own user`;
  return null;
}

interface ClientRow {
  name: string;
  secret_hash: Buffer;
  sets: string | null;
  created_ms: number;
}

export class ClientRegistry {
  private readonly stmt;

  private constructor(
    private readonly db: Database.Database,
    readonly file: string,
  ) {
    this.stmt = {
      byHash: db.prepare<[Buffer], ClientRow>("SELECT * FROM clients WHERE secret_hash = ?"),
      byName: db.prepare<[string], ClientRow>("SELECT * FROM clients WHERE name = ?"),
      all: db.prepare<[], ClientRow>("SELECT * FROM clients ORDER BY name"),
      add: db.prepare<[string, Buffer, string | null, number]>(
        "INSERT INTO clients (name, secret_hash, sets, created_ms) VALUES (?, ?, ?, ?)",
      ),
      remove: db.prepare<[string]>("DELETE FROM clients WHERE name = ?"),
      owner: db.prepare<[string], { owner: string }>("SELECT owner FROM set_owners WHERE set_name = ?"),
      owned: db.prepare<[string], { set_name: string }>(
        "SELECT set_name FROM set_owners WHERE owner = ? ORDER BY set_name",
      ),
      claim: db.prepare<[string, string]>("INSERT OR IGNORE INTO set_owners (set_name, owner) VALUES (?, ?)"),
      grantedTo: db.prepare<[], { name: string; sets: string }>(
        "SELECT name, sets FROM clients WHERE sets IS NOT NULL",
      ),
    };
  }

  /** Open (creating if needed) DEST/.keepwatch/clients.db. */
  static open(controlDir: string): ClientRegistry {
    const file = join(controlDir, CLIENTS_FILE);
    try {
      mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
      const db = new Database(file);
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = FULL");
      db.pragma("busy_timeout = 5000");
      migrate(db);
      return new ClientRegistry(db, file);
    } catch (error) {
      if (error instanceof KeepwatchError) throw error;
      throw new KeepwatchError(
        "KW_SERVER_IO",
        `The client list ${file} cannot be opened (${error instanceof Error ? error.message : String(error)}); check the folder's permissions and free space.`,
        { cause: error },
      );
    }
  }

  close(): void {
    this.db.close();
  }

  /** Add a client; returns its secret, which exists nowhere else afterwards. */
  add(name: string, sets: readonly string[] | null): string {
    const problem = clientNameProblem(name);
    if (problem !== null)
      throw new KeepwatchError(
        "KW_USAGE",
        `The client name ${JSON.stringify(name)} was refused: ${problem}.`,
      );
    for (const set of sets ?? []) {
      const setProblem = setNameProblem(set);
      if (setProblem !== null) {
        throw new KeepwatchError(
          "KW_USAGE",
          `The set name ${JSON.stringify(set)} was refused because ${setProblem}.`,
        );
      }
    }
    if (this.stmt.byName.get(name)) {
      throw new KeepwatchError(
        "KW_USAGE",
        `A client named ${name} exists already; remove it first with "keepwatch clients remove ${name}" or choose another name.`,
      );
    }
    const secret = newSecret();
    this.stmt.add.run(
      name,
      hashSecret(secret),
      sets ? JSON.stringify([...new Set(sets)].sort()) : null,
      Date.now(),
    );
    return secret;
  }

  /** Remove a client; false when there was none of that name. */
  remove(name: string): boolean {
    return this.stmt.remove.run(name).changes > 0;
  }

  list(): ClientRecord[] {
    return this.stmt.all.all().map((row) => ({
      name: row.name,
      sets: parseSets(row.sets),
      owned: this.stmt.owned.all(row.name).map((r) => r.set_name),
      createdMs: row.created_ms,
    }));
  }

  /** The client whose secret this is, or null. */
  authenticate(secret: Buffer): Principal | null {
    const hash = hashSecret(secret);
    const row = this.stmt.byHash.get(hash);
    // The lookup is by hash, so its timing says nothing about the secret; the compare is
    // constant-time all the same.
    if (!row || !timingSafeEqual(row.secret_hash, hash)) return null;
    return { name: row.name, admin: false, sets: parseSets(row.sets), secretHash: hash };
  }

  /** Whether the principal still exists with the same secret and sets (for revocation). */
  stillValid(principal: Principal): boolean {
    if (principal.admin) return true;
    const row = this.stmt.byName.get(principal.name);
    if (!row?.secret_hash.equals(principal.secretHash)) return false;
    return JSON.stringify(parseSets(row.sets)) === JSON.stringify(principal.sets);
  }

  /**
   * May `principal` use `set`? A client without a set list claims an unused set here.
   * `setHasData`: the set has versions or a mirror folder already. Returns null when
   * allowed, else why not.
   */
  authorize(principal: Principal, set: string, setHasData: boolean): string | null {
    if (principal.admin) return null;
    if (principal.sets !== null) {
      return principal.sets.includes(set)
        ? null
        : `it is not one of the sets client ${principal.name} was given`;
    }
    const claim = this.db.transaction((): string | null => {
      const owner = this.stmt.owner.get(set)?.owner;
      if (owner === principal.name) return null;
      if (owner !== undefined) return "another client uses it";
      if (this.grantedElsewhere(set)) return "it was given to another client";
      if (setHasData) return "it holds data no client was given";
      this.stmt.claim.run(set, principal.name);
      return null;
    });
    return claim.immediate();
  }

  /** The sets `principal` may read (for LIST), or null for all. */
  readableSets(principal: Principal): string[] | null {
    if (principal.admin) return null;
    if (principal.sets !== null) return [...principal.sets];
    return this.stmt.owned.all(principal.name).map((r) => r.set_name);
  }

  /** A number that changes whenever another process changed the client list. */
  changeCounter(): number {
    return this.db.pragma("data_version", { simple: true }) as number;
  }

  private grantedElsewhere(set: string): boolean {
    return this.stmt.grantedTo.all().some((row) => (parseSets(row.sets) ?? []).includes(set));
  }
}

function parseSets(text: string | null): string[] | null {
  if (text === null) return null;
  const value: unknown = JSON.parse(text);
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
}

function migrate(db: Database.Database): void {
  const version = db.pragma("user_version", { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new KeepwatchError(
      "KW_SERVER_IO",
      `The client list was written by a newer keepwatch (schema ${version}); run that version or a newer one.`,
    );
  }
  if (version < 1) {
    db.exec(`
      CREATE TABLE clients (
        name TEXT PRIMARY KEY,
        secret_hash BLOB NOT NULL UNIQUE,
        sets TEXT,
        created_ms INTEGER NOT NULL
      );
      CREATE TABLE set_owners (set_name TEXT PRIMARY KEY, owner TEXT NOT NULL);
    `);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }
}
