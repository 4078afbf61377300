// Tests of the rules for paths and set names that cross the wire, including the property the
// server's safety rests on: an accepted path can never lead outside the set's folder.

import assert from "node:assert/strict";
import path from "node:path";
import { describe, test } from "node:test";
import fc from "fast-check";
import { KeepwatchError } from "../errors.js";
import { assertValidPath, assertValidSetName, isSameOrBelow, pathProblem, setNameProblem } from "./paths.js";

describe("pathProblem", () => {
  const accepted = [
    "a",
    "a/b c/ü.txt",
    "-leading-dash",
    "name\nwith newline",
    "...",
    ".hidden",
    "a/.b/..c/c..",
    "back\\slash",
    "~",
    "x".repeat(255),
    `${"x".repeat(255)}/${"y".repeat(255)}`,
    // 4096 bytes exactly.
    `${"a/".repeat(2047)}bb`,
    // 255 bytes of two-byte characters plus one byte.
    `${"é".repeat(127)}x`,
  ];
  for (const p of accepted) {
    test(`accepts ${JSON.stringify(p.length > 40 ? `${p.slice(0, 40)}…` : p)}`, () => {
      assert.equal(pathProblem(p), null);
      assertValidPath(p);
    });
  }

  const refused: Record<string, string> = {
    "the empty path": "",
    "an absolute path": "/abs",
    "the root": "/",
    "a doubled slash": "a//b",
    'a "." component': "a/./b",
    'a leading "."': "./a",
    'the path "."': ".",
    'a leading ".."': "../x",
    'a trailing ".."': "a/..",
    'a middle ".."': "a/../b",
    'the path ".."': "..",
    "a trailing slash": "a/",
    "a NUL byte": "a\0b",
    "a NUL byte alone": "\0",
    "a 256-byte component": `a/${"x".repeat(256)}`,
    "a 256-byte component of two-byte characters": `${"é".repeat(128)}`,
    "a 4097-byte path": `${"a/".repeat(2048)}b`,
    "a 4098-byte path of 2732 characters": `${"ü/".repeat(1365)}üx`,
    "a lone high surrogate": "a/\ud800b",
    "a lone low surrogate": "\udc00",
  };
  for (const [what, p] of Object.entries(refused)) {
    test(`refuses ${what}`, () => {
      const problem = pathProblem(p);
      assert.equal(typeof problem, "string");
      assert.throws(
        () => assertValidPath(p),
        (e: unknown) =>
          e instanceof KeepwatchError && e.code === "KW_BAD_PATH" && e.message.includes(problem ?? "?"),
      );
    });
  }

  test("the limit is in UTF-8 bytes, not characters", () => {
    const p = "ü".repeat(200); // 200 characters, 400 bytes in one component
    assert.equal(p.length, 200);
    assert.notEqual(pathProblem(p), null);
  });
});

/** Components that try to escape, mixed with ordinary ones. */
const component = fc.oneof(
  fc.constantFrom("", ".", "..", "...", ".a", "a.", "\\..", "..\\", "%2e%2e", "~", "\0", "a\0", " ", ".. "),
  fc.string({ unit: "binary-ascii", maxLength: 6 }),
  fc.string({ unit: "binary", maxLength: 4 }),
);
const candidatePath = fc
  .tuple(fc.boolean(), fc.array(component, { minLength: 1, maxLength: 8 }), fc.boolean())
  .map(([lead, parts, trail]) => `${lead ? "/" : ""}${parts.join("/")}${trail ? "/" : ""}`);
/** Paths built only from valid components, so the property below is never vacuous. */
const validPath = fc
  .array(
    fc.string({ unit: "binary", minLength: 1, maxLength: 8 }).filter((s) => pathProblem(s) === null),
    { minLength: 1, maxLength: 8 },
  )
  .map((parts) => parts.join("/"));

describe("path containment", () => {
  const root = "/srv/dest/source";

  const staysInside = (p: string) => {
    if (pathProblem(p) !== null) return;
    for (const joined of [path.posix.join(root, p), path.posix.resolve(root, p)]) {
      assert.ok(joined.startsWith(`${root}/`), `${JSON.stringify(p)} -> ${joined}`);
      const rel = path.posix.relative(root, joined);
      assert.ok(rel !== "" && rel !== ".." && !rel.startsWith("../"), `${JSON.stringify(p)} -> ${rel}`);
    }
    // Accepted paths are already normal: no two accepted spellings name the same file.
    assert.equal(path.posix.normalize(p), p);
    assert.equal(path.posix.relative(root, path.posix.join(root, p)), p);
  };

  test("property: an accepted path joined onto a root stays strictly inside it", () => {
    fc.assert(fc.property(fc.oneof(candidatePath, validPath), staysInside), { numRuns: 2000 });
  });

  test("property: paths made of valid components are accepted", () => {
    fc.assert(
      fc.property(validPath, (p) => {
        assert.equal(pathProblem(p), null);
      }),
    );
  });

  test("the known escapes are all refused", () => {
    for (const p of ["..", "../x", "a/../..", "/etc/passwd", "a/b/../../..", "./..", ""]) {
      assert.notEqual(pathProblem(p), null, JSON.stringify(p));
    }
  });
});

describe("setNameProblem", () => {
  for (const name of ["source", "my set", "ünï", "a-b_c.d", "x".repeat(255), "set.", "-dash"]) {
    test(`accepts ${JSON.stringify(name.length > 20 ? `${name.slice(0, 20)}…` : name)}`, () => {
      assert.equal(setNameProblem(name), null);
      assertValidSetName(name);
    });
  }

  const refused: Record<string, string> = {
    "the empty name": "",
    '"."': ".",
    '".."': "..",
    '".keepwatch"': ".keepwatch",
    "a hidden name": ".hidden",
    'a name with "/"': "a/b",
    "a name with a newline": "a\nb",
    "a name with a tab": "a\tb",
    "a name with DEL": "a\u007fb",
    "a name with NUL": "a\0b",
    "a 256-byte name": "x".repeat(256),
    "a 256-byte name of two-byte characters": "é".repeat(128),
    "a name with a lone surrogate": "set\ud83d",
  };
  for (const [what, name] of Object.entries(refused)) {
    test(`refuses ${what}`, () => {
      assert.equal(typeof setNameProblem(name), "string");
      assert.throws(
        () => assertValidSetName(name),
        (e: unknown) => e instanceof KeepwatchError && e.code === "KW_BAD_SET_NAME",
      );
    });
  }

  test("property: an accepted set name is a single path component that is not hidden", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 12 }), (name) => {
        if (setNameProblem(name) !== null) return;
        assert.equal(pathProblem(name), null);
        assert.equal(path.posix.basename(name), name);
        assert.ok(!name.startsWith("."));
        assert.equal(path.posix.join("/dest", name), `/dest/${name}`);
      }),
      { numRuns: 1000 },
    );
  });
});

describe("isSameOrBelow", () => {
  const cases: [string, string, boolean][] = [
    ["a", "a", true],
    ["a/b", "a", true],
    ["a/b/c", "a/b", true],
    ["ab", "a", false],
    ["a", "a/b", false],
    ["a b/c", "a", false],
    ["b/a", "a", false],
  ];
  for (const [inner, outer, expected] of cases) {
    test(`${JSON.stringify(inner)} within ${JSON.stringify(outer)}: ${expected}`, () => {
      assert.equal(isSameOrBelow(inner, outer), expected);
    });
  }
});
