/**
 * Issue 20 item 2 (review R2), real broker and PostgreSQL: a dead-letter replay runs
 * on the instance that owns the partition, in the conversation's queue (never at the
 * same time as a live event of that conversation), exactly once even when its claim
 * is back-dated while it runs (a second instance polls too), and only the handlers
 * that had not succeeded run again unless the operator asks for all of them.
 */
import { describe, expect, it } from "vitest";
import { createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { getDeadLetter, listDeadLetters, replayDeadLetter } from "../src/exports/operator.ts";
import { BusinessError } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_replayq");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("dead-letter replay through the conversation's queue", () => {
  it("runs once, never alongside live events of its conversation, and skips handlers that had succeeded", async () => {
    const topic = await createTestTopic("rt_replayq", 1);
    const group = uniqueName("replayq");
    const producer = await connectProducer();
    const ids = await produceNumbered(producer, topic, 2, 1, "rq");
    const [first, second] = ids as [string, string];
    let refusing = true;
    const audit: string[] = [];
    const active = new Map<string, string>();
    const overlaps: string[] = [];
    let replayCalls = 0;
    const replayedOn: string[] = [];
    const make = (name: string) => {
      const runtime = rt.runtime({
        group,
        topic,
        instanceId: name,
        replayPollMs: 200,
      });
      // Handler 0 always succeeds; handler 1 refuses event 0 until `refusing` is off.
      runtime.on("chat.message.sent", async (event, ctx) => {
        audit.push(`${name} h0 ${event.conversationId} ${numberOf(event)}${ctx.replay ? " replay" : ""}`);
      });
      runtime.on("chat.message.sent", async (event, ctx) => {
        const me = `${name} ${numberOf(event)}${ctx.replay ? " replay" : ""}`;
        const other = active.get(event.conversationId);
        if (other) overlaps.push(`${event.conversationId}: ${me} while ${other}`);
        active.set(event.conversationId, me);
        try {
          if (ctx.replay) {
            replayCalls++;
            replayedOn.push(name);
            await sleep(3000); // slow replay: the claim is back-dated meanwhile
          } else if (numberOf(event) === 0 && refusing) {
            throw new BusinessError("the recipient is blocked", { code: "BLOCKED" });
          } else await sleep(300);
        } finally {
          active.delete(event.conversationId);
        }
      });
      return runtime;
    };
    const a = make("a");
    await a.start();
    await waitFor(
      async () =>
        (await listDeadLetters(rt.schema.pool, { subscription: group, limit: 5 })).items.length === 2,
      30_000,
      "both first events dead-lettered",
    );
    const letters = (await listDeadLetters(rt.schema.pool, { subscription: group, limit: 5 })).items;
    const letterOf = (id: string) => letters.find((l) => l.conversationId === id)!;
    // A second instance of the subscription: one of the two owns the only partition,
    // the other must leave the replay alone although it polls too.
    const b = make("b");
    await b.start();
    await waitFor(
      () => a.state().partitions.length + b.state().partitions.length === 1,
      30_000,
      "one owner of the partition",
    );
    const owner = a.state().partitions.length === 1 ? "a" : "b";
    refusing = false;

    await replayDeadLetter(rt.schema.pool, letterOf(first).id, { by: "ops" });
    await waitFor(() => replayCalls === 1, 30_000, "the replay to start");
    // Live events of the same conversation arrive while the replay runs.
    await produceNumbered(producer, topic, 1, 1, "rq");
    await sleep(300);
    await rt.schema.pool.query(
      "UPDATE dead_letters SET claimed_at = now() - interval '6 minutes' WHERE id = $1",
      [letterOf(first).id],
    );
    await waitFor(
      async () => (await getDeadLetter(rt.schema.pool, letterOf(first).id))?.status === "replayed",
      30_000,
      "the replay to finish",
    );
    await sleep(1500); // time for a (wrong) second claim to show
    expect(replayCalls).toBe(1);
    expect(overlaps).toEqual([]);
    // Handler 0 had succeeded before the dead letter: it is not run again.
    expect(audit.filter((l) => l.includes(`${first} 0 replay`))).toEqual([]);

    // With allHandlers, every handler runs again.
    await replayDeadLetter(rt.schema.pool, letterOf(second).id, { by: "ops", allHandlers: true });
    await waitFor(
      async () => (await getDeadLetter(rt.schema.pool, letterOf(second).id))?.status === "replayed",
      30_000,
      "the second replay to finish",
    );
    expect(audit.filter((l) => l.includes(`${second} 0 replay`))).toEqual([`${owner} h0 ${second} 0 replay`]);
    expect(replayCalls).toBe(2);
    expect(replayedOn).toEqual([owner, owner]);
    expect(overlaps).toEqual([]);
    await producer.disconnect();
  });
});
