/**
 * The failover test's duplicate counters can see a duplicate: a record written twice
 * with the same `ce_id` (as a producer retry without idempotence would) is counted
 * in the log read back from the shared broker.
 */
import { Kafka, logLevel } from "kafkajs";
import { describe, expect, it } from "vitest";
import { kafkaBrokers } from "../support/env.ts";
import { createTestTopic } from "../support/isolation.ts";
import { countDuplicates, readWholeTopic, tally } from "./log-duplicates.ts";

describe("counting duplicates in the log", () => {
  it("reads every record back and finds the one stored twice", async () => {
    const topic = await createTestTopic("log_dup", 3);
    const producer = new Kafka({
      clientId: "log-dup",
      brokers: kafkaBrokers(),
      logLevel: logLevel.NOTHING,
    }).producer();
    await producer.connect();
    const record = (id: string) => ({
      key: `conv-${id}`,
      value: "{}",
      headers: { ce_id: id, ce_type: "chat.message.sent" },
    });
    await producer.send({ topic, messages: Array.from({ length: 30 }, (_, i) => record(`e${i}`)) });
    await producer.send({ topic, messages: [record("e7")] }); // the duplicate
    await producer.disconnect();

    const records = await readWholeTopic(kafkaBrokers(), topic);
    expect(records).toHaveLength(31);
    const counted = countDuplicates(tally(records.map((r) => r.ceId ?? "(none)")));
    expect(counted).toMatchObject({
      distinct: 30,
      total: 31,
      duplicated: 1,
      extra: 1,
      examples: [["e7", 2]],
    });
  });
});
