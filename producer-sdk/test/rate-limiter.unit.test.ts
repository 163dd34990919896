import { describe, expect, it } from "vitest";
import { RateLimiter, type RateLimiterOptions } from "../src/rate-limiter.ts";

const options: RateLimiterOptions = {
  directPerSecond: 10,
  groupPerSecond: 40,
  burstSeconds: 1,
  lowPriorityReserve: 0.5,
  maxConversations: 1000,
};

function limiter(overrides: Partial<RateLimiterOptions> = {}) {
  let now = 0;
  const rl = new RateLimiter({ ...options, ...overrides }, () => now);
  return { rl, advance: (ms: number) => (now += ms) };
}

function count(
  rl: RateLimiter,
  id: string,
  kind: "direct" | "group",
  priority: "low" | "normal" | "high",
  n: number,
) {
  let allowed = 0;
  for (let i = 0; i < n; i++) if (rl.take(id, kind, priority).allowed) allowed++;
  return allowed;
}

describe("RateLimiter", () => {
  it("lets a direct conversation send 10 normal messages at once, then rejects with retryAfterMs", () => {
    const { rl } = limiter();
    expect(count(rl, "c", "direct", "normal", 10)).toBe(10);
    const decision = rl.take("c", "direct", "normal");
    expect(decision).toEqual({ allowed: false, retryAfterMs: 100 });
  });

  it("gives group conversations 40 per second", () => {
    const { rl } = limiter();
    expect(count(rl, "g", "group", "normal", 50)).toBe(40);
  });

  it("refills at the rate", () => {
    const { rl, advance } = limiter();
    count(rl, "c", "direct", "normal", 10);
    advance(250);
    expect(count(rl, "c", "direct", "normal", 10)).toBe(2);
    advance(5000);
    expect(count(rl, "c", "direct", "normal", 20)).toBe(10);
  });

  it("sheds low priority while normal still passes (the reserve)", () => {
    const { rl } = limiter();
    expect(count(rl, "c", "direct", "low", 10)).toBe(5);
    const low = rl.take("c", "direct", "low");
    expect(low.allowed).toBe(false);
    expect(low.allowed === false && low.retryAfterMs).toBe(100);
    expect(count(rl, "c", "direct", "normal", 10)).toBe(5);
  });

  it("lets high priority through even when the bucket is empty, without debt", () => {
    const { rl, advance } = limiter();
    count(rl, "c", "direct", "normal", 10);
    expect(count(rl, "c", "direct", "high", 100)).toBe(100);
    advance(100);
    expect(rl.take("c", "direct", "normal").allowed).toBe(true);
  });

  it("keeps conversations apart", () => {
    const { rl } = limiter();
    count(rl, "a", "direct", "normal", 10);
    expect(rl.take("b", "direct", "normal").allowed).toBe(true);
    expect(rl.take("a", "direct", "normal").allowed).toBe(false);
  });

  it("refund gives a token back", () => {
    const { rl } = limiter();
    count(rl, "c", "direct", "normal", 10);
    rl.refund("c");
    expect(rl.take("c", "direct", "normal").allowed).toBe(true);
  });

  it("keeps memory bounded, dropping refilled buckets before busy ones", () => {
    const { rl, advance } = limiter({ maxConversations: 100 });
    count(rl, "busy", "direct", "normal", 10);
    for (let i = 0; i < 1000; i++) {
      rl.take(`idle-${i}`, "direct", "normal");
      advance(1);
      expect(rl.size).toBeLessThanOrEqual(100);
    }
    // "busy" was used least recently but still had a partly empty bucket 1 s ago;
    // after a full refill forgetting it is harmless, so only the bound matters here.
    expect(rl.size).toBeGreaterThan(0);
  });

  it("does not forget a busy conversation while others come and go within the bound", () => {
    const { rl } = limiter({ maxConversations: 100 });
    count(rl, "busy", "direct", "normal", 10);
    for (let i = 0; i < 50; i++) {
      rl.take(`other-${i}`, "direct", "normal");
      // Touch busy again so it stays recent.
      expect(rl.take("busy", "direct", "normal").allowed).toBe(false);
    }
  });
});
