/**
 * The producer against the real broker: keyed order read back with kcat, no partial
 * effects for bad input, close() with sends in flight, topic provisioning, rate
 * limits and metrics.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { ConfigResourceTypes, Kafka, logLevel } from "kafkajs";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import { createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { type ChatBus, createChatBus } from "../src/chat-bus.ts";
import { decodeRecord } from "../src/codec.ts";
import {
  BusClosedError,
  ProduceRejectedError,
  RateLimitedError,
  TopicMismatchError,
  ValidationError,
} from "../src/errors.ts";
import type { ChatEventInput } from "../src/events.ts";
import { validEvents } from "./samples.ts";

const run = promisify(execFile);
const uuidv7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const admin = new Kafka({
  clientId: "producer-sdk-test",
  brokers: kafkaBrokers(),
  logLevel: logLevel.NOTHING,
}).admin();

interface KcatRecord {
  partition: number;
  offset: number;
  key: string;
  payload: string;
  headers: string[];
}

/** Reads a whole topic with kcat (JSON envelope: partition, offset, key, headers, payload). */
async function readWithKcat(topic: string): Promise<KcatRecord[]> {
  const { stdout } = await run(
    "kcat",
    ["-C", "-b", kafkaBrokers().join(","), "-t", topic, "-o", "beginning", "-e", "-q", "-J"],
    { maxBuffer: 256 * 1024 * 1024 },
  );
  return stdout
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as KcatRecord);
}

async function endOffsets(topic: string): Promise<string[]> {
  const offsets = await admin.fetchTopicOffsets(topic);
  return offsets.sort((a, b) => a.partition - b.partition).map((o) => o.high);
}

const message = (text: string, extra: Partial<ChatEventInput> = {}): ChatEventInput =>
  ({
    type: "chat.message.sent",
    senderId: "ana",
    content: { type: "text", text },
    ...extra,
  }) as ChatEventInput;

beforeAll(async () => {
  await admin.connect();
});
afterAll(async () => {
  await admin.disconnect();
});

describe("keyed order", () => {
  let bus: ChatBus;
  let topic: string;
  beforeAll(async () => {
    topic = await createTestTopic("sdk_order");
    bus = await createChatBus({ brokers: kafkaBrokers(), topic, rateLimit: { enabled: false } });
  });
  afterAll(() => bus.close());

  it("keeps each conversation in one partition, in send order, with CloudEvents headers", async () => {
    const conversations = Array.from({ length: 150 }, (_, i) => `order-${i}`);
    const perConversation = 20;
    const sends: {
      conversationId: string;
      seq: number;
      result: Promise<{ eventId: string; partition: number; offset: string }>;
    }[] = [];
    // Interleaved and concurrent: nothing awaits until every send has been issued.
    for (let seq = 0; seq < perConversation; seq++) {
      for (const conversationId of conversations) {
        sends.push({
          conversationId,
          seq,
          result: bus.send(conversationId, message(`message ${seq}`, { clientMsgId: `seq-${seq}` })),
        });
      }
    }
    const results = await Promise.all(sends.map((s) => s.result));
    expect(results).toHaveLength(conversations.length * perConversation);

    const records = await readWithKcat(topic);
    expect(records).toHaveLength(results.length);
    const byPosition = new Map(records.map((r) => [`${r.partition}:${r.offset}`, r]));

    // What send() reported is where the record really is.
    results.forEach((result, i) => {
      const record = byPosition.get(`${result.partition}:${result.offset}`);
      expect(record, `send ${i}`).toBeDefined();
      const headers = Object.fromEntries(
        Array.from({ length: record!.headers.length / 2 }, (_, h) => [
          record!.headers[2 * h],
          record!.headers[2 * h + 1],
        ]),
      );
      expect(headers.ce_id).toBe(result.eventId);
      expect(record!.key).toBe(sends[i]!.conversationId);
    });

    for (const conversationId of conversations) {
      const mine = records.filter((r) => r.key === conversationId);
      expect(new Set(mine.map((r) => r.partition)).size, conversationId).toBe(1);
      expect(mine[0]!.partition).toBe(bus.partitionOf(conversationId));
      mine.sort((a, b) => a.offset - b.offset);
      const seqs = mine.map((r) => (JSON.parse(r.payload) as { clientMsgId: string }).clientMsgId);
      expect(seqs).toEqual(Array.from({ length: perConversation }, (_, s) => `seq-${s}`));
    }

    const ids = new Set<string>();
    for (const record of records) {
      const headers = Object.fromEntries(
        Array.from({ length: record.headers.length / 2 }, (_, h) => [
          record.headers[2 * h],
          record.headers[2 * h + 1],
        ]),
      );
      expect(headers).toMatchObject({
        ce_specversion: "1.0",
        ce_type: "chat.message.sent",
        ce_source: "/chatbus/chatbus-producer",
        "content-type": "application/json",
      });
      expect(headers.ce_id).toMatch(uuidv7);
      ids.add(headers.ce_id!);
      expect(Number.isNaN(Date.parse(headers.ce_time!))).toBe(false);
      const decoded = decodeRecord({ key: record.key, value: record.payload, headers });
      expect(decoded.ok).toBe(true);
    }
    expect(ids.size).toBe(records.length);
  });
});

describe("sendMany", () => {
  it("sends many events, results in order, each conversation's offsets consecutive", async () => {
    const topic = await createTestTopic("sdk_many");
    const bus = await createChatBus({ brokers: kafkaBrokers(), topic, rateLimit: { enabled: false } });
    try {
      const items = Array.from({ length: 300 }, (_, i) => ({
        conversationId: `many-${i % 7}`,
        event: message(`m${i}`, { clientMsgId: `m${i}` }),
      }));
      const results = await bus.sendMany(items);
      expect(results).toHaveLength(300);
      for (let c = 0; c < 7; c++) {
        const mine = results.filter((_, i) => i % 7 === c);
        expect(new Set(mine.map((r) => r.partition))).toEqual(new Set([bus.partitionOf(`many-${c}`)]));
      }
      const records = await readWithKcat(topic);
      const byPosition = new Map(records.map((r) => [`${r.partition}:${r.offset}`, r]));
      results.forEach((result, i) => {
        const record = byPosition.get(`${result.partition}:${result.offset}`)!;
        expect((JSON.parse(record.payload) as { clientMsgId: string }).clientMsgId).toBe(`m${i}`);
      });
    } finally {
      await bus.close();
    }
  });
});

describe("bad input", () => {
  let bus: ChatBus;
  let topic: string;
  beforeAll(async () => {
    topic = await createTestTopic("sdk_bad_input");
    bus = await createChatBus({ brokers: kafkaBrokers(), topic });
  });
  afterAll(() => bus.close());

  it("rejects every invalid event with a ValidationError naming the field, and the topic does not move", async () => {
    const before = await endOffsets(topic);
    const bad: [unknown, string][] = [
      [{ type: "chat.message.sent", content: { type: "text", text: "x" } }, "senderId"],
      [{ type: "chat.message.sent", senderId: "ana" }, "content"],
      [{ type: "chat.message.sent", senderId: "ana", content: { type: "text" } }, "content.text"],
      [{ type: "chat.message.sent", senderId: 7, content: { type: "text", text: "x" } }, "senderId"],
      [{ ...validEvents["chat.message.sent"], priority: "urgent" }, "priority"],
      [{ type: "chat.conversation.created", kind: "direct", createdBy: "ana" }, "members"],
      [{ ...validEvents["chat.receipt.read"], upToSeq: "3" }, "upToSeq"],
      [{ type: "chat.nope" }, "type"],
    ];
    for (const [event, field] of bad) {
      const error = await bus.send("conv-bad", event as ChatEventInput).catch((e: unknown) => e);
      expect(error, field).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).field).toBe(field);
    }
    const badId = await bus.send("has space", validEvents["chat.member.left"]).catch((e: unknown) => e);
    expect((badId as ValidationError).field).toBe("conversationId");
    // One bad item stops the whole sendMany: no partial effects.
    const many = await bus
      .sendMany([
        { conversationId: "conv-a", event: message("fine") },
        { conversationId: "conv-b", event: message("") },
      ])
      .catch((e: unknown) => e);
    expect((many as ValidationError).field).toBe("items[1].content.text");
    // Not an array at all (a JavaScript caller): a ValidationError naming `items` too.
    const notArray = await bus.sendMany("conv-a" as never).catch((e: unknown) => e);
    expect(notArray).toBeInstanceOf(ValidationError);
    expect((notArray as ValidationError).field).toBe("items");
    // An event over the record size limit is refused before it is sent.
    const huge = await bus
      .send("conv-big", {
        type: "chat.message.sent",
        senderId: "ana",
        content: { type: "custom", customType: "blob", data: { bytes: "x".repeat(1_000_000) } },
      })
      .catch((e: unknown) => e);
    expect(huge).toBeInstanceOf(ValidationError);
    expect((huge as ValidationError).rule).toBe("maxBytes");
    // Give a wrongly sent record time to show up before comparing.
    await new Promise((r) => setTimeout(r, 300));
    expect(await endOffsets(topic)).toEqual(before);

    // The check can fail: a valid send moves the end offset of its partition.
    const sent = await bus.send("conv-a", message("fine"));
    const after = await endOffsets(topic);
    expect(after[sent.partition]).toBe(String(Number(before[sent.partition]) + 1));
  });
});

describe("Kafka refusals", () => {
  it("reports a record the broker refuses as ProduceRejectedError, and the bus goes on", async () => {
    const topic = await createTestTopic("sdk_refused", 3);
    const admin2 = new Kafka({
      clientId: "producer-sdk-test",
      brokers: kafkaBrokers(),
      logLevel: logLevel.NOTHING,
    }).admin();
    await admin2.connect();
    // A topic whose records may be at most 1 kB: a 2 kB event is refused by the broker.
    await admin2.alterConfigs({
      validateOnly: false,
      resources: [
        {
          type: ConfigResourceTypes.TOPIC,
          name: topic,
          configEntries: [{ name: "max.message.bytes", value: "1000" }],
        },
      ],
    });
    await admin2.disconnect();
    const bus = await createChatBus({ brokers: kafkaBrokers(), topic, partitions: 3 });
    try {
      const error = await bus.send("conv-r", message("y".repeat(2000))).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ProduceRejectedError);
      expect((error as ProduceRejectedError).retryable).toBe(false);
      await expect(bus.send("conv-r", message("small"))).resolves.toHaveProperty("offset", "0");
    } finally {
      await bus.close();
    }
  });
});

describe("close()", () => {
  it("settles every send in flight, and refuses sends afterwards", async () => {
    const topic = await createTestTopic("sdk_close");
    const bus = await createChatBus({ brokers: kafkaBrokers(), topic, rateLimit: { enabled: false } });
    const sends = Array.from({ length: 3000 }, (_, i) => bus.send(`close-${i % 50}`, message(`m${i}`)));
    const closing = bus.close();
    const settled = await Promise.race([
      Promise.allSettled(sends),
      new Promise<"hung">((resolve) => setTimeout(() => resolve("hung"), 30_000)),
    ]);
    expect(settled).not.toBe("hung");
    await closing;
    const fulfilled = (settled as PromiseSettledResult<unknown>[]).filter((s) => s.status === "fulfilled");
    // Sends made before close() are flushed, not dropped.
    expect(fulfilled).toHaveLength(sends.length);
    const total = (await endOffsets(topic)).reduce((sum, o) => sum + Number(o), 0);
    expect(total).toBe(sends.length);
    await expect(bus.send("close-1", message("late"))).rejects.toBeInstanceOf(BusClosedError);
    await expect(bus.close()).resolves.toBeUndefined();
  });
});

describe("topic provisioning", () => {
  it("creates a missing topic with the configured partitions", async () => {
    const topic = uniqueName("sdk_provision");
    const bus = await createChatBus({ brokers: kafkaBrokers(), topic, partitions: 6, replicationFactor: 1 });
    await bus.close();
    const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
    expect(metadata.topics[0]!.partitions).toHaveLength(6);
    // A second bus accepts the existing topic.
    await (await createChatBus({ brokers: kafkaBrokers(), topic, partitions: 6 })).close();
  });

  it("refuses a topic with another partition count, naming both counts", async () => {
    const topic = await createTestTopic("sdk_mismatch", 3);
    const error = await createChatBus({ brokers: kafkaBrokers(), topic, partitions: 12 }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(TopicMismatchError);
    expect((error as Error).message).toContain("has 3 partitions");
    expect((error as Error).message).toContain("expects 12");
  });
});

describe("rate limits and metrics", () => {
  let bus: ChatBus;
  const registry = new Registry();
  beforeAll(async () => {
    const topic = await createTestTopic("sdk_rate");
    bus = await createChatBus({ brokers: kafkaBrokers(), topic, registry });
  });
  afterAll(() => bus.close());

  it("limits a direct conversation to 10 per second; high passes; low is shed first", async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => bus.send("rl-direct", message(`${i}`))),
    );
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(10);
    const rejected = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    expect(rejected.reason).toBeInstanceOf(RateLimitedError);
    expect(rejected.reason.retryAfterMs).toBeGreaterThan(0);
    expect(rejected.reason.retryAfterMs).toBeLessThanOrEqual(100);
    await expect(bus.send("rl-direct", message("urgent", { priority: "high" }))).resolves.toHaveProperty(
      "offset",
    );
    // Low priority is shed while the bucket still has room for normal messages.
    const low = await Promise.allSettled(
      Array.from({ length: 10 }, (_, i) => bus.send("rl-low", message(`${i}`, { priority: "low" }))),
    );
    expect(low.filter((r) => r.status === "fulfilled")).toHaveLength(5);
    await expect(bus.send("rl-low", message("normal"))).resolves.toHaveProperty("offset");
  });

  it("learns a group conversation from its created event (40 per second)", async () => {
    await bus.send("rl-group", { ...validEvents["chat.conversation.created"], kind: "group" });
    const results = await Promise.allSettled(
      Array.from({ length: 45 }, (_, i) => bus.send("rl-group", message(`${i}`))),
    );
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(40);
    const hinted = await Promise.allSettled(
      Array.from({ length: 45 }, (_, i) => bus.send("rl-hinted", message(`${i}`), { kind: "group" })),
    );
    expect(hinted.filter((r) => r.status === "fulfilled")).toHaveLength(40);
  });

  it("counts produced events, errors and send durations", async () => {
    const text = await registry.metrics();
    expect(text).toMatch(/chatbus_events_produced_total\{type="chat.message.sent"\} (\d+)/);
    const produced = Number(/chatbus_events_produced_total\{type="chat.message.sent"\} (\d+)/.exec(text)![1]);
    expect(produced).toBe(10 + 1 + 5 + 1 + 40 + 40);
    expect(text).toMatch(/chatbus_producer_errors_total\{code="CHATBUS_RATE_LIMITED"\} 17/);
    expect(text).toMatch(/chatbus_send_duration_seconds_count \d+/);
  });
});
