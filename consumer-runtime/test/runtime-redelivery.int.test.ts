/**
 * Issue 20 items 4 and 7 (review R3, R5), real broker and PostgreSQL:
 * - business-retry attempts survive redelivery: an event that keeps failing reaches
 *   its dead-letter limit even though every attempt is made by a new instance;
 * - stop() does not commit as handled a call that ignored its aborted signal and
 *   returned after the shutdown deadline: the next instance gets the event again.
 */
import { describe, expect, it } from "vitest";
import { createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { listDeadLetters } from "../src/exports/operator.ts";
import { BusinessError } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_redeliver");

describe("redelivery", () => {
  it("counts business-retry attempts across instances: the third attempt dead-letters even on a new instance", async () => {
    const topic = await createTestTopic("rt_attempts", 1);
    const producer = await connectProducer();
    await produceNumbered(producer, topic, 1, 2, "attempts");
    await producer.disconnect();
    const group = uniqueName("attempts");
    let calls = 0;
    const later: number[] = [];
    const make = (name: string) => {
      const runtime = rt.runtime({
        group,
        topic,
        instanceId: name,
        shutdownTimeoutMs: 1000,
      });
      runtime.on(
        "chat.message.sent",
        async (event) => {
          if (numberOf(event) === 0) {
            calls++;
            throw new BusinessError("the account is closed", { code: "ACCOUNT_CLOSED" });
          }
          later.push(numberOf(event));
        },
        // The back-off is far longer than the test: only redelivery brings attempts 2 and 3.
        { businessRetry: { attempts: 3, backoffMs: [600_000] } },
      );
      return runtime;
    };
    for (const [i, name] of ["first", "second", "third"].entries()) {
      const runtime = make(name);
      await runtime.start();
      await waitFor(() => calls === i + 1, 30_000, `attempt ${i + 1} on instance ${name}`);
      if (i < 2) await runtime.stop();
    }
    await waitFor(
      async () =>
        (await listDeadLetters(rt.schema.pool, { subscription: group, limit: 5 })).items.length === 1,
      20_000,
      "the dead letter after the third attempt",
    );
    const letter = (await listDeadLetters(rt.schema.pool, { subscription: group, limit: 5 })).items[0]!;
    expect(letter).toMatchObject({ failureClass: "business", errorCode: "ACCOUNT_CLOSED", attempts: 3 });
    await waitFor(() => later.length === 1, 20_000, "the next event of the conversation");
    expect(calls).toBe(3);
    const { rows } = await rt.schema.pool.query("SELECT count(*)::int AS n FROM business_attempts");
    expect(rows[0].n).toBe(0);
  });

  it("does not commit a call that ignored the abort and returned after the shutdown deadline", async () => {
    const topic = await createTestTopic("rt_stoptruth", 1);
    const producer = await connectProducer();
    await produceNumbered(producer, topic, 1, 3, "stoptruth");
    await producer.disconnect();
    const group = uniqueName("stoptruth");
    const seen: string[] = [];
    let slowStarted = false;
    const make = (name: string, slow: boolean) => {
      const runtime = rt.runtime({
        group,
        topic,
        instanceId: name,
        shutdownTimeoutMs: 300,
      });
      runtime.on("chat.message.sent", async (event) => {
        const n = numberOf(event);
        if (slow && n === 0) {
          slowStarted = true;
          // Ignores ctx.signal and returns after the deadline (300 ms), within the
          // 2 s stop() still waits after aborting.
          await new Promise((r) => setTimeout(r, 1200));
        }
        seen.push(`${name} ${n}`);
      });
      return runtime;
    };
    const first = make("first", true);
    await first.start();
    await waitFor(() => slowStarted, 30_000, "the slow call to start");
    await first.stop();
    expect(seen).toEqual(["first 0"]); // it did return, after the deadline
    const second = make("second", false);
    await second.start();
    await waitFor(() => seen.length === 4, 30_000, "the second instance to handle the three events");
    expect(seen).toEqual(["first 0", "second 0", "second 1", "second 2"]);
  });
});
