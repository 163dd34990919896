/**
 * Two instances of one subscription: the second joins mid-run, then the first leaves
 * mid-run (graceful stop). No event is lost and no conversation is ever handled by
 * two instances at once (rebalances wait for running handlers and commit first).
 */
import { describe, expect, it } from "vitest";
import { createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import type { Runtime } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, orderProblems, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_rebal", { partitions: 6 });

describe("two instances, one leaving mid-run", () => {
  it("loses nothing and never runs one conversation in two instances at once", async () => {
    const conversations = 100;
    const perConversation = 30;
    const total = conversations * perConversation;
    const producer = await connectProducer();
    await produceNumbered(producer, rt.topic, conversations, perConversation, "rebal");
    await producer.disconnect();

    const group = uniqueName("rebal");
    const active = new Map<string, string>();
    const overlaps: string[] = [];
    const seen = new Map<string, number[]>();
    const byInstance = new Map<string, Map<string, number[]>>();
    const unique = new Set<string>();
    let handled = 0;
    const make = (name: string) => {
      const runtime = rt.runtime({
        group,
        concurrency: 16,
        sessionTimeoutMs: 10_000,
        heartbeatIntervalMs: 500,
        instanceId: name,
      });
      const mine = new Map<string, number[]>();
      byInstance.set(name, mine);
      runtime.on("chat.message.sent", async (event) => {
        const other = active.get(event.conversationId);
        if (other !== undefined) overlaps.push(`${event.conversationId}: ${name} while ${other}`);
        active.set(event.conversationId, name);
        await new Promise((r) => setTimeout(r, 5 + Math.random() * 10));
        active.delete(event.conversationId);
        const n = numberOf(event);
        seen.set(event.conversationId, [...(seen.get(event.conversationId) ?? []), n]);
        mine.set(event.conversationId, [...(mine.get(event.conversationId) ?? []), n]);
        unique.add(`${event.conversationId} ${n}`);
        handled++;
      });
      return runtime;
    };

    const a = make("a");
    await a.start();
    await waitFor(() => handled >= 300, 60_000, "instance a to handle 300 events");
    const b = make("b");
    await b.start();
    await waitFor(() => handled >= 1500, 60_000, "1500 events handled by a and b");
    await a.stop();
    await waitFor(() => unique.size === total, 90_000, "every event handled");

    expect(overlaps).toEqual([]);
    expect(byInstance.get("b")!.size).toBeGreaterThan(0);
    // Redelivery after a rebalance repeats a tail, never skips or reorders.
    expect(orderProblems(seen, perConversation, true)).toEqual([]);
    for (const [name, mine] of byInstance) {
      for (const [c, numbers] of mine) {
        for (let i = 1; i < numbers.length; i++) {
          if (numbers[i]! < numbers[i - 1]!) {
            // a repeat is allowed only as a redelivery of the same tail, in order
            expect(numbers.slice(i), `${name} ${c}`).toEqual([...numbers.slice(i)].sort((x, y) => x - y));
          }
        }
      }
    }
    expect(handled - total).toBeLessThan(total / 2);
  });
});

describe("a handler slower than the session timeout", () => {
  it("keeps the member alive with heartbeats: no rebalance, no redelivery", async () => {
    const slowTopic = await createTestTopic("rt_slow", 4);
    const group = uniqueName("slow");
    const calls = new Map<string, number>();
    const members: Runtime[] = [];
    for (const name of ["s1", "s2", "s3"]) {
      const runtime = rt.runtime({
        group,
        topic: slowTopic,
        sessionTimeoutMs: 6000,
        heartbeatIntervalMs: 1000,
        instanceId: name,
      });
      runtime.on("chat.message.sent", async (event) => {
        const id = `${event.conversationId} ${numberOf(event)}`;
        calls.set(id, (calls.get(id) ?? 0) + 1);
        if (event.conversationId === "slow-0" && numberOf(event) === 0) {
          await new Promise((r) => setTimeout(r, 9000));
        }
      });
      members.push(runtime);
    }
    await Promise.all(members.map((m) => m.start()));
    await waitFor(
      () => members.reduce((sum, m) => sum + m.state().partitions.length, 0) === 4,
      30_000,
      "the three members to share the four partitions",
    );
    const producer = await connectProducer();
    await produceNumbered(producer, slowTopic, 1, 2, "slow");
    await produceNumbered(producer, slowTopic, 20, 3, "quick");
    await producer.disconnect();
    await waitFor(() => calls.size === 2 + 60, 60_000, "every event handled");
    // A rebalance after a lost session would redeliver: give it time to show.
    await new Promise((r) => setTimeout(r, 2000));
    expect([...calls.values()].every((n) => n === 1)).toBe(true);
  });
});
