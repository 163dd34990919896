/** The circuit breaker wrapper: opens on system failures, ignores business ones, probes once, closes. */
import { afterEach, describe, expect, it } from "vitest";
import { BusinessError } from "../src/errors.ts";
import {
  BreakerOpenError,
  type BreakerState,
  type CircuitBreaker,
  createCircuitBreaker,
} from "../src/runtime/circuit-breaker.ts";

let breaker: CircuitBreaker | undefined;
afterEach(() => breaker?.shutdown());

const options = {
  errorThresholdPercentage: 50,
  volumeThreshold: 4,
  rollingWindowMs: 10_000,
  rollingBuckets: 10,
  resetTimeoutMs: 200,
};
const fail = () => Promise.reject(new Error("database down"));
const ok = () => Promise.resolve("ok");

describe("circuit breaker", () => {
  it("opens past the threshold, rejects with its own error, probes after the reset timeout, closes on success", async () => {
    breaker = createCircuitBreaker("test", options);
    const transitions: BreakerState[] = [];
    breaker.onTransition((to) => transitions.push(to));
    for (let i = 0; i < 4; i++) await expect(breaker.fire(fail)).rejects.toThrow("database down");
    expect(breaker.state).toBe("open");
    await expect(breaker.fire(ok)).rejects.toBeInstanceOf(BreakerOpenError);
    expect(await breaker.nextTransition()).toBe("halfOpen");
    await expect(breaker.fire(ok)).resolves.toBe("ok");
    expect(breaker.state).toBe("closed");
    expect(transitions).toEqual(["open", "halfOpen", "closed"]);
  });

  it("opens again when the probe fails", async () => {
    breaker = createCircuitBreaker("test", options);
    for (let i = 0; i < 4; i++) await breaker.fire(fail).catch(() => {});
    await breaker.nextTransition();
    expect(breaker.state).toBe("halfOpen");
    await breaker.fire(fail).catch(() => {});
    expect(breaker.state).toBe("open");
  });

  it("does not count business failures", async () => {
    breaker = createCircuitBreaker("test", options);
    for (let i = 0; i < 10; i++) {
      await expect(breaker.fire(() => Promise.reject(new BusinessError("refused")))).rejects.toBeInstanceOf(
        BusinessError,
      );
    }
    expect(breaker.state).toBe("closed");
  });

  it("stays closed below the volume threshold and at exactly the threshold share", async () => {
    breaker = createCircuitBreaker("test", options);
    for (let i = 0; i < 3; i++) await breaker.fire(fail).catch(() => {});
    expect(breaker.state).toBe("closed"); // 3 calls < volumeThreshold 4
    breaker.shutdown();
    breaker = createCircuitBreaker("test", options);
    await breaker.fire(ok);
    await breaker.fire(ok);
    await breaker.fire(fail).catch(() => {});
    await breaker.fire(fail).catch(() => {});
    expect(breaker.state).toBe("closed"); // 2 of 4 = 50 %, not more than 50 %
    await breaker.fire(fail).catch(() => {});
    expect(breaker.state).toBe("open"); // 3 of 5 = 60 %
  });

  it("forgets calls that left the rolling window", async () => {
    breaker = createCircuitBreaker("test", { ...options, rollingWindowMs: 200, rollingBuckets: 2 });
    for (let i = 0; i < 3; i++) await breaker.fire(fail).catch(() => {});
    await new Promise((r) => setTimeout(r, 350));
    await breaker.fire(fail).catch(() => {});
    expect(breaker.state).toBe("closed"); // the window holds one call, not four
  });

  it("lets exactly one probe through when half-open; a business failure of the probe closes it", async () => {
    breaker = createCircuitBreaker("test", options);
    for (let i = 0; i < 4; i++) await breaker.fire(fail).catch(() => {});
    expect(() => breaker!.enter()).toThrow(BreakerOpenError);
    await breaker.nextTransition();
    breaker.enter(); // the probe
    expect(() => breaker!.enter()).toThrow(BreakerOpenError);
    expect(breaker.state).toBe("halfOpen");
    breaker.failed(new BusinessError("refused"));
    expect(breaker.state).toBe("closed");
    breaker.enter();
    breaker.succeeded();
  });
});
