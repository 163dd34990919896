/**
 * Business failures, dead letters, replay and poison records against the real broker
 * and PostgreSQL. Poison records are written with kcat (apt-get install -y kcat), as
 * a foreign producer would, not with our codec.
 */
import { spawnSync } from "node:child_process";
import { encodeEvent } from "@chatbus/producer-sdk";
import { describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import {
  discardDeadLetter,
  getDeadLetter,
  listDeadLetters,
  replayDeadLetter,
} from "../src/exports/operator.ts";
import { BusinessError, type Runtime } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, kafkaClient, numberOf, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_fail", { partitions: 3 });

let runtime: Runtime | undefined;

function kcat(args: string[], input: Buffer): void {
  const result = spawnSync("kcat", ["-P", "-b", kafkaBrokers()[0]!, "-t", rt.topic, ...args], { input });
  if (result.error || result.status !== 0) {
    throw new Error(`kcat failed (install it: apt-get install -y kcat): ${result.error ?? result.stderr}`);
  }
}

describe("business failures, dead letters, replay and poison", () => {
  it("retries a business failure as registered, dead-letters it, holds only its conversation, replays it once", async () => {
    const producer = await connectProducer();
    await produceNumbered(producer, rt.topic, 1, 4, "biz");
    await produceNumbered(producer, rt.topic, 20, 5, "ok");

    let fixed = false;
    const attemptsAt: number[] = [];
    const handledAt = new Map<string, number[]>();
    const replays: { conversationId: string; n: number }[] = [];
    runtime = rt.runtime({
      group: uniqueName("fail"),
      replayPollMs: 200,
    });
    runtime.on(
      "chat.message.sent",
      async (event, ctx) => {
        const n = numberOf(event);
        if (ctx.replay) replays.push({ conversationId: event.conversationId, n });
        if (event.conversationId === "biz-0" && n === 1 && !fixed) {
          attemptsAt.push(Date.now());
          expect(ctx.attempt).toBe(attemptsAt.length);
          throw new BusinessError("the recipient refuses this message", { code: "TEST_REFUSED" });
        }
        const list = handledAt.get(event.conversationId) ?? [];
        list.push(Date.now());
        handledAt.set(event.conversationId, list);
      },
      { businessRetry: { attempts: 3, backoffMs: [300, 600] } },
    );
    await runtime.start();

    await waitFor(() => (handledAt.get("biz-0")?.length ?? 0) === 3, 30_000, "biz-0 to move on");
    // Exactly as configured: 3 attempts, 300 ms then 600 ms apart.
    expect(attemptsAt).toHaveLength(3);
    expect(attemptsAt[1]! - attemptsAt[0]!).toBeGreaterThanOrEqual(290);
    expect(attemptsAt[2]! - attemptsAt[1]!).toBeGreaterThanOrEqual(590);
    // Its conversation waited: n:2 and n:3 came after the last attempt.
    expect(handledAt.get("biz-0")![1]!).toBeGreaterThanOrEqual(attemptsAt[2]!);
    // Other conversations did not wait for the retries.
    for (let i = 0; i < 20; i++) {
      const times = handledAt.get(`ok-${i}`)!;
      expect(times).toHaveLength(5);
      expect(Math.max(...times)).toBeLessThan(attemptsAt[2]!);
    }

    const { items } = await listDeadLetters(rt.schema.pool, {
      subscription: runtime.subscription,
      limit: 10,
    });
    expect(items).toHaveLength(1);
    const letter = items[0]!;
    expect(letter).toMatchObject({
      conversationId: "biz-0",
      failureClass: "business",
      errorCode: "TEST_REFUSED",
      errorMessage: "the recipient refuses this message",
      attempts: 3,
      status: "waiting",
      eventType: "chat.message.sent",
    });
    expect(letter.lastFailedAt.getTime()).toBeGreaterThanOrEqual(letter.firstFailedAt.getTime() + 800);

    // The dead-letter topic got the record with the reason in its headers.
    const dlq = kafkaClient().consumer({ groupId: uniqueName("dlq-reader") });
    const dlqHeaders: Record<string, string>[] = [];
    await dlq.connect();
    await dlq.subscribe({ topic: `${rt.topic}.dlq`, fromBeginning: true });
    await dlq.run({
      eachMessage: async ({ message }) => {
        dlqHeaders.push(
          Object.fromEntries(Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)])),
        );
      },
    });
    await waitFor(() => dlqHeaders.length >= 1, 30_000, "the dead-letter topic record");
    await dlq.disconnect();
    expect(dlqHeaders[0]).toMatchObject({
      chatbus_dlq_failure_class: "business",
      chatbus_dlq_error_code: "TEST_REFUSED",
      chatbus_dlq_reason: "the recipient refuses this message",
      ce_type: "chat.message.sent",
    });

    // Replay after the fix: handled once, by this subscription, marked replayed.
    fixed = true;
    await replayDeadLetter(rt.schema.pool, letter.id, { by: "test-operator" });
    await waitFor(
      async () => (await getDeadLetter(rt.schema.pool, letter.id))?.status === "replayed",
      20_000,
      "the dead letter to be replayed",
    );
    await new Promise((r) => setTimeout(r, 600)); // a few more polls must not replay it again
    expect(replays).toEqual([{ conversationId: "biz-0", n: 1 }]);
    const replayed = (await getDeadLetter(rt.schema.pool, letter.id))!;
    expect(replayed).toMatchObject({
      replayCount: 1,
      statusChangedBy: "test-operator",
      lastReplayError: null,
    });

    // Poison: garbage bytes and an unknown ce_type, both from kcat.
    kcat(["-k", "poison-1"], Buffer.from([0xff, 0xfe, 0x00, 0x41, 0x42]));
    const good = encodeEvent(
      "poison-2",
      { type: "chat.message.sent", senderId: "x", content: { type: "text", text: "n:0" } },
      { source: "/kcat" },
    ).record;
    kcat(
      [
        "-k",
        "poison-2",
        ...Object.entries({ ...good.headers, ce_type: "chat.unknown.thing" }).flatMap(([k, v]) => [
          "-H",
          `${k}=${v}`,
        ]),
      ],
      good.value,
    );
    // Consumption goes on after them.
    await produceNumbered(producer, rt.topic, 1, 1, "after-poison");
    await producer.disconnect();
    await waitFor(() => handledAt.has("after-poison-0"), 30_000, "an event after the poison records");
    await waitFor(
      async () =>
        (await listDeadLetters(rt.schema.pool, { subscription: runtime!.subscription, limit: 10 })).items
          .length === 3,
      20_000,
      "two poison dead letters",
    );
    const poison = (
      await listDeadLetters(rt.schema.pool, { subscription: runtime.subscription, limit: 10 })
    ).items.filter((d) => d.failureClass === "poison");
    const byKey = Object.fromEntries(poison.map((d) => [d.key, d]));
    expect(byKey["poison-1"]).toMatchObject({
      errorCode: "CHATBUS_UNDECODABLE",
      attempts: 0,
      status: "waiting",
    });
    expect(byKey["poison-1"]!.value).toEqual(Buffer.from([0xff, 0xfe, 0x00, 0x41, 0x42]));
    expect(byKey["poison-2"]).toMatchObject({
      errorCode: "CHATBUS_UNKNOWN_TYPE",
      eventType: "chat.unknown.thing",
    });
    expect(byKey["poison-2"]!.errorMessage).toContain("chat.unknown.thing");

    // Replaying poison keeps it waiting with the reason; discarding is recorded.
    await replayDeadLetter(rt.schema.pool, byKey["poison-2"]!.id, { by: "test-operator" });
    await waitFor(
      async () => ((await getDeadLetter(rt.schema.pool, byKey["poison-2"]!.id))?.replayCount ?? 0) === 1,
      20_000,
      "the poison replay to be tried",
    );
    const again = (await getDeadLetter(rt.schema.pool, byKey["poison-2"]!.id))!;
    expect(again.status).toBe("waiting");
    expect(again.lastReplayError).toContain("CHATBUS_UNKNOWN_TYPE");
    const discarded = await discardDeadLetter(rt.schema.pool, again.id, {
      by: "test-operator",
      reason: "junk",
    });
    expect(discarded).toMatchObject({
      status: "discarded",
      statusChangedBy: "test-operator",
      statusReason: "junk",
    });
    expect(replays).toHaveLength(1);
  });
});
