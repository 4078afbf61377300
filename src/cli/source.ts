// Resolves SRC, the set name and the state folder the same way for `client` and `push`.

import { basename, resolve } from "node:path";
import { checkSource } from "../client/backup.js";
import { defaultStateDir } from "../client/state.js";
import { assertValidSetName } from "../protocol/paths.js";

export interface SourceSetup {
  root: string;
  set: string;
  stateDir: string;
}

export async function resolveSource(
  src: string,
  flags: { name?: string; stateDir?: string },
): Promise<SourceSetup> {
  const root = resolve(src);
  await checkSource(root);
  const set = flags.name ?? basename(root);
  assertValidSetName(set);
  return { root, set, stateDir: flags.stateDir ? resolve(flags.stateDir) : defaultStateDir() };
}
