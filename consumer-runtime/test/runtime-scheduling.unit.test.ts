/** Retry schedules, key-level queues and offset tracking, with fakes (no Kafka, no PostgreSQL). */
import { describe, expect, it } from "vitest";
import { KeyQueues, Slots, type Step } from "../src/runtime/key-queues.ts";
import { OffsetTracker } from "../src/runtime/offset-tracker.ts";
import { resolveRegistration, resolveRuntimeOptions } from "../src/runtime/options.ts";
import { businessRetryDelay, systemRetryDefaults, systemRetryDelay } from "../src/runtime/retry.ts";

describe("system retry delay", () => {
  const options = {
    ...systemRetryDefaults,
    initialDelayMs: 100,
    maxDelayMs: 1000,
    multiplier: 2,
    jitter: 0.5,
  };

  it("grows exponentially and caps", () => {
    const noJitter = () => 0;
    expect([1, 2, 3, 4, 5, 10].map((n) => systemRetryDelay(n, options, noJitter))).toEqual([
      100, 200, 400, 800, 1000, 1000,
    ]);
  });

  it("jitters between (1 - jitter) and 1 times the delay", () => {
    expect(systemRetryDelay(3, options, () => 1)).toBe(200);
    expect(systemRetryDelay(3, options, () => 0.5)).toBe(300);
    for (let i = 0; i < 100; i++) {
      const d = systemRetryDelay(2, options);
      expect(d).toBeGreaterThanOrEqual(100);
      expect(d).toBeLessThanOrEqual(200);
    }
  });
});

describe("business retry delay", () => {
  it("defaults to no retry", () => {
    expect(businessRetryDelay(1, resolveRegistration(undefined).businessRetry)).toBeNull();
  });

  it("follows the schedule, repeats its last entry, and stops after `attempts`", () => {
    const policy = resolveRegistration({
      businessRetry: { attempts: 5, backoffMs: [10, 20, 30] },
    }).businessRetry;
    expect([1, 2, 3, 4, 5].map((n) => businessRetryDelay(n, policy))).toEqual([10, 20, 30, 30, null]);
  });

  it("rejects unknown registration options naming the field", () => {
    expect(() => resolveRegistration({ businessRetry: { attempts: 2, backof: [1] } } as never)).toThrow(
      /businessRetry\.backof/,
    );
  });
});

describe("runtime options", () => {
  it("rejects unknown keys and bad values, naming the field", () => {
    expect(() => resolveRuntimeOptions({ group: "g", concurency: 3 } as never)).toThrow(/concurency/);
    expect(() => resolveRuntimeOptions({ group: "g", concurrency: 0 })).toThrow(/concurrency/);
    expect(() => resolveRuntimeOptions({ group: "g", breaker: { resetTimeoutMs: -1 } })).toThrow(
      /breaker\.resetTimeoutMs/,
    );
    expect(() => resolveRuntimeOptions({ group: "g", handlerTimeoutMs: 0 })).toThrow(/handlerTimeoutMs/);
    expect(() => resolveRuntimeOptions({ group: "g", stuckAfterMs: 1.5 })).toThrow(/stuckAfterMs/);
    expect(() => resolveRegistration({ handlerTimeoutMs: -1 })).toThrow(/handlerTimeoutMs/);
    expect(resolveRuntimeOptions({ group: "g" })).toMatchObject({
      handlerTimeoutMs: 30_000,
      stuckAfterMs: 60_000,
    });
    expect(resolveRegistration({ handlerTimeoutMs: 500 }).handlerTimeoutMs).toBe(500);
  });

  it("applies defaults", () => {
    const resolved = resolveRuntimeOptions({ group: "g", topic: "t", systemRetry: { maxAttempts: 3 } });
    expect(resolved.concurrency).toBe(64);
    expect(resolved.deadLetterTopic).toBe("t.dlq");
    expect(resolved.systemRetry).toEqual({ ...systemRetryDefaults, maxAttempts: 3 });
  });
});

describe("offset tracker", () => {
  it("commits only up to the lowest unfinished offset", () => {
    const t = new OffsetTracker();
    expect(t.committable()).toBeNull();
    for (const o of [5n, 6n, 7n, 9n]) t.track(o);
    expect(t.committable()).toBe(5n);
    t.finish(6n);
    t.finish(9n);
    expect(t.committable()).toBe(5n);
    t.finish(5n);
    expect(t.committable()).toBe(7n);
    t.finish(7n);
    expect(t.committable()).toBe(10n);
    expect(t.unfinished).toBe(0);
  });

  it("reports a commit only when the position moved", () => {
    const t = new OffsetTracker();
    t.track(0n);
    t.finish(0n);
    expect(t.toCommit()).toBe(1n);
    t.markCommitted(1n);
    expect(t.toCommit()).toBeNull();
    t.track(1n);
    expect(t.toCommit()).toBeNull();
    t.finish(1n);
    expect(t.toCommit()).toBe(2n);
  });

  it("refuses offsets that go backwards", () => {
    const t = new OffsetTracker();
    t.track(3n);
    expect(() => t.track(3n)).toThrow();
  });

  it("stays correct across compaction of many offsets", () => {
    const t = new OffsetTracker();
    for (let i = 0n; i < 5000n; i++) t.track(i);
    for (let i = 4999n; i >= 1n; i--) t.finish(i);
    expect(t.committable()).toBe(0n);
    t.finish(0n);
    expect(t.committable()).toBe(5000n);
  });
});

const tick = () => new Promise((r) => setTimeout(r, 1));

describe("key queues", () => {
  it("runs one key in order, different keys concurrently up to the slot limit", async () => {
    const slots = new Slots(3);
    const order: string[] = [];
    const active = new Set<string>();
    let concurrent = 0;
    let max = 0;
    const queues = new KeyQueues<{ key: string; n: number }>(
      slots,
      async (item): Promise<Step> => {
        expect(active.has(item.key)).toBe(false);
        active.add(item.key);
        concurrent++;
        max = Math.max(max, concurrent);
        await new Promise((r) => setTimeout(r, Math.random() * 5));
        concurrent--;
        active.delete(item.key);
        return { kind: "done" };
      },
      (item) => order.push(`${item.key}${item.n}`),
    );
    for (let n = 0; n < 5; n++) for (const key of ["a", "b", "c", "d"]) queues.push(key, { key, n });
    expect(queues.size).toBe(20);
    await queues.whenSizeAtMost(0);
    expect(max).toBe(3);
    for (const key of ["a", "b", "c", "d"]) {
      expect(order.filter((o) => o.startsWith(key))).toEqual([0, 1, 2, 3, 4].map((n) => `${key}${n}`));
    }
  });

  it("parks a key for a later retry without holding a slot or blocking other keys", async () => {
    const slots = new Slots(1);
    const done: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let failedOnce = false;
    const queues = new KeyQueues<string>(
      slots,
      async (item): Promise<Step> => {
        if (item === "a1" && !failedOnce) {
          failedOnce = true;
          return { kind: "later", when: gate };
        }
        return { kind: "done" };
      },
      (item) => done.push(item),
    );
    queues.push("a", "a1");
    queues.push("a", "a2");
    queues.push("b", "b1");
    queues.push("b", "b2");
    await queues.whenQuiet();
    expect(done).toEqual(["b1", "b2"]);
    expect(queues.parked).toBe(1);
    expect(queues.size).toBe(2);
    release();
    await queues.whenSizeAtMost(0);
    expect(done).toEqual(["b1", "b2", "a1", "a2"]);
  });

  it("drops unfinished work on close and reports nothing more", async () => {
    const slots = new Slots(2);
    const done: string[] = [];
    let finish!: () => void;
    const blocker = new Promise<void>((r) => {
      finish = r;
    });
    const queues = new KeyQueues<string>(
      slots,
      async (item): Promise<Step> => {
        if (item === "a1") await blocker;
        return { kind: "done" };
      },
      (item) => done.push(item),
    );
    queues.push("a", "a1");
    queues.push("a", "a2");
    await tick();
    expect(queues.running).toBe(1);
    queues.close();
    expect(queues.size).toBe(0);
    finish();
    await queues.whenNotRunning();
    await tick();
    expect(done).toEqual([]);
    expect(slots.inUse).toBe(0);
  });
});
