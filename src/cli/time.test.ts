import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { KeepwatchError } from "../errors.js";
import { formatLocalTime, parseTime } from "./time.js";

const NOW = Date.UTC(2024, 4, 15, 12, 0, 0, 0);

function usageError(text: string): void {
  assert.throws(
    () => parseTime(text, NOW),
    (error: unknown) => {
      assert.ok(error instanceof KeepwatchError);
      assert.equal(error.code, "KW_USAGE");
      assert.equal(error.exitCode, 2);
      assert.ok(error.message.includes(JSON.stringify(text)), error.message);
      assert.ok(error.message.includes("2h ago"), "the sentence shows the accepted forms");
      assert.equal(error.message.split(". ").length, 1, "one sentence");
      return true;
    },
  );
}

describe("parseTime", () => {
  test("now and yesterday", () => {
    assert.equal(parseTime("now", NOW), NOW);
    assert.equal(parseTime(" NOW ", NOW), NOW);
    const yesterday = new Date(NOW);
    yesterday.setDate(yesterday.getDate() - 1);
    assert.equal(parseTime("yesterday", NOW), yesterday.getTime());
  });

  test("relative forms, short and spelled out", () => {
    const cases: [string, number][] = [
      ["2h ago", 2 * 3600_000],
      ["2 h ago", 2 * 3600_000],
      ["2 hours ago", 2 * 3600_000],
      ["1 hour ago", 3600_000],
      ["90s ago", 90_000],
      ["10 seconds ago", 10_000],
      ["5m ago", 300_000],
      ["5 min ago", 300_000],
      ["15 minutes ago", 900_000],
      ["3d ago", 3 * 86_400_000],
      ["3 days ago", 3 * 86_400_000],
      ["1w ago", 7 * 86_400_000],
      ["2 weeks ago", 14 * 86_400_000],
      ["1.5h ago", 5_400_000],
      ["0s ago", 0],
      ["2 Hours Ago", 2 * 3600_000],
    ];
    for (const [text, back] of cases) assert.equal(parseTime(text, NOW), NOW - back, text);
  });

  test("ISO 8601 with a zone", () => {
    assert.equal(parseTime("2024-05-01T14:30:00Z", NOW), Date.UTC(2024, 4, 1, 14, 30));
    assert.equal(parseTime("2024-05-01T14:30Z", NOW), Date.UTC(2024, 4, 1, 14, 30));
    assert.equal(parseTime("2024-05-01t14:30:00.25z", NOW), Date.UTC(2024, 4, 1, 14, 30, 0, 250));
    assert.equal(parseTime("2024-05-01T14:30:00.123456Z", NOW), Date.UTC(2024, 4, 1, 14, 30, 0, 123));
    assert.equal(parseTime("2024-05-01T14:30:00+02:00", NOW), Date.UTC(2024, 4, 1, 12, 30));
    assert.equal(parseTime("2024-05-01T14:30+0200", NOW), Date.UTC(2024, 4, 1, 12, 30));
    assert.equal(parseTime("2024-05-01T14:30-05", NOW), Date.UTC(2024, 4, 1, 19, 30));
    assert.equal(parseTime("2024-05-01 14:30:00Z", NOW), Date.UTC(2024, 4, 1, 14, 30));
  });

  test("ISO 8601 without a zone is local time", () => {
    assert.equal(parseTime("2024-05-01", NOW), new Date(2024, 4, 1).getTime());
    assert.equal(parseTime("2024-05-01T14:30", NOW), new Date(2024, 4, 1, 14, 30).getTime());
    assert.equal(parseTime("2024-05-01 14:30:15.5", NOW), new Date(2024, 4, 1, 14, 30, 15, 500).getTime());
    assert.equal(parseTime("2024-02-29", NOW), new Date(2024, 1, 29).getTime());
  });

  test("anything else is a usage error that shows the accepted forms", () => {
    for (const text of [
      "",
      "soon",
      "2 ago",
      "2 months ago",
      "2h",
      "h ago",
      "-2h ago",
      "2024-13-01",
      "2024-02-30",
      "2023-02-29",
      "2024-05-01T24:00",
      "2024-05-01T14:60",
      "2024-05-01T14:30:61Z",
      "2024-05-01Z",
      "2024-5-1",
      "05/01/2024",
      "1714570200000",
      "2024-05-01T14:30+25:00",
    ]) {
      usageError(text);
    }
  });

  test("formatLocalTime writes what parseTime reads back", () => {
    fc.assert(
      fc.property(fc.integer({ min: Date.UTC(1971, 0, 1), max: Date.UTC(2200, 0, 1) }), (ms) => {
        const text = formatLocalTime(ms);
        assert.match(text, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$/);
        assert.equal(parseTime(text, NOW), ms);
      }),
    );
  });
});
