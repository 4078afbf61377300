// The server's TLS identity: a private key and a self-signed certificate kept in
// DEST/.keepwatch/identity/. Clients do not check it against any authority; they pin its
// fingerprint (known-servers.ts), so the certificate's names and dates carry no meaning.

import { createPrivateKey, generateKeyPairSync, randomBytes, X509Certificate } from "node:crypto";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode, KeepwatchError } from "../errors.js";
import { fingerprintOf } from "./fingerprint.js";
import { writePrivateFile } from "./private-file.js";

export const IDENTITY_DIR = "identity";
const KEY_FILE = "key.pem";
const CERT_FILE = "cert.pem";
const VALID_YEARS = 100;

export interface ServerIdentity {
  keyPem: string;
  certPem: string;
  fingerprint: string;
}

/** The identity kept in `controlDir` (DEST/.keepwatch), or null when there is none yet. */
export async function loadIdentity(controlDir: string): Promise<ServerIdentity | null> {
  const folder = join(controlDir, IDENTITY_DIR);
  let keyPem: string;
  let certPem: string;
  try {
    keyPem = await readFile(join(folder, KEY_FILE), "utf8");
    certPem = await readFile(join(folder, CERT_FILE), "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return null;
    throw error;
  }
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) throw new Error("the key does not match");
  } catch (error) {
    throw new KeepwatchError(
      "KW_IDENTITY_DAMAGED",
      `The server identity in ${folder} is damaged (${error instanceof Error ? error.message : String(error)}); make a new one with "keepwatch fingerprint DEST --rotate" and pair the clients again.`,
    );
  }
  return { keyPem, certPem, fingerprint: fingerprintOf(cert.raw) };
}

/** The identity kept in `controlDir`, made on first use. */
export async function loadOrCreateIdentity(controlDir: string): Promise<ServerIdentity> {
  return (await loadIdentity(controlDir)) ?? (await createIdentity(controlDir));
}

/** Make a new key and certificate, replacing any there were (the certificate last). */
export async function createIdentity(controlDir: string): Promise<ServerIdentity> {
  const folder = join(controlDir, IDENTITY_DIR);
  // RSA-2048: made in ~0.2 s here, and every TLS 1.3 implementation takes it.
  const { privateKey, publicKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  // Loaded here, not at the top: it costs every other command about 40 ms and 12 MB to load.
  const { default: forge } = await import("node-forge");
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  // A positive serial number: the first hex digit below 8.
  cert.serialNumber = `1${randomBytes(15).toString("hex")}`;
  const now = Date.now();
  cert.validity.notBefore = new Date(now - 24 * 3600_000);
  cert.validity.notAfter = new Date(now + VALID_YEARS * 365 * 24 * 3600_000);
  const name = [{ name: "commonName", value: "keepwatch server" }];
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.sign(forge.pki.privateKeyFromPem(privateKey), forge.md.sha256.create());
  const certPem = forge.pki.certificateToPem(cert);
  // The old certificate goes first, so that a crash in between never pairs it with the new key.
  await rm(join(folder, CERT_FILE), { force: true });
  await writePrivateFile(join(folder, KEY_FILE), privateKey);
  await writePrivateFile(join(folder, CERT_FILE), certPem);
  return { keyPem: privateKey, certPem, fingerprint: fingerprintOf(new X509Certificate(certPem).raw) };
}
