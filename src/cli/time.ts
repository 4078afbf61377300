// The TIME argument of `ls --at` and `restore --at`: an ISO 8601 date or date-time (a
// time without a zone is local time), `now`, `yesterday`, or a relative time such as
// `2h ago` or `3 days ago`. The result is milliseconds since the epoch, as the wire wants.

import { KeepwatchError } from "../errors.js";

export const TIME_FORMS =
  'an ISO 8601 date or time (2024-05-01, 2024-05-01T14:30, 2024-05-01T14:30:00Z, 2024-05-01 14:30+02:00), "now", "yesterday", or a relative time such as "90s ago", "2h ago" or "3 days ago"';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const WEEK = 7 * DAY;

/** Spellings of each unit; `m` is minutes (months and years are not offered: their length varies). */
const UNITS = new Map<string, number>([
  ...["s", "sec", "secs", "second", "seconds"].map((u) => [u, SECOND] as const),
  ...["m", "min", "mins", "minute", "minutes"].map((u) => [u, MINUTE] as const),
  ...["h", "hr", "hrs", "hour", "hours"].map((u) => [u, HOUR] as const),
  ...["d", "day", "days"].map((u) => [u, DAY] as const),
  ...["w", "wk", "wks", "week", "weeks"].map((u) => [u, WEEK] as const),
]);

const RELATIVE = /^(\d+(?:\.\d+)?)\s*([a-z]+)\s+ago$/;

// YYYY-MM-DD, then optionally T or a space, hh:mm[:ss[.fraction]], then optionally a zone.
const ISO =
  /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?\s*(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?$/;

/**
 * Milliseconds since the epoch for `text`, relative forms counted back from `now`.
 * Throws a KW_USAGE error (exit 2) naming the accepted forms when `text` is none of them.
 */
export function parseTime(text: string, now: number = Date.now()): number {
  const input = text.trim().toLowerCase();
  if (input === "now") return now;
  if (input === "yesterday") {
    // The same clock time one calendar day earlier (23 or 25 hours across a DST change).
    const d = new Date(now);
    d.setDate(d.getDate() - 1);
    return d.getTime();
  }
  const relative = RELATIVE.exec(input);
  if (relative) {
    const unit = UNITS.get(relative[2] as string);
    if (unit !== undefined) return now - Math.round(Number(relative[1]) * unit);
    throw badTime(text);
  }
  const iso = ISO.exec(text.trim());
  if (iso) {
    const result = fromIso(iso);
    if (result !== null) return result;
  }
  throw badTime(text);
}

function fromIso(m: RegExpExecArray): number | null {
  const [, y, mo, d, h, mi, s, fraction, zulu, sign, zh, zm] = m;
  const year = Number(y);
  const month = Number(mo);
  const day = Number(d);
  const hour = h === undefined ? 0 : Number(h);
  const minute = mi === undefined ? 0 : Number(mi);
  const second = s === undefined ? 0 : Number(s);
  const ms = fraction === undefined ? 0 : Math.floor(Number(`0.${fraction}`) * 1000);
  if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month)) return null;
  if (hour > 23 || minute > 59 || second > 59) return null;
  // A zone without a time ("2024-05-01Z") says nothing useful; refuse it rather than guess.
  if (h === undefined && (zulu !== undefined || sign !== undefined)) return null;
  if (zulu === undefined && sign === undefined) {
    const local = new Date(year, month - 1, day, hour, minute, second, ms);
    // new Date() maps years 0-99 to 1900-1999; set the year again to keep it as written.
    local.setFullYear(year, month - 1, day);
    return local.getTime();
  }
  let offsetMinutes = 0;
  if (sign !== undefined) {
    const oh = Number(zh);
    const om = zm === undefined ? 0 : Number(zm);
    if (oh > 23 || om > 59) return null;
    offsetMinutes = (sign === "-" ? -1 : 1) * (oh * 60 + om);
  }
  const utc = new Date(0);
  utc.setUTCFullYear(year, month - 1, day);
  utc.setUTCHours(hour, minute, second, ms);
  return utc.getTime() - offsetMinutes * MINUTE;
}

function daysIn(year: number, month: number): number {
  // Day 0 of the next month is the last day of this one (proleptic Gregorian calendar).
  const d = new Date(0);
  d.setUTCFullYear(year, month, 0);
  return d.getUTCDate();
}

function badTime(text: string): KeepwatchError {
  return new KeepwatchError(
    "KW_USAGE",
    `The time ${JSON.stringify(text)} is not understood; give ${TIME_FORMS}.`,
  );
}

/** `2024-05-01T14:30:00.000+02:00`: ISO 8601 in the machine's local zone, for people. */
export function formatLocalTime(ms: number): string {
  const d = new Date(ms);
  const pad = (n: number, width = 2) => String(Math.abs(n)).padStart(width, "0");
  const offset = -d.getTimezoneOffset();
  const zone = `${offset < 0 ? "-" : "+"}${pad(Math.trunc(Math.abs(offset) / 60))}:${pad(Math.abs(offset) % 60)}`;
  const year = d.getFullYear();
  const yearText = year >= 0 && year <= 9999 ? pad(year, 4) : `${year < 0 ? "-" : "+"}${pad(year, 6)}`;
  return (
    `${yearText}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}${zone}`
  );
}
