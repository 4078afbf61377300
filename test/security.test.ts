// Security end to end (DESIGN.md section 6, docs/security.md): TLS by default with a pinned
// server identity, client secrets, per-set authorization and revocation, all with the real
// CLI on loopback. Each refusal is checked for its sentence and exit code and for having
// written nothing.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Chunker, sha256 } from "../src/chunking/fastcdc.js";
import { decodeHistory, encodeHistory, type ManifestOp } from "../src/protocol/history-messages.js";
import { MessageType } from "../src/protocol/messages.js";
import { localAccessFile } from "../src/security/local-access.js";
import {
  compareTrees,
  exists,
  LOOPBACK,
  type RunResult,
  readTree,
  Sandbox,
  type ServerHandle,
  stackLines,
} from "./helpers.js";
import { closeAllClients, expectError, rawClient, showFrame } from "./raw-client.js";

// ---------------------------------------------------------------------------------------
// Helpers

/** A loopback proxy that keeps every byte a client sends, to look at what travels. */
class RecordingProxy {
  readonly sent: Buffer[] = [];
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(targetPort: number): Promise<RecordingProxy> {
    let proxy: RecordingProxy | undefined;
    const server = createServer((client) => {
      const upstream = connect({ host: LOOPBACK, port: targetPort });
      for (const socket of [client, upstream]) {
        proxy?.sockets.add(socket);
        socket.on("error", () => {});
        socket.on("close", () => proxy?.sockets.delete(socket));
      }
      client.on("data", (data: Buffer) => proxy?.sent.push(Buffer.from(data)));
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve) => server.listen(0, LOOPBACK, () => resolve()));
    const address = server.address();
    proxy = new RecordingProxy(server, typeof address === "object" && address ? address.port : 0);
    return proxy;
  }

  get bytes(): Buffer {
    return Buffer.concat(this.sent);
  }

  close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** One person's machine: its own config and state folders, so no local-access file. */
function remoteEnv(box: Sandbox, who: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return box.env({
    KEEPWATCH_CONFIG_DIR: box.path(`config-${who}`),
    KEEPWATCH_STATE_DIR: box.path(`state-${who}`),
    ...extra,
  });
}

function kwAs(box: Sandbox, who: string, args: string[], extra: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return box.run(`${who}:${args[0]}`, args, { env: remoteEnv(box, who, extra) });
}

/** `keepwatch clients add NAME --dest DEST` with the secret written to a file; returns the file. */
async function addClient(box: Sandbox, dest: string, name: string, sets?: string[]): Promise<string> {
  const file = box.path(`${name}.secret`);
  const result = await box.run("clients-add", [
    "clients",
    "add",
    name,
    "--dest",
    dest,
    "--secret-out",
    file,
    ...(sets ? ["--sets", sets.join(",")] : []),
  ]);
  assertOk(result, `clients add ${name}`);
  return file;
}

function assertOk(result: RunResult, what: string): void {
  const context = `${what}\n${result.proc.describe(30)}`;
  assert.equal(result.code, 0, `${what} should exit 0\n${context}`);
  assert.deepEqual(stackLines(result.stderr), [], `${what} printed a stack trace\n${context}`);
}

/** Exit `exit`, and one sentence on stderr containing each of `mentions`. */
function assertRefused(result: RunResult, exit: number, mentions: string[], what: string): void {
  const context = `${what}\n${result.proc.describe(30)}`;
  assert.equal(result.code, exit, `${what}: exit code\n${context}`);
  assert.deepEqual(stackLines(result.stderr), [], `${what}: a stack trace\n${context}`);
  const lines = result.stderr.split("\n").filter((line) => line.trim() !== "");
  assert.equal(lines.length, 1, `${what}: one sentence on stderr\n${context}`);
  for (const fragment of mentions) {
    assert.ok(
      lines[0]?.includes(fragment),
      `${what}: the sentence mentions ${JSON.stringify(fragment)}\n${context}`,
    );
  }
}

function pushArgs(src: string, port: number, extra: string[] = []): string[] {
  return ["push", src, LOOPBACK, "--port", String(port), ...extra];
}

async function makeSource(
  box: Sandbox,
  name: string,
  files: Record<string, string | Buffer>,
): Promise<string> {
  const src = box.path("sources", name);
  await mkdir(src, { recursive: true });
  for (const [path, content] of Object.entries(files)) await writeFile(join(src, path), content);
  return src;
}

/** The listing of `ls --json`: set names. */
function setsListed(result: RunResult): string[] {
  return result.otherLines.map((line) => (JSON.parse(line) as { set: string }).set).sort();
}

// ---------------------------------------------------------------------------------------

describe("TLS, pinning and plain TCP", { timeout: 180_000 }, () => {
  let box: Sandbox;
  before(async () => {
    box = await Sandbox.create(null);
  });
  after(() => box.cleanup());

  it("TLS by default: the identity is private, its fingerprint printed at start, on request and the same after a restart; nothing travels in clear, except with --insecure", async () => {
    const dest = box.path("dest-tls");
    let server = await box.startServer(dest);
    const fingerprint = server.events.find((e) => e.event === "listening")?.fingerprint;
    assert.match(
      String(fingerprint),
      /^SHA256:[A-Za-z0-9+/]{43}$/,
      "the listening event has the fingerprint",
    );
    const key = await stat(join(dest, ".keepwatch", "identity", "key.pem"));
    assert.equal(key.mode & 0o077, 0, "the private key is readable by its owner only");
    const printed = await box.run("fingerprint", ["fingerprint", dest]);
    assertOk(printed, "keepwatch fingerprint");
    assert.equal(printed.stdout.trim(), fingerprint, "keepwatch fingerprint DEST prints the same");
    await server.kill();
    server = await box.startServer(dest);
    assert.equal(
      server.events.find((e) => e.event === "listening")?.fingerprint,
      fingerprint,
      "a restart keeps the identity",
    );

    // What a client sends through a recording proxy: no file content, name or secret.
    const marker = `plain-marker-${randomBytes(8).toString("hex")}`;
    const src = await makeSource(box, "wire", { [`${marker}.txt`]: marker.repeat(100) });
    const secretFile = await addClient(box, dest, "wire");
    const secret = (await readFile(secretFile, "utf8")).trim();
    const proxy = await RecordingProxy.start(server.port);
    box.onCleanup(() => proxy.close());
    assertOk(
      await kwAs(box, "wire", pushArgs(src, proxy.port, ["--secret-file", secretFile])),
      "push over TLS",
    );
    assert.deepEqual(await compareTrees(src, join(dest, "wire")), [], "the push arrived");
    const tlsBytes = proxy.bytes;
    assert.ok(tlsBytes.length > 1000, "the proxy saw the traffic");
    assert.equal(tlsBytes[0], 0x16, "the first byte is a TLS handshake record");
    for (const [what, text] of [
      ["file content", marker],
      ["file name", `${marker}.txt`],
      ["secret", secret],
      ["preamble", "KWATCH"],
    ]) {
      assert.equal(
        tlsBytes.includes(Buffer.from(text as string)),
        false,
        `the ${what} does not travel in clear`,
      );
    }

    // The same check sees plain text when both sides say --insecure (so it can fail).
    const plainDest = box.path("dest-plain");
    const plainServer = await box.startServer(plainDest, { args: ["--insecure"] });
    assert.equal(plainServer.events.find((e) => e.event === "listening")?.fingerprint, null);
    assert.equal(await exists(join(plainDest, ".keepwatch", "identity")), false, "no identity without TLS");
    const plainSecret = await addClient(box, plainDest, "wire");
    const plainProxy = await RecordingProxy.start(plainServer.port);
    box.onCleanup(() => plainProxy.close());
    assertOk(
      await kwAs(box, "wire", pushArgs(src, plainProxy.port, ["--secret-file", plainSecret, "--insecure"])),
      "push with --insecure",
    );
    assert.ok(plainProxy.bytes.includes(Buffer.from(marker)), "without TLS the content travels in clear");
    await server.kill();
    await plainServer.kill();
  });

  it("a server is pinned on first use; a changed identity is refused with a plain sentence and nothing written; --fingerprint accepts the new one", async () => {
    const dest = box.path("dest-pin");
    let server = await box.startServer(dest);
    const port = server.port;
    const first = String(server.events.find((e) => e.event === "listening")?.fingerprint);
    const secretFile = await addClient(box, dest, "pinner");
    const src = await makeSource(box, "pinned", { "a.txt": "version 1" });
    const auth = ["--secret-file", secretFile, "--json"];

    const pinning = await kwAs(box, "pinner", pushArgs(src, port, auth));
    assertOk(pinning, "first push");
    const pinned = pinning.events.find((e) => e.event === "server-pinned");
    assert.equal(pinned?.fingerprint, first, "the client reports the pin");
    const knownFile = join(box.path("config-pinner"), "known-servers");
    assert.match(
      await readFile(knownFile, "utf8"),
      new RegExp(`^${LOOPBACK}:${port} ${first.replace(/[+/]/g, "\\$&")}$`, "m"),
    );
    assert.equal((await stat(knownFile)).mode & 0o077, 0, "the known-servers file is private");
    const again = await kwAs(box, "pinner", pushArgs(src, port, auth));
    assertOk(again, "second push");
    assert.equal(again.events.filter((e) => e.event === "server-pinned").length, 0, "no second pin");

    // The operator replaces the identity: the pinned client refuses the server.
    await server.kill();
    const rotated = await box.run("rotate", ["fingerprint", dest, "--rotate"]);
    assertOk(rotated, "fingerprint --rotate");
    const second = rotated.stdout.trim();
    assert.notEqual(second, first, "a new fingerprint");
    server = await box.startServer(dest, { port });
    await writeFile(join(src, "a.txt"), "version 2");
    const mirrorBefore = await readTree(join(dest, "pinned"));
    const refused = await kwAs(box, "pinner", pushArgs(src, port, ["--secret-file", secretFile]));
    assertRefused(refused, 5, [second, first, knownFile, "--fingerprint"], "changed fingerprint");
    assert.deepEqual(await readTree(join(dest, "pinned")), mirrorBefore, "nothing written");
    assert.equal(await readFile(join(dest, "pinned", "a.txt"), "utf8"), "version 1");

    const wrong = await kwAs(box, "pinner", pushArgs(src, port, [...auth, "--fingerprint", first]));
    assert.equal(wrong.code, 5, `a wrong --fingerprint is refused\n${wrong.proc.describe()}`);
    assert.ok(wrong.events.some((e) => e.event === "error" && e.code === "KW_FINGERPRINT_MISMATCH"));

    const accepted = await kwAs(box, "pinner", pushArgs(src, port, [...auth, "--fingerprint", second]));
    assertOk(accepted, "push with the new --fingerprint");
    assert.equal(await readFile(join(dest, "pinned", "a.txt"), "utf8"), "version 2");
    assert.match(await readFile(knownFile, "utf8"), new RegExp(second.replace(/[+/]/g, "\\$&")), "re-pinned");
    assertOk(await kwAs(box, "pinner", pushArgs(src, port, auth)), "the new pin holds without the flag");
    await server.kill();
  });

  it("TLS and plain TCP never mix: each mismatch ends in a sentence naming --insecure, and nothing is written", async () => {
    const tlsDest = box.path("dest-mix-tls");
    const plainDest = box.path("dest-mix-plain");
    const tlsServer = await box.startServer(tlsDest);
    const plainServer = await box.startServer(plainDest, { args: ["--insecure"] });
    const src = await makeSource(box, "mix", { "m.txt": "mix" });

    const toPlain = await box.run("tls-to-plain", pushArgs(src, plainServer.port));
    assertRefused(toPlain, 5, ["TLS", "--insecure"], "a TLS client to a plain server");
    const toTls = await box.run("plain-to-tls", pushArgs(src, tlsServer.port, ["--insecure"]));
    assertRefused(toTls, 4, ["TLS", "without --insecure"], "a plain client to a TLS server");
    assert.equal(await exists(join(tlsDest, "mix")), false, "nothing in the TLS server's mirror");
    assert.equal(await exists(join(plainDest, "mix")), false, "nothing in the plain server's mirror");
    assert.ok(
      tlsServer.events.some((e) => e.event === "peer-refused" && e.code === "KW_TLS_FAILED"),
      "the TLS server says why it dropped the plain client",
    );
    assertOk(
      await box.run("plain-to-plain", pushArgs(src, plainServer.port, ["--insecure"])),
      "both --insecure",
    );
    assert.deepEqual(await compareTrees(src, join(plainDest, "mix")), []);
    await tlsServer.kill();
    await plainServer.kill();
  });
});

describe("credentials and authorization", { timeout: 180_000 }, () => {
  let box: Sandbox;
  let server: ServerHandle;
  let dest: string;
  before(async () => {
    box = await Sandbox.create(null);
    dest = box.path("dest");
    server = await box.startServer(dest);
  });
  after(async () => {
    closeAllClients();
    await box.cleanup();
  });

  it("the server's own user needs no secret: a private local-access file per port, removed at a clean stop", async () => {
    const file = localAccessFile(box.configDir, server.port);
    const access = JSON.parse(await readFile(file, "utf8")) as { fingerprint: string; secret: string };
    assert.equal((await stat(file)).mode & 0o077, 0, "readable by its owner only");
    assert.equal(access.fingerprint, server.events.find((e) => e.event === "listening")?.fingerprint);
    const src = await makeSource(box, "own", { "o.txt": "own" });
    assertOk(
      await box.run("own-push", pushArgs(src, server.port)),
      "a push of the same user without a secret",
    );
    assert.deepEqual(await compareTrees(src, join(dest, "own")), []);
    assert.equal(
      await exists(join(box.configDir, "known-servers")),
      false,
      "nothing pinned: the file vouches",
    );

    const other = await makeSource(box, "spare", {});
    const spare = await box.startServer(box.path("dest-spare"));
    const spareFile = localAccessFile(box.configDir, spare.port);
    assert.equal(await exists(spareFile), true);
    await spare.kill("SIGTERM");
    assert.equal(await exists(spareFile), false, "a clean stop removes the file");
    assert.equal(await exists(other), true);
  });

  it("no secret, a wrong one or a removed one: KW_AUTH_FAILED, exit 5, nothing written; a secret works from a file or KEEPWATCH_SECRET, never from the command line", async () => {
    const src = await makeSource(box, "guarded", { "g.txt": "guarded" });
    const none = await kwAs(box, "stranger", pushArgs(src, server.port));
    assertRefused(none, 5, ["secret"], "no secret");
    const wrong = await kwAs(box, "stranger", pushArgs(src, server.port), {
      KEEPWATCH_SECRET: "kw1-not-a-real-secret",
    });
    assertRefused(wrong, 5, ["did not accept"], "a wrong secret");
    const wrongJson = await kwAs(box, "stranger", pushArgs(src, server.port, ["--json"]), {
      KEEPWATCH_SECRET: "kw1-not-a-real-secret",
    });
    assert.ok(wrongJson.events.some((e) => e.event === "error" && e.code === "KW_AUTH_FAILED"));
    assert.equal(await exists(join(dest, "guarded")), false, "no set folder");
    assert.ok(
      server.events.some((e) => e.event === "peer-refused" && e.code === "KW_AUTH_FAILED"),
      "the server reports the refusal",
    );

    const secretFile = await addClient(box, dest, "guard");
    const secret = (await readFile(secretFile, "utf8")).trim();
    assert.equal((await stat(secretFile)).mode & 0o077, 0, "--secret-out writes a private file");
    assertOk(
      await kwAs(box, "guard", pushArgs(src, server.port), { KEEPWATCH_SECRET: secret }),
      "secret from the environment",
    );
    assert.deepEqual(await compareTrees(src, join(dest, "guarded")), []);

    const loose = box.path("loose.secret");
    await writeFile(loose, `${secret}\n`);
    await chmod(loose, 0o644);
    const warned = await kwAs(box, "guard", pushArgs(src, server.port, ["--secret-file", loose]));
    assertOk(warned, "a secret file others can read still works");
    assert.match(warned.stdout + warned.stderr, /can be read by other users.*chmod 600/);

    const onCommandLine = await kwAs(box, "guard", pushArgs(src, server.port, ["--secret", secret]));
    assert.equal(onCommandLine.code, 2, "there is no option that takes the secret itself");

    const listed = await box.run("clients-list", ["clients", "list", "--dest", dest, "--json"]);
    assertOk(listed, "clients list");
    const guard = listed.stdout
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as { name: string; owned: string[] })
      .find((c) => c.name === "guard");
    assert.deepEqual(guard?.owned, ["guarded"], "the client owns the set it claimed");
    assert.equal(listed.stdout.includes(secret), false, "the list never shows a secret");
    const db = await readFile(join(dest, ".keepwatch", "clients.db"));
    assert.equal(db.includes(Buffer.from(secret)), false, "the server stores no secret");

    assertOk(
      await box.run("clients-remove", ["clients", "remove", "guard", "--dest", dest]),
      "clients remove",
    );
    await writeFile(join(src, "g.txt"), "changed after the removal");
    const removed = await kwAs(box, "guard", pushArgs(src, server.port, ["--secret-file", secretFile]));
    assertRefused(removed, 5, ["did not accept"], "a removed client");
    assert.equal(await readFile(join(dest, "guarded", "g.txt"), "utf8"), "guarded", "nothing written");
    const unknown = await box.run("clients-remove", ["clients", "remove", "guard", "--dest", dest]);
    assertRefused(unknown, 2, ["no client named guard"], "removing an unknown client");
  });

  it("two clients: each lists, reads and restores only its own sets; a set given with --sets is that client's only; an operator's set is claimed by nobody", async () => {
    const alice = await addClient(box, dest, "alice");
    const bob = await addClient(box, dest, "bob");
    const aliceSrc = await makeSource(box, "alpha", { "secret.txt": "alice's secret" });
    const bobSrc = await makeSource(box, "beta", { "b.txt": "bob's file" });
    const as = (file: string) => ["--secret-file", file];
    assertOk(await kwAs(box, "alice", pushArgs(aliceSrc, server.port, as(alice))), "alice pushes alpha");
    assertOk(await kwAs(box, "bob", pushArgs(bobSrc, server.port, as(bob))), "bob pushes beta");
    // Given after alice claimed it: a set given to a client cannot be claimed by another.
    const auditor = await addClient(box, dest, "auditor", ["alpha"]);

    // Bob may not write, list, read or restore alpha.
    const intruder = await makeSource(box, "intruder", { "secret.txt": "bob was here" });
    const write = await kwAs(box, "bob", pushArgs(intruder, server.port, [...as(bob), "--name", "alpha"]));
    assertRefused(write, 5, ["may not use the set", "alpha"], "bob writing alpha");
    assert.equal(await readFile(join(dest, "alpha", "secret.txt"), "utf8"), "alice's secret");
    const port = ["--port", String(server.port)];
    const bobLs = await kwAs(box, "bob", ["ls", LOOPBACK, ...port, ...as(bob), "--json"]);
    assertOk(bobLs, "bob lists");
    assert.deepEqual(setsListed(bobLs), ["beta"], "bob sees only his set");
    const aliceLs = await kwAs(box, "alice", ["ls", LOOPBACK, ...port, ...as(alice), "--json"]);
    assert.deepEqual(setsListed(aliceLs), ["alpha"], "alice sees only hers");
    const ownerLs = await box.run("owner-ls", ["ls", LOOPBACK, ...port, "--json"]);
    assert.ok(
      setsListed(ownerLs).includes("alpha") && setsListed(ownerLs).includes("beta"),
      "the operator sees all",
    );
    const read = await kwAs(box, "bob", ["history", "alpha/secret.txt", LOOPBACK, ...port, ...as(bob)]);
    assertRefused(read, 5, ["may not use the set"], "bob reading alpha's history");
    const target = box.path("stolen");
    const restore = await kwAs(box, "bob", [
      "restore",
      "alpha",
      LOOPBACK,
      ...port,
      ...as(bob),
      "--to",
      target,
    ]);
    assertRefused(restore, 5, ["may not use the set"], "bob restoring alpha");
    assert.equal(await exists(target), false, "nothing restored");

    // A set given with --sets: the auditor may read alpha, and only alpha.
    const audited = box.path("audited");
    assertOk(
      await kwAs(box, "auditor", ["restore", "alpha", LOOPBACK, ...port, ...as(auditor), "--to", audited]),
      "the auditor restores alpha",
    );
    assert.equal(await readFile(join(audited, "alpha", "secret.txt"), "utf8"), "alice's secret");
    const auditorLs = await kwAs(box, "auditor", ["ls", LOOPBACK, ...port, ...as(auditor), "--json"]);
    assert.deepEqual(setsListed(auditorLs), ["alpha"]);
    const elsewhere = await kwAs(
      box,
      "auditor",
      pushArgs(bobSrc, server.port, [...as(auditor), "--name", "gamma"]),
    );
    assertRefused(elsewhere, 5, ["not one of the sets"], "the auditor claiming another set");
    assert.equal(await exists(join(dest, "gamma")), false);

    // A set the operator made (through the local access) belongs to no client.
    const ownSrc = await makeSource(box, "operators", { "o.txt": "the operator's" });
    assertOk(await box.run("operator-push", pushArgs(ownSrc, server.port)), "the operator pushes");
    const claim = await kwAs(
      box,
      "bob",
      pushArgs(intruder, server.port, [...as(bob), "--name", "operators"]),
    );
    assertRefused(claim, 5, ["holds data no client was given"], "bob claiming the operator's set");
    assert.equal(await readFile(join(dest, "operators", "o.txt"), "utf8"), "the operator's");
  });

  it("a client reuses only what its own sets hold: another client's content is unknown to PUT_REF and as a base, and its chunks are asked for", async () => {
    const carolFile = await addClient(box, dest, "carol");
    const daveFile = await addClient(box, dest, "dave");
    const content = randomBytes(1024 * 1024);
    const carolSrc = await makeSource(box, "carols", { "big.bin": content });
    assertOk(
      await kwAs(box, "carol", pushArgs(carolSrc, server.port, ["--secret-file", carolFile])),
      "carol pushes",
    );
    const digest = createHash("sha256").update(content).digest();
    const chunker = new Chunker();
    const pieces = [...chunker.push(content)];
    const last = chunker.finish();
    if (last) pieces.push(last);
    const ops: ManifestOp[] = pieces.map((p) => ({ op: "new", length: p.data.length, id: sha256(p.data) }));
    assert.ok(ops.length > 4, "the file has several chunks");
    const token = async (file: string) => Buffer.from((await readFile(file, "utf8")).trim());

    const header = {
      path: "copied.bin",
      size: content.length,
      mtimeMs: 1_700_000_000_000,
      mode: 0o644,
      sha256: digest,
    };
    /** NEED's indices after a manifest of carol's chunks, as `who` on set `set`. */
    const neededAs = async (secretFile: string, set: string): Promise<number[]> => {
      const client = await rawClient(server.port, { token: await token(secretFile) });
      await client.hello(set);
      client.send(
        MessageType.MANIFEST_BEGIN,
        2,
        encodeHistory.manifestBegin({ ...header, base: Buffer.alloc(0), chunkCount: ops.length }),
      );
      for (const payload of encodeHistory.manifestData(ops, 64 * 1024))
        client.send(MessageType.MANIFEST_DATA, 2, payload);
      client.send(MessageType.MANIFEST_END, 2);
      const needed: number[] = [];
      for (;;) {
        const frame = await client.waitFor("NEED", (f) => f.requestId === 2);
        assert.equal(showFrame(frame), "NEED id 2");
        const need = decodeHistory.need(frame.payload);
        for (const [start, count] of need.ranges) for (let i = start; i < start + count; i++) needed.push(i);
        if (need.last) break;
      }
      client.destroy();
      return needed;
    };
    assert.deepEqual(await neededAs(carolFile, "carols"), [], "carol's own chunks are not asked for");
    assert.deepEqual(
      await neededAs(daveFile, "daves"),
      ops.map((_, i) => i),
      "every one of carol's chunks is asked of dave",
    );

    const dave = await rawClient(server.port, { token: await token(daveFile) });
    await dave.hello("daves");
    dave.send(MessageType.PUT_REF, 3, encodeHistory.putRef(header));
    await expectError(dave, 3, "KW_CONTENT_UNKNOWN", "dave's PUT_REF of carol's content");
    dave.send(
      MessageType.MANIFEST_BEGIN,
      4,
      encodeHistory.manifestBegin({ ...header, base: digest, chunkCount: ops.length }),
    );
    await expectError(dave, 4, "KW_CONTENT_UNKNOWN", "dave's manifest on carol's content as base");
    dave.destroy();
    assert.equal(await exists(join(dest, "daves", "copied.bin")), false, "nothing reached dave's mirror");
  });

  it("removing a client closes its live connection: its watching client stops with exit 5", async () => {
    const secretFile = await addClient(box, dest, "watcher");
    const src = await makeSource(box, "watched", { "w.txt": "watched" });
    const watcher = box.spawn(
      "watcher",
      ["client", src, LOOPBACK, "--port", String(server.port), "--secret-file", secretFile, "--json"],
      remoteEnv(box, "watcher"),
    );
    await box.waitForEvent(watcher, "idle", { alive: [watcher] });
    assertOk(
      await box.run("clients-remove", ["clients", "remove", "watcher", "--dest", dest]),
      "clients remove",
    );
    await box.waitUntil("the watching client to stop", () => (watcher.running ? "still running" : true), {
      timeoutMs: 10_000,
    });
    assert.equal(watcher.exitStatus?.code, 5, `exit 5\n${watcher.describe()}`);
    assert.ok(
      watcher.events.some((e) => e.event === "error" && e.code === "KW_AUTH_FAILED"),
      `the client says why\n${watcher.describe()}`,
    );
  });
});
