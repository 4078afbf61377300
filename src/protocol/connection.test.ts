// Tests of Connection over real loopback TCP sockets: ordered delivery, automatic PONG,
// flow control by pausing the socket, the idle timeout, and refusal of a foreign preamble.

import assert from "node:assert/strict";
import { once } from "node:events";
import net from "node:net";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { ErrorCodes, KeepwatchError } from "../errors.js";
import { Connection, type ConnectionOptions } from "./connection.js";
import { encodeFrame, type Frame, FrameDecoder, MAGIC, payloadParts } from "./frame.js";
import { decode, encode, MessageType } from "./messages.js";

const servers: net.Server[] = [];
const sockets: net.Socket[] = [];

after(async () => {
  for (const s of sockets) s.destroy();
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
});

/** Two ends of one real TCP connection on 127.0.0.1. */
async function socketPair(): Promise<{ client: net.Socket; server: net.Socket }> {
  const server = net.createServer();
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  const accepted = once(server, "connection") as Promise<[net.Socket]>;
  const client = net.connect(port, "127.0.0.1");
  sockets.push(client);
  await once(client, "connect");
  const [serverSide] = await accepted;
  sockets.push(serverSide);
  // Only one connection per test server.
  server.close();
  return { client, server: serverSide };
}

/** A broken Connection must fail its test, not hang the run; `after` then closes every socket. */
const limit = { timeout: 15_000 };

const quiet: ConnectionOptions = { idleTimeoutMs: 10_000, keepaliveMs: 3_000 };

async function connectionPair(
  options: ConnectionOptions = quiet,
): Promise<{ a: Connection; b: Connection; closeBoth: () => void }> {
  const { client, server } = await socketPair();
  const a = new Connection(client, options);
  const b = new Connection(server, options);
  return {
    a,
    b,
    closeBoth: () => {
      a.destroy();
      b.destroy();
    },
  };
}

/** `promise`, or a rejection naming `what` after `ms` (a ref'd timer, so a lost event fails the test). */
async function within<T>(promise: Promise<T>, what: string, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves with the error a connection closed with, or rejects after `ms`. */
function closed(conn: Connection, ms = 5000): Promise<KeepwatchError | null> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`connection still open after ${ms} ms`)), ms);
    conn.once("close", (error) => {
      clearTimeout(timer);
      resolve(error);
    });
  });
}

/** Everything a raw socket receives until the other side ends it, decoded as frames. */
function readAllFrames(socket: net.Socket, ms = 5000): Promise<{ frames: Frame[]; atBoundary: boolean }> {
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder();
    const frames: Frame[] = [];
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
    socket.on("data", (chunk: Buffer) => frames.push(...decoder.push(chunk)));
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve({ frames, atBoundary: decoder.atBoundary });
    });
  });
}

/**
 * Sends `count` frames from one end of a connection pair to the other (the i-th as `make`
 * gives it, with what to pass to sendAndWait as its payload) and checks that the other
 * end's handler got them all, in order, byte for byte.
 */
async function sendInOrder(
  count: number,
  make: (i: number) => { frame: Frame; payload: Buffer | Buffer[] },
): Promise<void> {
  const { a, b, closeBoth } = await connectionPair();
  try {
    const got: Frame[] = [];
    const inParts: boolean[] = [];
    const all = new Promise<void>((resolve) => {
      b.setHandler((frame) => {
        inParts.push(frame.parts !== undefined);
        got.push({
          type: frame.type,
          requestId: frame.requestId,
          payload: Buffer.concat(payloadParts(frame)),
        });
        if (got.length === count) resolve();
      });
    });
    const sent: Frame[] = [];
    for (let i = 0; i < count; i++) {
      const { frame, payload } = make(i);
      sent.push(frame);
      await a.sendAndWait(frame.type, frame.requestId, payload);
    }
    await within(all, `${count} frames`);
    assert.deepEqual(got, sent);
    // A CHUNK's payload is handed over in the parts it arrived in; the others whole.
    assert.deepEqual(
      inParts,
      sent.map((frame) => frame.type === MessageType.CHUNK),
    );
    assert.equal(a.isClosed, false);
    assert.equal(b.isClosed, false);
  } finally {
    closeBoth();
  }
}

describe("Connection over loopback TCP", () => {
  test("frames sent one way arrive in order at the handler", limit, async () => {
    await sendInOrder(500, (i) => {
      const payload = Buffer.alloc(i % 7 === 0 ? 0 : (i * 37) % 3000, i % 256);
      return { frame: { type: MessageType.PUT_DATA, requestId: i + 1, payload }, payload };
    });
  });

  test(
    "a payload sent in parts arrives as one frame, between whole frames, byte for byte",
    limit,
    async () => {
      await sendInOrder(300, (i) => {
        // Parts of every size, empty ones included, up to a frame near the limit.
        const sizes = i === 299 ? [4, 1024 * 1024 - 4] : [i % 5, (i * 131) % 70_000, i % 3 === 0 ? 0 : 17];
        const parts = sizes.map((n, k) => Buffer.alloc(n, (i + k) % 256));
        const payload = Buffer.concat(parts);
        // Every other frame goes whole, so that the two kinds alternate on the wire.
        return {
          frame: { type: MessageType.CHUNK, requestId: i + 1, payload },
          payload: i % 2 === 0 ? payload : parts,
        };
      });
    },
  );

  test(
    "a PING is answered with a PONG carrying the same request id, without reaching the handler",
    limit,
    async () => {
      const { client, server } = await socketPair();
      const conn = new Connection(server, quiet);
      try {
        const handled: Frame[] = [];
        conn.setHandler((frame) => {
          handled.push(frame);
        });
        const decoder = new FrameDecoder();
        const pong = new Promise<Frame>((resolve) => {
          client.on("data", (chunk: Buffer) => {
            for (const f of decoder.push(chunk)) if (f.type === MessageType.PONG) resolve(f);
          });
        });
        client.write(Buffer.concat([MAGIC, encodeFrame(MessageType.PING, 77)]));
        const frame = await within(pong, "PONG");
        assert.equal(frame.requestId, 77);
        assert.equal(frame.payload.length, 0);
        assert.deepEqual(handled, []);
      } finally {
        conn.destroy();
        client.destroy();
      }
    },
  );

  test("a PING with a payload closes the connection with KW_BAD_MESSAGE", limit, async () => {
    const { client, server } = await socketPair();
    const conn = new Connection(server, quiet);
    const received = readAllFrames(client);
    const closing = closed(conn);
    client.write(Buffer.concat([MAGIC, encodeFrame(MessageType.PING, 1, Buffer.from("x"))]));
    assert.equal((await closing)?.code, "KW_BAD_MESSAGE");
    const { frames } = await received;
    assert.equal(frames.at(-1)?.type, MessageType.ERROR);
    client.destroy();
  });

  test("keep-alive PINGs hold an otherwise silent pair open past the idle timeout", limit, async () => {
    const { a, b, closeBoth } = await connectionPair({ idleTimeoutMs: 300, keepaliveMs: 100 });
    try {
      a.setHandler(() => {});
      b.setHandler(() => {});
      await sleep(1000);
      assert.equal(a.isClosed, false);
      assert.equal(b.isClosed, false);
    } finally {
      closeBoth();
    }
  });

  test(
    "timing set later with setTiming takes effect: a silent peer is dropped after the new idle timeout",
    limit,
    async () => {
      // Like the client: built with a long handshake timeout, then told the server's timing.
      const { client, server } = await socketPair();
      const conn = new Connection(client, { idleTimeoutMs: 10_000, keepaliveMs: 10_000 });
      try {
        conn.setHandler(() => {});
        server.write(MAGIC); // then silence
        conn.setTiming({ idleTimeoutMs: 300, keepaliveMs: 100 });
        // Were the constructor's 2.5 s check period kept, this would take up to 2.5 s.
        assert.equal((await closed(conn, 1500))?.code, "KW_TIMEOUT");
      } finally {
        conn.destroy();
        server.destroy();
      }
    },
  );

  test("a slow handler pauses the socket; the sender waits, then every frame arrives", limit, async () => {
    const { a, b, closeBoth } = await connectionPair({ idleTimeoutMs: 30_000, keepaliveMs: 60_000 });
    try {
      const total = 600;
      const payload = Buffer.alloc(64 * 1024, 0xab);
      let release: () => void = () => {};
      const gate = new Promise<void>((resolve) => {
        release = resolve;
      });
      let handled = 0;
      let sawPaused = false;
      const allHandled = new Promise<void>((resolve) => {
        b.setHandler(async (frame) => {
          if (handled === 0) await gate; // the handler is stuck until the sender is held back
          assert.equal(frame.requestId, handled + 1);
          handled++;
          if (handled === total) resolve();
        });
      });
      // Release the handler only once both ends show backpressure: the receiver paused its
      // socket, and the sender's socket stopped accepting writes.
      let senderBlocked = false;
      const watch = setInterval(() => {
        if (b.socket.isPaused()) sawPaused = true;
        if (a.socket.writableNeedDrain) senderBlocked = true;
        if (sawPaused && senderBlocked) {
          clearInterval(watch);
          release();
        }
      }, 5);
      let sentAll = false;
      const sending = (async () => {
        for (let i = 1; i <= total; i++) await a.sendAndWait(MessageType.PUT_DATA, i, payload);
        sentAll = true;
      })();
      try {
        await within(Promise.all([sending, allHandled]), `${total} frames through a paused socket`, 10_000);
      } finally {
        clearInterval(watch);
        release();
      }
      // sendAndWait also returns when the connection closes; it must not have.
      assert.ok(sentAll);
      assert.equal(a.isClosed || b.isClosed, false);
      assert.ok(sawPaused, "the receiver never paused its socket");
      assert.ok(senderBlocked, "the sender never had to wait");
      assert.equal(handled, total);
      assert.equal(b.socket.isPaused(), false);
    } finally {
      closeBoth();
    }
  });

  test("a peer that sends nothing is closed with KW_TIMEOUT", limit, async () => {
    const { client, server } = await socketPair();
    const conn = new Connection(server, { idleTimeoutMs: 200, keepaliveMs: 60_000 });
    conn.setHandler(() => {});
    const received = readAllFrames(client);
    const started = Date.now();
    const error = await closed(conn, 3000);
    assert.equal(error?.code, "KW_TIMEOUT");
    assert.ok(Date.now() - started >= 200);
    // The silent peer is told why before the socket ends.
    const { frames } = await received;
    const last = frames.at(-1);
    assert.equal(last?.type, MessageType.ERROR);
    assert.equal(last?.requestId, 0);
    assert.equal(decode.error(last?.payload ?? Buffer.alloc(0)).code, "KW_TIMEOUT");
    client.destroy();
  });

  test("a peer that sends only the preamble is also closed with KW_TIMEOUT", limit, async () => {
    const { client, server } = await socketPair();
    const conn = new Connection(server, { idleTimeoutMs: 200, keepaliveMs: 60_000 });
    const received = readAllFrames(client);
    client.write(MAGIC);
    assert.equal((await closed(conn, 3000))?.code, "KW_TIMEOUT");
    await received;
    client.destroy();
  });

  test("a garbage preamble closes with KW_BAD_MAGIC after an ERROR frame to the peer", limit, async () => {
    const { client, server } = await socketPair();
    const conn = new Connection(server, quiet);
    const handled: Frame[] = [];
    conn.setHandler((f) => {
      handled.push(f);
    });
    const received = readAllFrames(client);
    const closing = closed(conn);
    client.write("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert.equal((await closing)?.code, "KW_BAD_MAGIC");
    const { frames, atBoundary } = await received;
    assert.equal(atBoundary, true);
    assert.equal(frames.length, 1);
    const frame = frames[0] as Frame;
    assert.equal(frame.type, MessageType.ERROR);
    assert.equal(frame.requestId, 0);
    const error = decode.error(frame.payload);
    assert.equal(error.code, "KW_BAD_MAGIC");
    assert.ok(error.message.length > 0);
    assert.deepEqual(handled, []);
    client.destroy();
  });

  test("a peer Connection learns why: it closes with the ERROR delivered to its handler", limit, async () => {
    const { a, b, closeBoth } = await connectionPair();
    try {
      const errors: { code: string; id: number }[] = [];
      const gotError = new Promise<void>((resolve) => {
        a.setHandler((frame) => {
          if (frame.type === MessageType.ERROR) {
            errors.push({ code: decode.error(frame.payload).code, id: frame.requestId });
            resolve();
          }
        });
      });
      b.setHandler(() => {});
      const aClosed = closed(a);
      // Flags are not defined in v1: b must refuse the frame.
      const bad = encodeFrame(MessageType.BYE, 0);
      bad.writeUInt16BE(1, 6);
      a.socket.write(bad);
      assert.equal((await closed(b))?.code, "KW_BAD_FRAME");
      await within(gotError, "ERROR frame");
      assert.deepEqual(errors, [{ code: "KW_BAD_FRAME", id: 0 }]);
      assert.equal(await aClosed, null);
    } finally {
      closeBoth();
    }
  });

  test("a handler that throws closes the connection with the thrown error's code", limit, async () => {
    const { client, server } = await socketPair();
    const conn = new Connection(server, quiet);
    const received = readAllFrames(client);
    const closing = closed(conn);
    conn.setHandler(() => {
      throw new Error("boom");
    });
    client.write(Buffer.concat([MAGIC, encodeFrame(MessageType.BYE, 0)]));
    assert.equal((await closing)?.code, "KW_SERVER_IO");
    const { frames } = await received;
    assert.equal(decode.error(frames.at(-1)?.payload ?? Buffer.alloc(0)).code, "KW_SERVER_IO");
    client.destroy();
  });

  test("a local-only error code thrown by a handler goes on the wire as KW_SERVER_IO", limit, async () => {
    const { client, server } = await socketPair();
    const conn = new Connection(server, quiet);
    const received = readAllFrames(client);
    const closing = closed(conn);
    conn.setHandler(() => {
      throw new KeepwatchError("KW_SOURCE_MISSING", "The folder /src does not exist.");
    });
    client.write(Buffer.concat([MAGIC, encodeFrame(MessageType.BYE, 0)]));
    assert.equal((await closing)?.code, "KW_SOURCE_MISSING");
    const { frames } = await received;
    client.destroy();
    const errors = frames.filter((f) => f.type === MessageType.ERROR).map((f) => decode.error(f.payload));
    assert.deepEqual(errors, [{ code: "KW_SERVER_IO", message: "The folder /src does not exist." }]);
    for (const e of errors) assert.ok(ErrorCodes[e.code].wire, `${e.code} was sent on the wire`);
  });

  test("end() closes cleanly on both sides", limit, async () => {
    const { a, b, closeBoth } = await connectionPair();
    try {
      a.setHandler(() => {});
      b.setHandler(() => {});
      await a.sendAndWait(MessageType.BYE, 0, encode.empty());
      const bClosed = closed(b);
      a.end();
      assert.equal(await bClosed, null);
      assert.equal(a.isClosed, true);
      assert.equal(a.send(MessageType.PING, 0), false);
    } finally {
      closeBoth();
    }
  });

  test("a peer closing in the middle of a frame is KW_BAD_FRAME", limit, async () => {
    const { client, server } = await socketPair();
    const conn = new Connection(server, quiet);
    conn.setHandler(() => {});
    const closing = closed(conn);
    client.end(
      Buffer.concat([MAGIC, encodeFrame(MessageType.PUT_DATA, 1, Buffer.alloc(10)).subarray(0, 15)]),
    );
    assert.equal((await closing)?.code, "KW_BAD_FRAME");
    client.destroy();
  });
});
