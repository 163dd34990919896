/**
 * Issues 17.4 / 12.4 (runtime side): a record retried for a system failure shows up
 * in the published status as `stuck` (with the oldest in-flight age); an operator
 * skip request turns it into a dead letter of class `operator`, the conversation and
 * the others go on, and nothing is handled twice. Real broker and PostgreSQL.
 */
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { getSkip, listDeadLetters, listSubscriptionStatus, requestSkip } from "../src/exports/operator.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_skip");

describe("stuck records and operator skips", () => {
  it("publishes a record stuck in system retries; a skip dead-letters it as `operator` and everything else runs once", async () => {
    const topic = await createTestTopic("rt_skip", 2);
    const producer = await connectProducer();
    const ids = await produceNumbered(producer, topic, 4, 4, "skip");
    await producer.disconnect();
    const stuckId = ids[0]!;
    const group = uniqueName("skip");
    const registry = new Registry();
    const effects = new Map<string, number>();
    let failing: { partition: number; offset: string } | null = null;
    let failures = 0;
    const runtime = rt.runtime({
      group,
      topic,
      registry,
      stuckAfterMs: 1500,
      statusIntervalMs: 300,
      systemRetry: { initialDelayMs: 100, maxDelayMs: 300 },
      // Every call of the stuck event fails: keep the breaker out of the way.
      breaker: { volumeThreshold: 1000 },
    });
    runtime.on("chat.message.sent", async (event, ctx) => {
      const n = numberOf(event);
      if (event.conversationId === stuckId && n === 1) {
        failing = { partition: ctx.partition, offset: ctx.offset };
        failures++;
        throw new Error("the search index refuses connections");
      }
      const key = `${event.conversationId} ${n}`;
      effects.set(key, (effects.get(key) ?? 0) + 1);
    });
    await runtime.start();

    const published = async () =>
      (await listSubscriptionStatus(rt.schema.pool)).find((r) => r.subscription === group)?.state;
    await waitFor(
      async () => ((await published())?.stuck?.length ?? 0) > 0,
      30_000,
      "the stuck record in the published status",
    );
    const state = (await published())!;
    const target = failing as unknown as { partition: number; offset: string };
    expect(state.stuck).toHaveLength(1);
    expect(state.stuck![0]).toMatchObject({
      partition: target.partition,
      offset: target.offset,
      eventType: "chat.message.sent",
      conversationId: stuckId,
      error: expect.stringContaining("refuses connections"),
    });
    expect(state.stuck![0]!.attempts).toBeGreaterThan(1);
    expect(state.inFlight).toBeGreaterThanOrEqual(3); // the stuck event and the two behind it
    expect(state.oldestInFlightMs).toBeGreaterThanOrEqual(1500);
    const gauge = (await registry.getMetricsAsJSON()).find(
      (m) => m.name === "chatbus_oldest_in_flight_seconds",
    );
    expect(Number(gauge?.values[0]?.value)).toBeGreaterThanOrEqual(1);
    // The other conversations were not held; the stuck one is held behind event 1.
    for (const id of ids.slice(1)) for (let n = 0; n < 4; n++) expect(effects.get(`${id} ${n}`)).toBe(1);
    expect(effects.has(`${stuckId} 2`)).toBe(false);

    // A request for a partition this instance does not own is left alone.
    const foreign = await requestSkip(rt.schema.pool, {
      subscription: group,
      topic,
      partition: 99,
      offset: "0",
      requestedBy: "ops-bob",
    });
    const skip = await requestSkip(rt.schema.pool, {
      subscription: group,
      topic,
      partition: target.partition,
      offset: target.offset,
      requestedBy: "ops-ana",
    });
    await waitFor(
      async () => (await getSkip(rt.schema.pool, skip.id))?.appliedAt != null,
      30_000,
      "the skip applied",
    );
    const applied = (await getSkip(rt.schema.pool, skip.id))!;
    expect(applied.appliedBy).toBe(runtime.instanceId);
    const letters = (await listDeadLetters(rt.schema.pool, { subscription: group, limit: 10 })).items;
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({
      id: applied.deadLetterId,
      failureClass: "operator",
      errorCode: "CHATBUS_OPERATOR_SKIP",
      partition: target.partition,
      offset: target.offset,
      conversationId: stuckId,
    });
    expect(letters[0]!.errorMessage).toContain("ops-ana");
    expect(letters[0]!.errorMessage).toContain(skip.requestedAt.toISOString());

    await waitFor(() => effects.get(`${stuckId} 3`) === 1, 30_000, "the rest of the stuck conversation");
    const failuresAtSkip = failures;
    await new Promise((r) => setTimeout(r, 1000));
    expect(failures).toBe(failuresAtSkip); // no retry after the skip
    for (const id of ids) {
      for (let n = 0; n < 4; n++) {
        if (id === stuckId && n === 1) expect(effects.has(`${id} ${n}`)).toBe(false);
        else expect(effects.get(`${id} ${n}`), `${id} ${n}`).toBe(1);
      }
    }
    await waitFor(async () => ((await published())?.stuck?.length ?? -1) === 0, 10_000, "stuck to clear");
    expect((await getSkip(rt.schema.pool, foreign.id))!.appliedAt).toBeNull();
    expect(runtime.state().deadLettered).toBe(1);
  });
});
