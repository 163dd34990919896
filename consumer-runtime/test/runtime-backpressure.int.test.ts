/**
 * Bounded memory: one conversation is stuck in system retries while its events keep
 * arriving. The partition is paused once `maxQueuedPerPartition` events are held (the
 * runtime does not fetch the whole topic into memory), and resumed when it drains.
 */
import { describe, expect, it } from "vitest";
import { uniqueName } from "../../test/support/isolation.ts";
import type { Runtime } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, orderProblems, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_bp", { partitions: 1 });

let runtime: Runtime | undefined;

describe("back-pressure", () => {
  it("pauses a partition when too much is queued and resumes when it drains", async () => {
    const producer = await connectProducer();
    // Small sends: the broker returns whole record batches, whatever the fetch limit.
    await produceNumbered(producer, rt.topic, 1, 400, "stuck", 20);
    await produceNumbered(producer, rt.topic, 20, 20, "other", 20);
    await producer.disconnect();

    let broken = true;
    let maxInFlight = 0;
    const seen = new Map<string, number[]>();
    let handled = 0;
    runtime = rt.runtime({
      group: uniqueName("bp"),
      maxQueuedPerPartition: 100,
      maxBytesPerPartition: 16_384,
      systemRetry: { initialDelayMs: 50, maxDelayMs: 100 },
      breaker: { volumeThreshold: 1_000_000 },
    });
    runtime.on("chat.message.sent", async (event) => {
      if (event.conversationId === "stuck-0" && broken) throw new Error("the downstream service is down");
      seen.set(event.conversationId, [...(seen.get(event.conversationId) ?? []), numberOf(event)]);
      handled++;
    });
    const sample = setInterval(() => {
      maxInFlight = Math.max(maxInFlight, runtime!.state().inFlight);
    }, 20);
    await runtime.start();
    await waitFor(
      () => runtime!.state().partitions[0]?.paused === true,
      30_000,
      "the partition to be paused",
    );
    // Held events stay bounded: the limit plus at most one fetch (16 KiB ≈ 60 records).
    await new Promise((r) => setTimeout(r, 1500));
    expect(runtime.state().partitions[0]!.paused).toBe(true);
    expect(maxInFlight).toBeGreaterThanOrEqual(100);
    expect(maxInFlight).toBeLessThan(250);
    expect(handled).toBe(0);

    broken = false;
    await waitFor(() => handled === 400 + 20 * 20, 60_000, "every event once the service is back");
    clearInterval(sample);
    expect(runtime.state().partitions[0]!.paused).toBe(false);
    expect(orderProblems(seen, 400).filter((p) => p.startsWith("stuck"))).toEqual([]);
    expect(orderProblems(new Map([...seen].filter(([c]) => c !== "stuck-0")), 20)).toEqual([]);
  });
});
