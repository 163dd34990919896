/**
 * Topic retention on the real broker, read back with DescribeConfigs: the chat topic
 * is created keeping records forever (`retention.ms=-1`), the dead-letter topic with
 * a long, configurable retention; an existing chat topic that deletes records gives
 * exactly one warning line at start, and `/readyz` reports it under `details`.
 */

import { ensureTopic, topicRetentionMs } from "@chatbus/producer-sdk";
import { waitForPartitionLeaders } from "@chatbus/producer-sdk/internal";
import { type Admin, ConfigResourceTypes, Kafka, logLevel } from "kafkajs";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { retentionDetail } from "../api/src/topic-retention.ts";
import { type Harness, operatorKey, startHarness } from "../api/test/harness.ts";
import {
  deadLetterRetentionMs,
  ensureDeadLetterTopic,
} from "../consumer-runtime/src/dead-letters/dead-letter-topic.ts";
import { kafkaBrokers } from "./support/env.ts";
import { uniqueName } from "./support/isolation.ts";

let admin: Admin;
const created: string[] = [];

/** `retention.ms` as DescribeConfigs reports it, read here independently of the code under test. */
async function describedRetention(topic: string): Promise<string | undefined> {
  const { resources } = await admin.describeConfigs({
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ["retention.ms"] }],
    includeSynonyms: false,
  });
  return resources[0]?.configEntries.find((e) => e.configName === "retention.ms")?.configValue;
}

/** A pino logger that keeps every line it writes. */
function capturingLogger(): { logger: pino.Logger; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { logger, lines };
}

beforeAll(async () => {
  admin = new Kafka({
    clientId: "retention-test",
    brokers: kafkaBrokers(),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
});

afterAll(async () => {
  await admin.deleteTopics({ topics: created }).catch(() => {});
  await admin.disconnect();
  vi.unstubAllEnvs();
});

describe("the chat topic", () => {
  it("is created with retention.ms=-1 and gives no warning", async () => {
    const topic = uniqueName("retention_new");
    created.push(topic);
    const { logger, lines } = capturingLogger();
    expect(await ensureTopic(admin, { topic, partitions: 2, logger })).toBe("created");
    expect(await describedRetention(topic)).toBe("-1");
    expect(await topicRetentionMs(admin, topic)).toBe(-1);
    expect(await ensureTopic(admin, { topic, partitions: 2, logger })).toBe("exists");
    expect(lines.filter((l) => l.level >= 40)).toEqual([]);
  });

  it("when it exists with a finite retention, says so in one warning line and leaves it", async () => {
    const topic = uniqueName("retention_finite");
    created.push(topic);
    await admin.createTopics({
      waitForLeaders: false,
      topics: [{ topic, numPartitions: 2, configEntries: [{ name: "retention.ms", value: "604800000" }] }],
    });
    await waitForPartitionLeaders(admin, topic, 2, 30_000);
    const { logger, lines } = capturingLogger();
    expect(await ensureTopic(admin, { topic, partitions: 2, logger })).toBe("exists");
    const warnings = lines.filter((l) => l.level >= 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.msg).toContain(
      `topic "${topic}" deletes records after retention.ms=604800000 (7 days)`,
    );
    expect(warnings[0]!.msg).toContain("--add-config retention.ms=-1");
    expect(await describedRetention(topic)).toBe("604800000");

    // Without a logger the line goes to stderr, once.
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    try {
      await ensureTopic(admin, { topic, partitions: 2 });
      expect(warn).toHaveBeenCalledTimes(1);
      expect(String(warn.mock.calls[0]![0])).toMatch(
        /^chatbus: topic .* deletes records after retention\.ms=604800000/,
      );
    } finally {
      warn.mockRestore();
    }
  });
});

describe("the dead-letter topic", () => {
  it("is created with 365 days by default and with CHATBUS_DLQ_RETENTION_MS when set", async () => {
    const byDefault = uniqueName("retention_dlq");
    const configured = uniqueName("retention_dlq_cfg");
    created.push(byDefault, configured);
    await ensureDeadLetterTopic(admin, "no-such-source", byDefault);
    expect(await describedRetention(byDefault)).toBe(String(365 * 86_400_000));
    vi.stubEnv("CHATBUS_DLQ_RETENTION_MS", String(90 * 86_400_000));
    await ensureDeadLetterTopic(admin, "no-such-source", configured);
    expect(await describedRetention(configured)).toBe(String(90 * 86_400_000));
    vi.unstubAllEnvs();
  });

  it("refuses a retention that is not milliseconds of at least an hour, naming the variable", () => {
    for (const bad of ["1d", "-5", "59999", "1e12", "9".repeat(30)]) {
      expect(() => deadLetterRetentionMs({ CHATBUS_DLQ_RETENTION_MS: bad })).toThrow(
        /CHATBUS_DLQ_RETENTION_MS/,
      );
    }
    expect(deadLetterRetentionMs({ CHATBUS_DLQ_RETENTION_MS: "-1" })).toBe(-1);
    expect(deadLetterRetentionMs({})).toBe(365 * 86_400_000);
  });
});

describe("/readyz", () => {
  // Details name internal state: only the operator key sees them.
  const operator = { authorization: `Bearer ${operatorKey}` };
  let h: Harness;
  afterAll(async () => {
    await h?.close();
  });

  it("reports the chat topic's retention under details, without failing readiness", async () => {
    let topic = "";
    h = await startHarness("retention_api", {}, 1, {
      readinessDetails: {
        topicRetention: async () => retentionDetail(topic, await topicRetentionMs(admin, topic)),
      },
    });
    topic = h.topic;
    await admin.alterConfigs({
      validateOnly: false,
      resources: [
        {
          type: ConfigResourceTypes.TOPIC,
          name: topic,
          configEntries: [{ name: "retention.ms", value: "86400000" }],
        },
      ],
    });
    const finite = await h.app.inject({ method: "GET", url: "/readyz", headers: operator });
    expect(finite.statusCode).toBe(200);
    expect(finite.json().details.topicRetention).toMatchObject({
      topic,
      retentionMs: 86_400_000,
      keepsForever: false,
    });
    expect(finite.json().details.topicRetention.warning).toContain("retention.ms=86400000 (1 day)");

    await admin.alterConfigs({
      validateOnly: false,
      resources: [
        {
          type: ConfigResourceTypes.TOPIC,
          name: topic,
          configEntries: [{ name: "retention.ms", value: "-1" }],
        },
      ],
    });
    const anonymous = await h.app.inject({ method: "GET", url: "/readyz" });
    expect(anonymous.json().details).toBeUndefined();
    const forever = await h.app.inject({ method: "GET", url: "/readyz", headers: operator });
    expect(forever.json().details.topicRetention).toEqual({
      topic,
      retentionMs: -1,
      keepsForever: true,
      warning: null,
    });
  });
});
