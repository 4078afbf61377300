// A server's fingerprint: the SHA-256 of its certificate (DER), written as
// "SHA256:" and unpadded base64, the form ssh prints for host keys.

import { createHash } from "node:crypto";

const PREFIX = "SHA256:";
const SHAPE = /^SHA256:[A-Za-z0-9+/]{43}$/;

export function fingerprintOf(certificateDer: Buffer): string {
  return PREFIX + createHash("sha256").update(certificateDer).digest("base64").replace(/=+$/, "");
}

/** The fingerprint in canonical form, or null when `text` is not one. */
export function parseFingerprint(text: string): string | null {
  const trimmed = text.trim();
  const candidate = trimmed.startsWith(PREFIX) ? trimmed : PREFIX + trimmed;
  return SHAPE.test(candidate) ? candidate : null;
}
