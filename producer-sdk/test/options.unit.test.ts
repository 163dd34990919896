import { describe, expect, it } from "vitest";
import { ValidationError } from "../src/errors.ts";
import { type ChatBusOptions, resolveOptions } from "../src/options.ts";

function fieldOf(options: unknown, env: NodeJS.ProcessEnv = {}): string {
  try {
    resolveOptions(options as ChatBusOptions, env);
  } catch (error) {
    expect(error).toBeInstanceOf(ValidationError);
    return (error as ValidationError).field;
  }
  throw new Error("expected a ValidationError");
}

describe("createChatBus options", () => {
  it("uses the defaults without options or environment", () => {
    const resolved = resolveOptions({}, {});
    expect(resolved).toMatchObject({
      brokers: ["127.0.0.1:9092"],
      topic: "chat.events",
      partitions: 12,
      lingerMs: 2,
      sendTimeoutMs: 10_000,
      source: "/chatbus/chatbus-producer",
      rateLimit: { enabled: true, directPerSecond: 10, groupPerSecond: 40 },
    });
  });

  it("reads KAFKA_BROKERS, CHATBUS_TOPIC and CHATBUS_PARTITIONS", () => {
    const resolved = resolveOptions(
      {},
      { KAFKA_BROKERS: "k1:9092, k2:9092", CHATBUS_TOPIC: "chat.test", CHATBUS_PARTITIONS: "6" },
    );
    expect(resolved.brokers).toEqual(["k1:9092", "k2:9092"]);
    expect(resolved.topic).toBe("chat.test");
    expect(resolved.partitions).toBe(6);
  });

  it("prefers options over the environment", () => {
    const resolved = resolveOptions({ topic: "t", partitions: 3, brokers: ["b:1"] }, { CHATBUS_TOPIC: "x" });
    expect(resolved).toMatchObject({ topic: "t", partitions: 3, brokers: ["b:1"] });
  });

  it("produces with kafkajs unless the producer option or CHATBUS_PRODUCER names another client", () => {
    expect(resolveOptions({}, {}).producer).toBe("kafkajs");
    expect(resolveOptions({}, { CHATBUS_PRODUCER: "platformatic" }).producer).toBe("platformatic");
    expect(resolveOptions({ producer: "kafkajs" }, { CHATBUS_PRODUCER: "platformatic" }).producer).toBe(
      "kafkajs",
    );
    expect(fieldOf({ producer: "rdkafka" })).toBe("options.producer");
    expect(fieldOf({}, { CHATBUS_PRODUCER: "rdkafka" })).toBe("CHATBUS_PRODUCER");
  });

  it("merges partial rate-limit options with the defaults", () => {
    expect(resolveOptions({ rateLimit: { groupPerSecond: 100 } }, {}).rateLimit).toMatchObject({
      directPerSecond: 10,
      groupPerSecond: 100,
    });
  });

  it("rejects unknown keys and bad values, naming the option", () => {
    expect(fieldOf({ lingerMS: 5 })).toBe("options.lingerMS");
    expect(fieldOf({ partitions: 0 })).toBe("options.partitions");
    expect(fieldOf({ brokers: "127.0.0.1:9092" })).toBe("options.brokers");
    expect(fieldOf({ rateLimit: { directPerSecond: -1 } })).toBe("options.rateLimit.directPerSecond");
    expect(fieldOf({ rateLimit: { burst: 2 } })).toBe("options.rateLimit.burst");
    expect(fieldOf({ conversationKind: "group" })).toBe("options.conversationKind");
    expect(fieldOf({}, { CHATBUS_PARTITIONS: "twelve" })).toBe("CHATBUS_PARTITIONS");
    expect(fieldOf(null)).toBe("options");
  });
});
