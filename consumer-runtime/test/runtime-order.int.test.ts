/**
 * Per-conversation order with real concurrency: thousands of events over hundreds of
 * conversations, a handler that sleeps randomly; each conversation is handled in log
 * order and never twice at once, while the wall time shows many handlers overlapped.
 */
import { describe, expect, it } from "vitest";
import { uniqueName } from "../../test/support/isolation.ts";
import { listSubscriptionStatus } from "../src/exports/operator.ts";
import type { Runtime } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, orderProblems, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_order", { partitions: 6 });

let runtime: Runtime | undefined;

describe("per-conversation order", () => {
  it("handles each conversation in log order while conversations run concurrently", async () => {
    const conversations = 300;
    const perConversation = 10;
    const producer = await connectProducer();
    await produceNumbered(producer, rt.topic, conversations, perConversation);
    await producer.disconnect();

    const seen = new Map<string, number[]>();
    const active = new Set<string>();
    let overlapping = 0;
    let concurrent = 0;
    let maxConcurrent = 0;
    let sleptMs = 0;
    let handled = 0;
    runtime = rt.runtime({
      group: uniqueName("order"),
      concurrency: 64,
      statusIntervalMs: 500,
    });
    runtime.on("chat.message.sent", async (event) => {
      if (active.has(event.conversationId)) overlapping++;
      active.add(event.conversationId);
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      const ms = Math.floor(Math.random() * 10);
      sleptMs += ms;
      await new Promise((r) => setTimeout(r, ms));
      concurrent--;
      active.delete(event.conversationId);
      const list = seen.get(event.conversationId) ?? [];
      list.push(numberOf(event));
      seen.set(event.conversationId, list);
      handled++;
    });
    const started = Date.now();
    await runtime.start();
    await waitFor(() => handled >= conversations * perConversation, 90_000, "every event handled");
    const elapsed = Date.now() - started;

    expect(overlapping).toBe(0);
    expect(seen.size).toBe(conversations);
    expect(orderProblems(seen, perConversation)).toEqual([]);
    expect(maxConcurrent).toBeGreaterThan(16);
    // One at a time would take the sum of the sleeps; concurrency must beat it clearly.
    expect(elapsed).toBeLessThan(sleptMs / 3);

    // The status row shows the work and, once committed, no lag.
    await waitFor(
      async () => {
        const rows = await listSubscriptionStatus(rt.schema.pool);
        const row = rows.find((r) => r.subscription === runtime!.subscription);
        return (
          row !== undefined &&
          row.state.processed === conversations * perConversation &&
          row.state.partitions.length === 6 &&
          row.state.partitions.every((p) => p.lag === 0)
        );
      },
      20_000,
      "the status row to show every event processed and no lag",
    );
  });
});
