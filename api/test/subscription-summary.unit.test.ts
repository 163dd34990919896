/** `summariseSubscription` across instances: oldest in-flight age, stuck records merged in log order. */
import type { SubscriptionState, SubscriptionStatusRow } from "@chatbus/consumer-runtime/operator";
import { describe, expect, it } from "vitest";
import { summariseSubscription } from "../src/routes/operator.ts";

function row(instanceId: string, live: boolean, state: Partial<SubscriptionState>): SubscriptionStatusRow {
  return {
    subscription: "notify",
    instanceId,
    live,
    lastSeenAt: new Date(),
    state: {
      group: "notify",
      topic: "chat.events",
      breaker: "closed",
      inFlight: 0,
      processed: 0,
      failed: 0,
      deadLettered: 0,
      startedAt: new Date().toISOString(),
      partitions: [],
      ...state,
    },
  };
}

const stuck = (partition: number, offset: string) => ({
  partition,
  offset,
  eventType: "chat.message.sent",
  conversationId: "c",
  error: "boom",
  attempts: 3,
  since: "2026-11-30T14:00:00.000Z",
});

describe("summariseSubscription", () => {
  it("takes the oldest in-flight age over live instances and merges stuck records by partition and numeric offset", () => {
    const summary = summariseSubscription(
      [
        row("a", true, { inFlight: 2, oldestInFlightMs: 1_500, stuck: [stuck(3, "100"), stuck(1, "7")] }),
        row("b", true, { inFlight: 1, oldestInFlightMs: 95_000, stuck: [stuck(3, "99")] }),
        row("c", true, { inFlight: 0, oldestInFlightMs: null }),
        // A crashed instance's last report does not count while others are live.
        row("gone", false, { inFlight: 9, oldestInFlightMs: 999_999, stuck: [stuck(0, "1")] }),
      ],
      0,
    );
    expect(summary.inFlight).toBe(3);
    expect(summary.oldestInFlightMs).toBe(95_000);
    expect(summary.stuck.map((s) => `${s.instanceId}:${s.partition}:${s.offset}`)).toEqual([
      "a:1:7",
      "b:3:99",
      "a:3:100",
    ]);
  });

  it("reports an unknown age as null (instances that publish none), not 0", () => {
    const summary = summariseSubscription([row("a", true, { inFlight: 4 })], 0);
    expect(summary.oldestInFlightMs).toBeNull();
    expect(summary.stuck).toEqual([]);
    expect(summary.skipsPending).toEqual([]);
  });
});
