// The retention policy on one path's versions: each rule alone, their union, the newest
// version kept unless it is a delete, deletes counted as versions, and DURATION parsing.

import assert from "node:assert/strict";
import { test } from "node:test";
import { InvalidArgumentError } from "commander";
import { parseDuration } from "../cli/prune.js";
import type { VersionKind } from "../store/metadata-store.js";
import { type PolicyVersion, type RetentionPolicy, versionsToKeep } from "./prune.js";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** Versions with ids 1, 2, … at the given local times. */
function versions(...spec: [Date, VersionKind?][]): PolicyVersion[] {
  return spec.map(([date, kind], i) => ({ id: i + 1, time: date.getTime(), kind: kind ?? "file" }));
}

function kept(list: PolicyVersion[], policy: RetentionPolicy, now: Date): number[] {
  return [...versionsToKeep(list, policy, now.getTime())].sort((a, b) => a - b);
}

const now = new Date(2024, 4, 20, 12, 0, 0);
const at = (day: number, hour: number) => new Date(2024, 4, day, hour, 0, 0);

test("--keep-last keeps the newest N, whatever their kind", () => {
  const list = versions([at(1, 9)], [at(2, 9)], [at(3, 9), "deleted"], [at(4, 9)], [at(5, 9)]);
  assert.deepEqual(kept(list, { keepLast: 2 }, now), [4, 5]);
  assert.deepEqual(kept(list, { keepLast: 3 }, now), [3, 4, 5]);
  assert.deepEqual(kept(list, { keepLast: 10 }, now), [1, 2, 3, 4, 5]);
});

test("--keep-within keeps every version younger than the duration, the boundary included", () => {
  const list = versions([new Date(now.getTime() - 3 * DAY)], [new Date(now.getTime() - 2 * DAY)], [now]);
  assert.deepEqual(kept(list, { keepWithinMs: 2 * DAY }, now), [2, 3]);
  assert.deepEqual(kept(list, { keepWithinMs: 2 * DAY - 1 }, now), [3]);
});

test("--keep-daily keeps the newest version of each of the last N days that have versions", () => {
  // Days 10 (two versions), 12 (three), 15 (one); nothing on 11, 13, 14.
  const list = versions([at(10, 8)], [at(10, 20)], [at(12, 1)], [at(12, 9)], [at(12, 23)], [at(15, 7)]);
  assert.deepEqual(kept(list, { keepDaily: 1 }, now), [6]);
  assert.deepEqual(kept(list, { keepDaily: 2 }, now), [5, 6]);
  assert.deepEqual(kept(list, { keepDaily: 3 }, now), [2, 5, 6], "days without versions do not count");
});

test("the rules add up: a version stays when any rule keeps it", () => {
  const list = versions([at(10, 8)], [at(10, 20)], [at(12, 9)], [at(19, 9)], [at(20, 9)]);
  assert.deepEqual(kept(list, { keepLast: 1, keepDaily: 3, keepWithinMs: 30 * HOUR }, now), [3, 4, 5]);
  assert.deepEqual(kept(list, { keepDaily: 4 }, now), [2, 3, 4, 5]);
  assert.deepEqual(kept(list, { keepLast: 1, keepWithinMs: 30 * HOUR }, now), [4, 5]);
});

test("the newest version always stays unless it is a delete; a deleted path may lose everything", () => {
  const live = versions([at(1, 9)], [at(2, 9)]);
  assert.deepEqual(kept(live, { keepWithinMs: HOUR }, now), [2], "the latest state stays restorable");
  const deleted = versions([at(1, 9)], [at(2, 9), "deleted"]);
  assert.deepEqual(kept(deleted, { keepWithinMs: HOUR }, now), [], "deleted before the window: all go");
  assert.deepEqual(kept(deleted, { keepLast: 1 }, now), [2], "the delete itself is what --keep-last 1 keeps");
  assert.deepEqual(kept(deleted, { keepLast: 2 }, now), [1, 2]);
});

test("DURATION: a number and a unit, units may be combined", () => {
  assert.equal(parseDuration("30s"), 30_000);
  assert.equal(parseDuration("90m"), 90 * 60_000);
  assert.equal(parseDuration("12h"), 12 * HOUR);
  assert.equal(parseDuration("7d"), 7 * DAY);
  assert.equal(parseDuration("2w"), 14 * DAY);
  assert.equal(parseDuration("1w2d"), 9 * DAY);
  assert.equal(parseDuration("1.5h"), 1.5 * HOUR);
  for (const bad of ["", "7", "d", "7x", "0d", "7 d", "-1d", "1d 2h", "d7"]) {
    assert.throws(() => parseDuration(bad), InvalidArgumentError, JSON.stringify(bad));
  }
});
