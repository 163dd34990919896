import { describe, expect, it } from "vitest";
import { createKeyPartitioner } from "../src/partitioner.ts";

// Expected partitions computed with the Java client (kafka-clients 3.9.2):
// Utils.toPositive(Utils.murmur2(key.getBytes(UTF_8))) % partitions.
const javaPartitions: [string, number, number][] = [
  ["conv-42", 9, 6],
  ["smoke-1", 3, 1],
  ["a", 4, 5],
  ["group:team-7", 11, 6],
  ["user@example.com", 0, 6],
  ["会话-1", 10, 2],
  ["x".repeat(100), 4, 4],
];

describe("key partitioner", () => {
  it("puts each conversation on the partition Kafka's Java client would", () => {
    const twelve = createKeyPartitioner(12);
    const seven = createKeyPartitioner(7);
    for (const [key, of12, of7] of javaPartitions) {
      expect(twelve(key), key).toBe(of12);
      expect(seven(key), key).toBe(of7);
    }
  });
});

describe("murmur2", () => {
  it("agrees with kafkajs's DefaultPartitioner on many keys", async () => {
    const { Partitioners } = await import("kafkajs");
    const kafkajs = Partitioners.DefaultPartitioner();
    const partitionMetadata = Array.from({ length: 12 }, (_, partitionId) => ({
      partitionId,
      leader: 0,
      replicas: [0],
      isr: [0],
      partitionErrorCode: 0,
    }));
    const ours = createKeyPartitioner(12);
    const keys = Array.from(
      { length: 2000 },
      (_, i) => `conversation-${i.toString(36)}-${"z".repeat(i % 7)}`,
    );
    // Around the 256-unit reused buffer: 3-byte characters that just fit, keys just
    // past it, surrogate pairs and a lone surrogate, and short keys after long ones.
    for (const length of [255, 256, 257, 300]) {
      keys.push(
        "会".repeat(length),
        "x".repeat(length),
        "😀".repeat(length >> 1),
        `${"y".repeat(length)}\uD800`,
        "k",
      );
    }
    for (const key of keys) {
      expect(ours(key), key).toBe(kafkajs({ topic: "t", partitionMetadata, message: { key, value: null } }));
    }
  });
});
