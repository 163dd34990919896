/**
 * `chatbus_materialiser_record_wait_seconds` shows where a record's time goes before
 * the materialiser's write (issue 12): one observation per applied partition batch,
 * the oldest record's Kafka timestamp → the start of its handling. Against the real
 * broker and database.
 */

import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { uuidv7 } from "@chatbus/producer-sdk";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { produceWorkload, type WorkloadEvent, waitUntilApplied } from "./materialiser-support.ts";

let db: TestSchema;
beforeAll(async () => {
  db = await createTestSchema("mat_wait");
});
afterAll(async () => {
  await db?.cleanup();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const ev = (conversationId: string, input: WorkloadEvent["input"]): WorkloadEvent => ({
  conversationId,
  input,
  id: uuidv7(),
  time: new Date(),
});

describe("chatbus_materialiser_record_wait_seconds", () => {
  it("observes each applied batch, from the record's Kafka timestamp, before its write", async () => {
    const topic = await createTestTopic("mat_wait", 1);
    const registry = new Registry();
    const materialiser = await startMaterialiser({
      pool: db.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-wait"),
      registry,
    });
    try {
      await produceWorkload(topic, [
        ev("w", {
          type: "chat.conversation.created",
          kind: "direct",
          createdBy: "ana",
          members: ["ana", "bob"],
        }),
      ]);
      await waitUntilApplied(db.pool, topic, 60_000);
      await produceWorkload(topic, [
        ev("w", { type: "chat.message.sent", senderId: "ana", content: { type: "text", text: "hi" } }),
      ]);
      await waitUntilApplied(db.pool, topic, 60_000);
      await sleep(100);
      // A histogram's values carry their series name (_bucket, _sum, _count).
      const values = (await registry.getSingleMetric("chatbus_materialiser_record_wait_seconds")?.get())
        ?.values as { value: number; metricName?: string }[] | undefined;
      const count = values?.find((v) => v.metricName?.endsWith("_count"))?.value ?? 0;
      const sum = values?.find((v) => v.metricName?.endsWith("_sum"))?.value ?? 0;
      expect(count).toBeGreaterThanOrEqual(2);
      // Times from the Kafka timestamp: positive, and not an epoch (ms vs s mix-ups).
      expect(sum).toBeGreaterThan(0);
      expect(sum).toBeLessThan(60);
    } finally {
      await materialiser.stop();
    }
  });
});
