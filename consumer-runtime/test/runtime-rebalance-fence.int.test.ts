/**
 * Issue 20 item 1 (review R1): handlers resumed after a back-off run outside kafkajs's
 * batch calls; a rebalance must fence them. The scenario: one instance, 24
 * conversations × 6 events; event 2 of every conversation fails once (a system
 * error) and its retry takes 5 s (ignoring its signal). While those retries run, a
 * second instance joins. Counted: calls of one conversation that overlap (must be 0),
 * and the order of completed effects per conversation (log order; a redelivery may
 * repeat a tail, but the last effect is always the last event).
 */
import { describe, expect, it } from "vitest";
import { createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, orderProblems, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_fence");

interface Call {
  instance: string;
  conversation: string;
  n: number;
  start: number;
  end: number | null;
}

describe("fencing in-flight work at a rebalance", () => {
  it("a second instance joining while retries run: no overlapping calls, effects in log order", async () => {
    const conversations = 24;
    const perConversation = 6;
    const topic = await createTestTopic("rt_fence", 6);
    const producer = await connectProducer();
    const ids = await produceNumbered(producer, topic, conversations, perConversation, "fence");
    await producer.disconnect();

    const group = uniqueName("fence");
    const calls: Call[] = [];
    const effects = new Map<string, number[]>();
    const failedOnce = new Set<string>();
    let retryStarted: () => void = () => {};
    const firstRetry = new Promise<void>((resolve) => {
      retryStarted = resolve;
    });
    const make = (instance: string) => {
      const runtime = rt.runtime({
        group,
        topic,
        instanceId: instance,
        sessionTimeoutMs: 10_000,
        heartbeatIntervalMs: 500,
        rebalanceTimeoutMs: 30_000,
        systemRetry: { initialDelayMs: 100, maxDelayMs: 200, jitter: 0 },
      });
      runtime.on("chat.message.sent", async (event) => {
        const n = numberOf(event);
        const call: Call = { instance, conversation: event.conversationId, n, start: Date.now(), end: null };
        calls.push(call);
        try {
          if (n === 2) {
            if (!failedOnce.has(event.conversationId)) {
              failedOnce.add(event.conversationId);
              throw new Error("dependency unavailable (first attempt of event 2)");
            }
            retryStarted();
            // The slow retry; it does not look at ctx.signal.
            await new Promise((r) => setTimeout(r, 5000));
          }
          effects.set(event.conversationId, [...(effects.get(event.conversationId) ?? []), n]);
        } finally {
          call.end = Date.now();
        }
      });
      return runtime;
    };

    await make("a").start();
    await firstRetry;
    await make("b").start();
    await waitFor(
      () => ids.every((id) => effects.get(id)?.at(-1) === perConversation - 1),
      120_000,
      "every conversation's last event to take effect",
    );
    // Let any straggler (a late call of a fenced instance) land, so that it is counted.
    await new Promise((r) => setTimeout(r, 6000));

    const overlaps: string[] = [];
    for (const id of ids) {
      const mine = calls.filter((c) => c.conversation === id).sort((x, y) => x.start - y.start);
      for (let i = 1; i < mine.length; i++) {
        const previousEnd = mine[i - 1]!.end ?? Number.POSITIVE_INFINITY;
        if (mine[i]!.start < previousEnd) {
          overlaps.push(
            `${id}: ${mine[i]!.instance}#${mine[i]!.n} started while ${mine[i - 1]!.instance}#${mine[i - 1]!.n} ran`,
          );
        }
      }
    }
    expect(overlaps).toEqual([]);
    expect(orderProblems(effects, perConversation, true)).toEqual([]);
    for (const id of ids) expect(effects.get(id)!.at(-1), id).toBe(perConversation - 1);
    expect(new Set(calls.map((c) => c.instance))).toEqual(new Set(["a", "b"]));
  });
});
