/**
 * findUnstorableValue against a reference: the implementation it replaced (Object.entries
 * and eager paths), kept here verbatim, on generated values with and without U+0000,
 * lone and paired surrogates, unsafe integers, odd keys and nesting. Same answer
 * (path, rule, reason) for every value, or the faster version changed behaviour.
 */
import { describe, expect, it } from "vitest";
import { findUnstorableValue, type UnstorableValue } from "../src/validation.ts";

const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function referenceString(text: string): Pick<UnstorableValue, "rule" | "reason"> | undefined {
  if (text.includes("\u0000")) return { rule: "nul", reason: "must not contain U+0000 (NUL)" };
  if (loneSurrogate.test(text)) {
    return { rule: "surrogate", reason: "must not contain a lone UTF-16 surrogate (invalid Unicode)" };
  }
  return undefined;
}

function reference(value: unknown, path = ""): UnstorableValue | undefined {
  const at = (key: string) => (path ? `${path}.${key}` : key);
  if (typeof value === "string") {
    const bad = referenceString(value);
    return bad && { path: path || "(value)", ...bad };
  }
  if (typeof value === "number") {
    if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
      return {
        path: path || "(value)",
        rule: "unsafeInteger",
        reason: `must be an integer between -${Number.MAX_SAFE_INTEGER} and ${Number.MAX_SAFE_INTEGER} (2^53-1)`,
      };
    }
    return undefined;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = reference(value[i], at(String(i)));
      if (found) return found;
    }
    return undefined;
  }
  if (typeof value === "object" && value !== null) {
    for (const [key, item] of Object.entries(value)) {
      const badKey = referenceString(key);
      if (badKey) return { path: at(JSON.stringify(key).slice(1, -1)), ...badKey };
      const found = reference(item, at(key));
      if (found) return found;
    }
  }
  return undefined;
}

/** Deterministic numbers in [0, 1) (mulberry32), so that a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Strings mostly clean; now and then with a NUL, a lone or a paired surrogate. */
const pieces = ["a", "hello", "", "\u0000", "\uD83D\uDE00", "\uD83D", "\uDE00", "x.y", "0", "~/", "ünï"];

function generate(random: () => number, depth: number): unknown {
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
  const text = () => {
    // Clean strings dominate, as in real events, so that deep clean values are generated too.
    if (random() < 0.8) return pick(["text", "", "user-1", "n:42", "\uD83D\uDE00 ok"]);
    let s = "";
    for (let i = Math.floor(random() * 4); i >= 0; i--) s += pick(pieces);
    return s;
  };
  const kind = depth <= 0 ? Math.floor(random() * 4) : Math.floor(random() * 6);
  switch (kind) {
    case 0:
      return text();
    case 1:
      return pick([0, 1.5, -7, 2 ** 53 - 1, 2 ** 53, -(2 ** 53), 1e300, Number.NaN, 3]);
    case 2:
      return pick([true, false, null]);
    case 3:
      return undefined;
    case 4:
      return Array.from({ length: Math.floor(random() * 4) }, () => generate(random, depth - 1));
    default: {
      const object: Record<string, unknown> = {};
      for (let i = Math.floor(random() * 4); i > 0; i--) object[text()] = generate(random, depth - 1);
      return object;
    }
  }
}

describe("findUnstorableValue", () => {
  it("answers as the reference implementation on 20,000 generated values, with and without a prefix", () => {
    const random = prng(16);
    let bad = 0;
    for (let i = 0; i < 20_000; i++) {
      const value = generate(random, 4);
      const prefix = i % 3 === 0 ? "items[3]" : "";
      const expected = reference(value, prefix);
      if (expected) bad++;
      expect(findUnstorableValue(value, prefix), JSON.stringify(value)).toEqual(expected);
    }
    // Both kinds are generated in numbers, or the comparison proves little.
    expect(bad).toBeGreaterThan(2_000);
    expect(bad).toBeLessThan(18_000);
  });

  it("names nested fields, bad keys and the top value as before", () => {
    expect(findUnstorableValue({ a: [{ b: "x\u0000" }] })?.path).toBe("a.0.b");
    expect(findUnstorableValue({ a: { "k\u0000": 1 } })?.path).toBe("a.k\\u0000");
    expect(findUnstorableValue("\uD800")?.path).toBe("(value)");
    expect(findUnstorableValue({ "": { "": 2 ** 60 } })?.path).toBe("(value)");
    expect(findUnstorableValue({ n: 2 ** 60 }, "items[1]")?.path).toBe("items[1].n");
    // Inherited enumerable properties were never looked at (Object.entries): still not.
    const child = Object.create({ inherited: "\u0000" }) as Record<string, unknown>;
    child.own = "fine";
    expect(findUnstorableValue(child)).toBeUndefined();
  });
});
