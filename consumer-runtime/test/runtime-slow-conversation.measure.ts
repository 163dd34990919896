/**
 * Issue 17 item 2, measured: does one slow conversation (5 s per event) hold the
 * others? Two runs against the real broker, each producing live traffic for
 * `PRODUCE_MS`: 50 free conversations at ~200 events/s in total, plus (second run
 * only) one conversation whose handler takes 5 s per event, one event a second.
 * Prints, per run, the free events handled by the end of the window and their
 * end-to-end latency (produce → handled), then the throughput ratio (with / without).
 *
 * Not part of the test suite (a measurement, not a check; the machine is shared):
 *   npx tsx --conditions=@chatbus/source consumer-runtime/test/runtime-slow-conversation.measure.ts
 */
import { encodeEvent } from "@chatbus/producer-sdk";
import { kafkaBrokers } from "../../test/support/env.ts";
import { createTestSchema, createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { createRuntime } from "../src/index.ts";
import { connectProducer, quietLogger } from "./runtime-support.ts";

const PRODUCE_MS = Number(process.env.PRODUCE_MS ?? 10_000);
const GRACE_MS = 2_000;
const FREE = 50;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface RunResult {
  produced: number;
  handled: number;
  p50: number;
  p95: number;
}

async function run(withSlow: boolean): Promise<RunResult> {
  const schema = await createTestSchema("measure");
  const topic = await createTestTopic("measure", 6);
  const producedAt = new Map<string, number>();
  const latencies: number[] = [];
  const runtime = createRuntime({
    group: uniqueName("measure"),
    topic,
    brokers: kafkaBrokers(),
    pool: schema.pool,
    logger: quietLogger(),
  });
  runtime.on("chat.message.sent", async (event) => {
    if (event.conversationId === "slow") {
      await sleep(5000);
      return;
    }
    const at = producedAt.get(event.id);
    if (at !== undefined) latencies.push(Date.now() - at);
  });
  await runtime.start();
  const producer = await connectProducer();
  const started = Date.now();
  let produced = 0;
  let tick = 0;
  while (Date.now() - started < PRODUCE_MS) {
    const records = [];
    for (let i = 0; i < 10; i++) {
      const conversation = `free-${(tick * 10 + i) % FREE}`;
      const { record, event } = encodeEvent(
        conversation,
        { type: "chat.message.sent", senderId: "m", content: { type: "text", text: `n:${tick}` } },
        { source: "/measure" },
      );
      producedAt.set(event.id, Date.now());
      records.push(record);
      produced++;
    }
    if (withSlow && tick % 20 === 0) {
      const { record } = encodeEvent(
        "slow",
        { type: "chat.message.sent", senderId: "m", content: { type: "text", text: `n:${tick}` } },
        { source: "/measure" },
      );
      records.push(record);
    }
    await producer.send({ topic, acks: -1, messages: records });
    tick++;
    await sleep(50);
  }
  await sleep(GRACE_MS);
  const handled = latencies.length;
  await producer.disconnect();
  await runtime.stop();
  await schema.cleanup();
  const sorted = [...latencies].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
  return { produced, handled, p50: at(0.5), p95: at(0.95) };
}

const without = await run(false);
console.log("without the slow conversation:", without);
const withSlow = await run(true);
console.log("with one 5 s conversation:   ", withSlow);
const share = (r: RunResult) => r.handled / r.produced;
console.log(
  `throughput ratio (share of produced free events handled within ${PRODUCE_MS + GRACE_MS} ms, with / without): ${(
    share(withSlow) / share(without)
  ).toFixed(3)}; p50 latency ${without.p50} → ${withSlow.p50} ms, p95 ${without.p95} → ${withSlow.p95} ms`,
);
process.exit(0);
