/** The failure policy on its own: retry, dead-letter or hold, with no Kafka and no PostgreSQL. */
import { describe, expect, it } from "vitest";
import { BusinessError } from "../src/errors.ts";
import { BreakerOpenError } from "../src/runtime/circuit-breaker.ts";
import { decideFailure, type FailurePolicy, failureKind } from "../src/runtime/failure-policy.ts";
import { HandlerTimeoutError } from "../src/runtime/handler-call.ts";
import { systemRetryDefaults } from "../src/runtime/retry.ts";

const policy: FailurePolicy = {
  systemRetry: { ...systemRetryDefaults, initialDelayMs: 100, maxDelayMs: 1000, jitter: 0.5 },
  businessRetry: { attempts: 3, backoffMs: [10, 20] },
  random: () => 0,
};

describe("failureKind", () => {
  it("tells business, system and breaker refusals apart", () => {
    expect(failureKind(new BusinessError("no"))).toBe("business");
    expect(failureKind(new Error("down"))).toBe("system");
    expect(failureKind(new HandlerTimeoutError(50))).toBe("system");
    expect(failureKind("a string")).toBe("system");
    expect(failureKind(new BreakerOpenError("open"))).toBe("hold");
  });
});

describe("decideFailure", () => {
  it("holds when the breaker refused the call", () => {
    expect(decideFailure(new BreakerOpenError("open"), 1, policy)).toEqual({ action: "hold" });
  });

  it("retries a business failure with the registration's back-off, then dead-letters it", () => {
    const error = new BusinessError("credit limit", { code: "LIMIT" });
    expect(decideFailure(error, 1, policy)).toEqual({
      action: "retry",
      failureClass: "business",
      delayMs: 10,
    });
    expect(decideFailure(error, 2, policy)).toEqual({
      action: "retry",
      failureClass: "business",
      delayMs: 20,
    });
    expect(decideFailure(error, 3, policy)).toMatchObject({
      action: "dead-letter",
      failureClass: "business",
      code: "LIMIT",
      message: "credit limit",
    });
  });

  it("dead-letters a business failure at once with the default (one attempt)", () => {
    const decision = decideFailure(new BusinessError("no"), 1, {
      ...policy,
      businessRetry: { attempts: 1, backoffMs: [] },
    });
    expect(decision).toMatchObject({
      action: "dead-letter",
      failureClass: "business",
      code: "CHATBUS_BUSINESS",
    });
  });

  it("retries a system failure for ever by default, backing off exponentially", () => {
    const error = new Error("database down");
    expect([1, 2, 3, 10, 1000].map((n) => decideFailure(error, n, policy))).toEqual(
      [100, 200, 400, 1000, 1000].map((delayMs) => ({ action: "retry", failureClass: "system", delayMs })),
    );
  });

  it("dead-letters a system failure at maxAttempts, keeping its code, message and stack", () => {
    const capped = { ...policy, systemRetry: { ...policy.systemRetry, maxAttempts: 3 } };
    const error = Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
    expect(decideFailure(error, 2, capped)).toMatchObject({ action: "retry", failureClass: "system" });
    const decision = decideFailure(error, 3, capped);
    expect(decision).toMatchObject({
      action: "dead-letter",
      failureClass: "system",
      code: "ECONNRESET",
      message: "socket hang up",
    });
    expect(decision.action === "dead-letter" && decision.stack).toContain("socket hang up");
  });

  it("names a thrown non-error with a generic code", () => {
    const capped = { ...policy, systemRetry: { ...policy.systemRetry, maxAttempts: 1 } };
    expect(decideFailure("boom", 1, capped)).toEqual({
      action: "dead-letter",
      failureClass: "system",
      code: "CHATBUS_SYSTEM_FAILURE",
      message: "boom",
      stack: null,
    });
  });
});
