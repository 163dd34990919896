/**
 * Issue 17: a handler that never returns must not stop the subscription. Real broker
 * and PostgreSQL: a hung call times out (its signal aborts), is retried while its
 * conversation waits, the others go on; a late result is ignored; many timeouts open
 * the breaker, which closes again after the dependency recovers.
 */
import { Writable } from "node:stream";
import { type ChatEvent, encodeEvent } from "@chatbus/producer-sdk";
import { type Logger, pino } from "pino";
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, orderProblems, produceNumbered, waitFor } from "./runtime-support.ts";

const rt = useRuntimeFixture("rt_timeout");

/** A pino logger that keeps every line, so that a test can count log messages. */
function capturingLogger(): { logger: Logger; lines: { msg: string }[] } {
  const lines: { msg: string }[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      for (const line of chunk.toString().split("\n")) if (line) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level: "info" }, stream), lines };
}

async function metricValue(registry: Registry, name: string): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  return (metric?.values ?? []).reduce((sum, v) => sum + Number(v.value), 0);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("handler timeout", () => {
  it("a hung call times out and is retried; the other conversations finish; its conversation continues in order", async () => {
    const topic = await createTestTopic("rt_hung", 2);
    const producer = await connectProducer();
    // Events 0..2 now; 3..9 only once the call hangs, so that the others' later events
    // must be fetched while it hangs (the previous runtime fetched nothing more).
    const ids = await produceNumbered(producer, topic, 8, 3, "hung");
    const hungId = ids[3]!;
    const registry = new Registry();
    const seen = new Map<string, number[]>();
    let hungCalls = 0;
    const runtime = rt.runtime({
      group: uniqueName("hung"),
      topic,
      registry,
      handlerTimeoutMs: 60_000,
      systemRetry: { initialDelayMs: 100, maxDelayMs: 500 },
    });
    runtime.on(
      "chat.message.sent",
      async (event: ChatEvent<"chat.message.sent">) => {
        const n = numberOf(event);
        if (event.conversationId === hungId && n === 2 && ++hungCalls === 1) {
          await new Promise(() => {}); // a forgotten await on a promise that never settles
        }
        seen.set(event.conversationId, [...(seen.get(event.conversationId) ?? []), n]);
      },
      // Long enough that the others must finish while the call still hangs.
      { handlerTimeoutMs: 15_000 },
    );
    await runtime.start();
    await waitFor(() => hungCalls === 1, 30_000, "the call to hang");
    const later = [];
    for (let n = 3; n < 10; n++) {
      for (const id of ids) {
        const text = `n:${n}`;
        later.push(
          encodeEvent(
            id,
            { type: "chat.message.sent", senderId: "tester", content: { type: "text", text } },
            {
              source: "/test",
            },
          ).record,
        );
      }
    }
    await producer.send({ topic, acks: -1, messages: later });
    await producer.disconnect();

    // Every other conversation finishes while the hung call is still within its
    // deadline: none of them waits for it.
    await waitFor(
      () => ids.filter((id) => id !== hungId).every((id) => (seen.get(id)?.length ?? 0) === 10),
      60_000,
      "the seven other conversations to finish",
    );
    expect(hungCalls, "the others finished before the hung call's deadline").toBe(1);
    expect(seen.get(hungId)).toEqual([0, 1]);
    await waitFor(() => (seen.get(hungId)?.length ?? 0) === 10, 60_000, "the hung conversation to finish");
    expect(orderProblems(seen, 10)).toEqual([]);
    expect(hungCalls).toBe(2);
    expect(await metricValue(registry, "chatbus_handler_timeouts_total")).toBe(1);
    expect(runtime.state().processed).toBe(80);
  });

  it("a call that resolves after its deadline has no second effect: the retry's result counts, the late one is ignored and logged once", async () => {
    const topic = await createTestTopic("rt_late", 1);
    const producer = await connectProducer();
    const ids = await produceNumbered(producer, topic, 2, 4, "late");
    await producer.disconnect();
    const lateId = ids[0]!;
    const { logger, lines } = capturingLogger();
    const effects: string[] = [];
    let calls = 0;
    const runtime = rt.runtime({
      group: uniqueName("late"),
      topic,
      logger,
      handlerTimeoutMs: 800,
      systemRetry: { initialDelayMs: 100, maxDelayMs: 200 },
    });
    runtime.on("chat.message.sent", async (event, ctx) => {
      const n = numberOf(event);
      if (event.conversationId === lateId && n === 1 && ++calls === 1) {
        // Slow, and ignores the signal while it waits; an idempotent handler checks it
        // before its effect, as docs/consumer-runtime.md recommends.
        await sleep(2500);
        if (ctx.signal.aborted) return;
      }
      effects.push(`${event.conversationId} ${n}`);
    });
    await runtime.start();
    await waitFor(() => effects.length === 8, 30_000, "every event's effect");
    // Give the late call time to come back.
    await waitFor(
      () => lines.some((l) => /given up \(timeout\) resolved late/.test(l.msg)),
      10_000,
      "the late completion to be logged",
    );
    await sleep(500);
    expect(effects.filter((e) => e === `${lateId} 1`)).toHaveLength(1);
    expect(effects.filter((e) => e.startsWith(lateId))).toEqual(
      ["0", "1", "2", "3"].map((n) => `${lateId} ${n}`),
    );
    expect(lines.filter((l) => /given up \(timeout\) resolved late/.test(l.msg))).toHaveLength(1);
    expect(runtime.state().processed).toBe(8);
  });

  it("many calls timing out at once open the breaker; it closes after the dependency recovers and nothing is lost", async () => {
    const topic = await createTestTopic("rt_hangall", 4);
    const producer = await connectProducer();
    const ids = await produceNumbered(producer, topic, 20, 3, "hangall");
    await producer.disconnect();
    let hanging = true;
    const seen = new Map<string, number[]>();
    const registry = new Registry();
    const runtime = rt.runtime({
      group: uniqueName("hangall"),
      topic,
      registry,
      handlerTimeoutMs: 500,
      systemRetry: { initialDelayMs: 200, maxDelayMs: 1000 },
      breaker: { volumeThreshold: 5, errorThresholdPercentage: 50, resetTimeoutMs: 1500 },
    });
    const states = new Set<string>();
    runtime.on("chat.message.sent", async (event, ctx) => {
      if (hanging) {
        // The dependency hangs for everyone; this one honours its signal.
        await new Promise((_, reject) =>
          ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)),
        );
      }
      seen.set(event.conversationId, [...(seen.get(event.conversationId) ?? []), numberOf(event)]);
    });
    await runtime.start();
    await waitFor(
      () => {
        states.add(runtime.breakerState);
        return runtime.breakerState === "open";
      },
      30_000,
      "the breaker to open",
    );
    expect(seen.size).toBe(0);
    hanging = false;
    await waitFor(() => runtime.breakerState === "closed", 30_000, "the breaker to close after recovery");
    await waitFor(
      () => ids.every((id) => (seen.get(id)?.length ?? 0) === 3),
      60_000,
      "every conversation to finish",
    );
    expect(orderProblems(seen, 3)).toEqual([]);
    expect(await metricValue(registry, "chatbus_handler_timeouts_total")).toBeGreaterThanOrEqual(5);
  });
});
