import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ProgressEvent } from "./events.js";
import { ProgressModel } from "./progress.js";

const MB = 1_000_000;

/** A model on a hand-driven clock: `at(t, ...events)` sets the time, then feeds events. */
function setup(windowMs = 5000) {
  let t = 0;
  const model = new ProgressModel({ now: () => t, windowMs });
  const at = (time: number, ...events: ProgressEvent[]) => {
    t = time;
    for (const event of events) model.apply(event);
    return model.snapshot();
  };
  return { model, at };
}

describe("ProgressModel totals", () => {
  it("counts queued and done files and bytes, and tracks the current file", () => {
    const { at } = setup();
    let s = at(0, { kind: "queued", files: 3, bytes: 300 });
    assert.equal(s.state, "busy");
    assert.deepEqual(s.queued, { files: 3, bytes: 300 });
    assert.deepEqual(s.done, { files: 0, bytes: 0 });
    assert.equal(s.current, null);

    s = at(
      10,
      { kind: "file-start", path: "a.txt", size: 200 },
      { kind: "file-progress", path: "a.txt", bytes: 50, size: 200 },
    );
    assert.equal(s.current?.path, "a.txt");
    assert.equal(s.current?.bytes, 50);
    assert.deepEqual(s.inFlight, { files: 1, bytes: 50 });

    s = at(
      20,
      { kind: "file-done", path: "a.txt", op: "put", size: 200 },
      { kind: "file-done", path: "gone.txt", op: "delete", size: 0 },
    );
    assert.equal(s.current, null);
    assert.deepEqual(s.done, { files: 2, bytes: 200 });
    assert.deepEqual(s.lastDone, { path: "gone.txt", op: "delete", size: 0 });
    assert.equal(s.state, "busy");

    s = at(30, { kind: "file-done", path: "b.txt", op: "put", size: 100 });
    assert.deepEqual(s.done, { files: 3, bytes: 300 });
    assert.equal(s.state, "waiting");
  });

  it("shows the most recently started file still in flight as current", () => {
    const { at } = setup();
    at(0, { kind: "file-start", path: "one", size: 10 }, { kind: "file-start", path: "two", size: 10 });
    assert.equal(at(1).current?.path, "two");
    assert.equal(at(2, { kind: "file-done", path: "two", op: "put", size: 10 }).current?.path, "one");
  });

  it("never reports less queued than done or under way (transfers nobody announced)", () => {
    const { at } = setup();
    let s = at(0, {
      kind: "peer-connected",
      peer: "10.0.0.2:5000",
      client: "laptop",
      principal: "laptop",
      set: "docs",
    });
    s = at(1, { kind: "file-start", path: "x", size: 40 });
    assert.deepEqual(s.queued, { files: 1, bytes: 40 });
    s = at(2, { kind: "file-done", path: "x", op: "put", size: 40, set: "docs" });
    assert.deepEqual(s.queued, { files: 1, bytes: 40 });
    assert.deepEqual(s.done, { files: 1, bytes: 40 });
    assert.equal(s.state, "waiting");
    assert.equal(s.peers, 1);
  });

  it("drops a skipped file from the queue so the batch can finish", () => {
    const { at } = setup();
    at(0, { kind: "queued", files: 2, bytes: 150 }, { kind: "file-start", path: "a", size: 100 });
    let s = at(1, { kind: "file-skipped", path: "a", reason: "vanished", retry: false });
    assert.deepEqual(s.queued, { files: 1, bytes: 50 });
    assert.equal(s.current, null);
    s = at(2, { kind: "file-done", path: "b", op: "put", size: 50 });
    assert.equal(s.state, "waiting");
  });

  it("starts a new batch with the first work after idle", () => {
    const { at } = setup();
    at(0, { kind: "queued", files: 2, bytes: 20 });
    at(
      1,
      { kind: "file-done", path: "a", op: "put", size: 10 },
      { kind: "file-done", path: "b", op: "put", size: 10 },
    );
    let s = at(2, { kind: "idle", files: 7, bytes: 700 });
    assert.equal(s.state, "idle");
    assert.deepEqual(s.backedUp, { files: 7, bytes: 700 });
    assert.deepEqual(s.done, { files: 2, bytes: 20 }, "the finished batch stays visible while idle");

    s = at(3, { kind: "queued", files: 1, bytes: 5 });
    assert.equal(s.state, "busy");
    assert.deepEqual(s.queued, { files: 1, bytes: 5 });
    assert.deepEqual(s.done, { files: 0, bytes: 0 });
  });

  it("goes offline on disconnect, forgetting transfers in flight, and back on connect", () => {
    const { at } = setup();
    at(0, { kind: "queued", files: 1, bytes: 10 }, { kind: "file-start", path: "a", size: 10 });
    let s = at(100, { kind: "disconnected", reason: "connection reset", retryInMs: 2000 });
    assert.equal(s.state, "offline");
    assert.equal(s.retryAt, 2100);
    assert.equal(s.current, null);
    s = at(2200, { kind: "connected", host: "h", port: 1, set: "s" });
    assert.equal(s.state, "busy");
    assert.equal(s.retryAt, null);
  });

  it("reports scanning until scan-done", () => {
    const { at } = setup();
    assert.equal(at(0, { kind: "scan-start", root: "/src" }).state, "scanning");
    assert.equal(at(0).scanRoot, "/src");
    const s = at(1, { kind: "scan-done", files: 3, bytes: 30, changedFiles: 0, changedBytes: 0 });
    assert.equal(s.state, "waiting");
    assert.equal(s.scanRoot, null);
  });
});

describe("ProgressModel rate and ETA", () => {
  it("measures bytes per second and the time left for the batch", () => {
    const { at } = setup();
    at(0, { kind: "queued", files: 1, bytes: 10 * MB }, { kind: "file-start", path: "big", size: 10 * MB });
    let s = at(1000, { kind: "file-progress", path: "big", bytes: 1 * MB, size: 10 * MB });
    assert.equal(s.rate, 1 * MB);
    s = at(2000, { kind: "file-progress", path: "big", bytes: 2 * MB, size: 10 * MB });
    assert.equal(s.rate, 1 * MB);
    assert.equal(s.etaSeconds, 8);
    assert.equal(s.current?.rate, 1 * MB);
  });

  it("gives no rate until enough time has passed", () => {
    const { at } = setup();
    const s = at(
      0,
      { kind: "file-start", path: "a", size: 100 },
      { kind: "file-done", path: "a", op: "put", size: 100 },
    );
    assert.equal(s.rate, null);
    assert.equal(s.etaSeconds, null);
  });

  it("counts the bytes a file-done adds beyond its last progress", () => {
    const { at } = setup();
    at(0, { kind: "queued", files: 2, bytes: 4 * MB }, { kind: "file-start", path: "a", size: 2 * MB });
    at(500, { kind: "file-progress", path: "a", bytes: 1 * MB, size: 2 * MB });
    const s = at(1000, { kind: "file-done", path: "a", op: "put", size: 2 * MB });
    assert.equal(s.rate, 2 * MB);
    assert.equal(s.etaSeconds, 1);
  });

  it("follows the recent rate, not the average since the start", () => {
    const { at } = setup(5000);
    at(0, { kind: "queued", files: 1, bytes: 100 * MB }, { kind: "file-start", path: "f", size: 100 * MB });
    let bytes = 0;
    let s = at(0);
    for (let t = 1000; t <= 10_000; t += 1000) {
      bytes += 1 * MB;
      s = at(t, { kind: "file-progress", path: "f", bytes, size: 100 * MB });
    }
    assert.equal(s.rate, 1 * MB);
    for (let t = 11_000; t <= 15_000; t += 1000) {
      bytes += 3 * MB;
      s = at(t, { kind: "file-progress", path: "f", bytes, size: 100 * MB });
    }
    assert.equal(s.rate, 3 * MB);
    assert.equal(s.etaSeconds, (100 * MB - bytes) / (3 * MB));
  });

  it("decays to zero when the transfer stalls, and restarts the window after the pause", () => {
    const { at } = setup(5000);
    at(0, { kind: "queued", files: 1, bytes: 100 * MB }, { kind: "file-start", path: "f", size: 100 * MB });
    at(1000, { kind: "file-progress", path: "f", bytes: 1 * MB, size: 100 * MB });
    let s = at(2000, { kind: "file-progress", path: "f", bytes: 2 * MB, size: 100 * MB });
    assert.equal(s.rate, 1 * MB);
    s = at(4000);
    assert.equal(s.rate, 0.5 * MB, "two seconds without bytes halve the rate over the window");
    s = at(60_000);
    assert.equal(s.rate, 0);
    assert.equal(s.etaSeconds, null);

    s = at(60_000, { kind: "file-progress", path: "f", bytes: 3 * MB, size: 100 * MB });
    assert.equal(s.rate, null, "a fresh window has nothing to say yet");
    s = at(61_000, { kind: "file-progress", path: "f", bytes: 7 * MB, size: 100 * MB });
    assert.equal(s.rate, 5 * MB, "the minute of silence is not averaged in");
  });
});
