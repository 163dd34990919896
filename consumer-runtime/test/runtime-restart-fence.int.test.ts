/**
 * Issue 20 item 1, the same-process variant (review R1): the Kafka consumer crashes
 * (its broker is killed) while slow retries run outside any batch call. The runtime
 * restarts the consumer only after those calls are fenced (aborted and awaited), so
 * the new consumer's redelivered events never overlap them. Runs a private broker on
 * a free port pair, never the shared one.
 */
import { rmSync } from "node:fs";
import { createServer } from "node:net";
import { waitForPartitionLeaders } from "@chatbus/producer-sdk/internal";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { brokerDir, killBroker, restartBroker, startKafka, stopKafka } from "../../scripts/kafka.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import type { Runtime } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import {
  connectProducer,
  kafkaClient,
  numberOf,
  orderProblems,
  produceNumbered,
  waitFor,
} from "./runtime-support.ts";

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** A port whose neighbour is free too (the broker's controller listens one above). */
async function freePortPair(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 20_000 + 2 * Math.floor(Math.random() * 10_000);
    if ((await portFree(port)) && (await portFree(port + 1))) return port;
  }
  throw new Error("no free port pair found");
}

let port = 0;
let runtime: Runtime | undefined;
let startedBroker = false;

beforeAll(async () => {
  port = await freePortPair();
  startedBroker = (await startKafka(port)).started;
}, 180_000);

afterAll(async () => {
  if (startedBroker) {
    await stopKafka(port);
    rmSync(brokerDir(port), { recursive: true, force: true });
  }
}, 120_000);

// After the broker's hooks: its afterAll (hooks run as a stack) stops the runtime before the broker goes.
const rt = useRuntimeFixture("rt_restartfence");

interface Call {
  conversation: string;
  n: number;
  start: number;
  end: number | null;
}

describe("fencing at a consumer restart", () => {
  it("does not start the new consumer's work while the crashed consumer's calls still run", async () => {
    const brokers = [`127.0.0.1:${port}`];
    const topic = uniqueName("rt_restartfence");
    const admin = kafkaClient(brokers).admin();
    await admin.connect();
    await admin.createTopics({
      waitForLeaders: false,
      topics: [{ topic, numPartitions: 2, replicationFactor: 1 }],
    });
    await waitForPartitionLeaders(admin, topic, 2, 30_000);
    await admin.disconnect();
    const conversations = 6;
    const perConversation = 4;
    const producer = await connectProducer(brokers);
    const ids = await produceNumbered(producer, topic, conversations, perConversation, "rf");
    await producer.disconnect();

    const registry = new Registry();
    const calls: Call[] = [];
    const effects = new Map<string, number[]>();
    const failedOnce = new Set<string>();
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    let retries = 0;
    runtime = rt.runtime({
      group: uniqueName("restartfence"),
      topic,
      brokers,
      registry,
      kafkaRetries: 2,
      kafkaInitialRetryTimeMs: 100,
      sessionTimeoutMs: 10_000,
      heartbeatIntervalMs: 1000,
      rebalanceTimeoutMs: 120_000,
      handlerTimeoutMs: 120_000,
      systemRetry: { initialDelayMs: 100, maxDelayMs: 200, jitter: 0 },
    });
    runtime.on("chat.message.sent", async (event) => {
      const n = numberOf(event);
      const call: Call = { conversation: event.conversationId, n, start: Date.now(), end: null };
      calls.push(call);
      try {
        if (n === 1 && !failedOnce.has(event.conversationId)) {
          failedOnce.add(event.conversationId);
          throw new Error("dependency unavailable (first attempt of event 1)");
        }
        if (n === 1 && retries++ < conversations) {
          // The slow retries of the first generation: they ignore ctx.signal and last
          // until well after the broker is back and a new consumer could have joined.
          await released;
        }
        effects.set(event.conversationId, [...(effects.get(event.conversationId) ?? []), n]);
      } finally {
        call.end = Date.now();
      }
    });
    await runtime.start();
    await waitFor(() => retries === conversations, 60_000, "every conversation's slow retry to start");

    killBroker(port);
    await waitFor(
      async () =>
        ((await registry.getSingleMetric("chatbus_consumer_restarts_total")?.get())?.values[0]?.value ?? 0) >=
        1,
      60_000,
      "the consumer to crash and be restarted",
    );
    await restartBroker(port);
    // Long enough for a restarted consumer (back-off up to 16 s) to join and redeliver.
    await new Promise((r) => setTimeout(r, 20_000));
    release();
    await waitFor(
      () => ids.every((id) => effects.get(id)?.at(-1) === perConversation - 1),
      120_000,
      "every conversation's last event",
    );

    const overlaps: string[] = [];
    for (const id of ids) {
      const mine = calls.filter((c) => c.conversation === id).sort((x, y) => x.start - y.start);
      for (let i = 1; i < mine.length; i++) {
        if (mine[i]!.start < (mine[i - 1]!.end ?? Number.POSITIVE_INFINITY)) {
          overlaps.push(`${id}: #${mine[i]!.n} started while #${mine[i - 1]!.n} ran`);
        }
      }
    }
    expect(overlaps).toEqual([]);
    expect(orderProblems(effects, perConversation, true)).toEqual([]);
  });
});
