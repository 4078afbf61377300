// The user's keepwatch configuration folder: the known-servers file and the files through
// which a loopback server hands its own user a credential (local-access.ts).

import { homedir } from "node:os";
import { join } from "node:path";

/** $KEEPWATCH_CONFIG_DIR, else $XDG_CONFIG_HOME/keepwatch, else ~/.config/keepwatch. */
export function defaultConfigDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KEEPWATCH_CONFIG_DIR) return env.KEEPWATCH_CONFIG_DIR;
  const base = env.XDG_CONFIG_HOME || join(homedir(), ".config");
  return join(base, "keepwatch");
}
