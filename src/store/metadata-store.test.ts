import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runMetadataStoreConformance } from "./metadata-store.conformance.js";
import type { MetadataStore } from "./metadata-store.js";
import { SqliteMetadataStore } from "./sqlite-metadata-store.js";

runMetadataStoreConformance("SQLite", async () => {
  const dir = await mkdtemp(join(tmpdir(), "kw-meta-"));
  const file = join(dir, "index.db");
  let current: MetadataStore = SqliteMetadataStore.open(file);
  return {
    store: current,
    reopen: async () => {
      await current.close();
      current = SqliteMetadataStore.open(file);
      return current;
    },
    cleanup: async () => {
      await current.close().catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
});
