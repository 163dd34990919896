/**
 * Both producer backends, named explicitly (the rest of the SDK's suite runs on the
 * one `CHATBUS_PRODUCER` picks, kafkajs unless set): each sends keyed records with
 * the SDK's partition and headers, maps a broker refusal to ProduceRejectedError and
 * an unreachable broker to BrokerUnavailableError in time. @platformatic/kafka's
 * diagnostics channel shows which client really produced, and with what settings.
 */
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { ConfigResourceTypes, Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { linkPlatformatic } from "../../scripts/platformatic-kafka.ts";
import { kafkaBrokers } from "../../test/support/env.ts";
import { createTestTopic } from "../../test/support/isolation.ts";
import { createChatBus } from "../src/chat-bus.ts";
import { decodeRecord } from "../src/codec.ts";
import { BrokerUnavailableError, ProduceRejectedError } from "../src/errors.ts";
import type { ChatEventInput } from "../src/events.ts";
import type { ProducerBackend } from "../src/options.ts";

const kafka = new Kafka({
  clientId: "producer-backends-test",
  brokers: kafkaBrokers(),
  logLevel: logLevel.NOTHING,
});
const message = (text: string): ChatEventInput => ({
  type: "chat.message.sent",
  senderId: "ana",
  content: { type: "text", text },
});

/** What @platformatic/kafka's `send` was asked, from its diagnostics channel. */
interface SendContext {
  operation: string;
  options: { acks?: number; idempotent?: boolean; messages: { partition?: number }[] };
}
const platformaticSends: SendContext[] = [];
const onSendStart = (context: unknown) => {
  platformaticSends.push(context as SendContext);
};
const sendStart = "tracing:plt:kafka:producer:sends:start";

beforeAll(() => {
  linkPlatformatic();
  subscribe(sendStart, onSendStart);
}, 120_000);
afterAll(() => {
  unsubscribe(sendStart, onSendStart);
});

/** Reads every record of `topic` with kafkajs (a client neither backend shares). */
async function readAll(topic: string, count: number) {
  const consumer = kafka.consumer({ groupId: `${topic}-reader` });
  const records: { partition: number; key: string; headers: Record<string, string>; text: string }[] = [];
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const done = new Promise<void>((resolve) => {
    void consumer.run({
      eachMessage: async ({ partition, message: m }) => {
        const decoded = decodeRecord(m);
        if (!decoded.ok) throw new Error(decoded.reason);
        const headers = Object.fromEntries(Object.entries(m.headers ?? {}).map(([k, v]) => [k, String(v)]));
        const data = decoded.event.data as { content: { text: string } };
        records.push({ partition, key: String(m.key), headers, text: data.content.text });
        if (records.length === count) resolve();
      },
    });
  });
  await done;
  await consumer.disconnect();
  return records;
}

describe.each<ProducerBackend>(["kafkajs", "platformatic"])("producer %s", (producer) => {
  it("sends keyed records to the SDK's partition with their headers, in order", async () => {
    const topic = await createTestTopic(`sdk_backend_${producer}`, 6);
    const sendsBefore = platformaticSends.length;
    const bus = await createChatBus({
      brokers: kafkaBrokers(),
      topic,
      partitions: 6,
      producer,
      rateLimit: { enabled: false },
    });
    const conversations = ["c-1", "c-2", "c-3", "c-4"];
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => bus.send(conversations[i % 4]!, message(`m${i}`))),
    ).finally(() => bus.close());

    const records = await readAll(topic, 200);
    for (const [i, result] of results.entries()) {
      expect(result.partition).toBe(bus.partitionOf(conversations[i % 4]!));
    }
    for (const conversation of conversations) {
      const mine = records.filter((r) => r.key === conversation);
      expect(new Set(mine.map((r) => r.partition))).toEqual(new Set([bus.partitionOf(conversation)]));
      const texts = mine.map((r) => Number(r.text.slice(1)));
      expect(texts).toEqual([...texts].sort((a, b) => a - b));
      expect(mine[0]!.headers).toMatchObject({ ce_type: "chat.message.sent", ce_specversion: "1.0" });
    }
    const sends = platformaticSends.slice(sendsBefore);
    if (producer === "kafkajs") {
      expect(sends).toEqual([]);
    } else {
      expect(sends.length).toBeGreaterThan(0);
      for (const send of sends) {
        expect(send.options).toMatchObject({ acks: -1, idempotent: true });
        expect(send.options.messages.every((m) => typeof m.partition === "number")).toBe(true);
      }
    }
  });

  it("reports a refused record as ProduceRejectedError and goes on", async () => {
    const topic = await createTestTopic(`sdk_backend_refused_${producer}`, 3);
    const admin = kafka.admin();
    await admin.connect();
    await admin.alterConfigs({
      validateOnly: false,
      resources: [
        {
          type: ConfigResourceTypes.TOPIC,
          name: topic,
          configEntries: [{ name: "max.message.bytes", value: "1000" }],
        },
      ],
    });
    await admin.disconnect();
    const bus = await createChatBus({ brokers: kafkaBrokers(), topic, partitions: 3, producer });
    try {
      const error = await bus.send("conv-r", message("y".repeat(2000))).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ProduceRejectedError);
      expect((error as ProduceRejectedError).retryable).toBe(false);
      await expect(bus.send("conv-r", message("small"))).resolves.toHaveProperty("offset", "0");
    } finally {
      await bus.close();
    }
  });

  it("fails to open within the send timeout when no broker answers", async () => {
    const started = performance.now();
    const error = await createChatBus({
      brokers: ["127.0.0.1:1"],
      topic: "unreachable",
      ensureTopic: false,
      sendTimeoutMs: 1000,
      producer,
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BrokerUnavailableError);
    expect((error as BrokerUnavailableError).message).toContain("127.0.0.1:1");
    expect(performance.now() - started).toBeLessThan(1000 + 2000);
  });
});
