/**
 * The SDK's error catalogue: every error class is a ChatBusError with its name, one
 * code from `producerErrorCodes`, the documented `retryable`, and its message as
 * before (people and log searches rely on the wording).
 */
import { describe, expect, it } from "vitest";
import {
  BrokerUnavailableError,
  BusClosedError,
  ChatBusError,
  describeError,
  ProduceRejectedError,
  type ProducerError,
  type ProducerErrorCode,
  producerErrorCodes,
  RateLimitedError,
  TopicMismatchError,
  ValidationError,
} from "../src/errors.ts";

const cause = new Error("socket hang up");
const samples: [ProducerError, string, boolean, string][] = [
  [
    new ValidationError("content.text", "minLength", "`content.text` must not be empty."),
    "CHATBUS_VALIDATION",
    false,
    "`content.text` must not be empty.",
  ],
  [
    new RateLimitedError("dm:a:b", 250, "normal"),
    "CHATBUS_RATE_LIMITED",
    true,
    'conversation "dm:a:b" is over its rate limit for normal-priority messages; retry after 250 ms.',
  ],
  [
    new BrokerUnavailableError(["k1:9092", "k2:9092"], "connecting did not finish within 100 ms", cause),
    "CHATBUS_BROKER_UNAVAILABLE",
    true,
    "Kafka at k1:9092,k2:9092 is unreachable or did not acknowledge: connecting did not finish within 100 ms. Check that the brokers run and that KAFKA_BROKERS names them.",
  ],
  [
    new BusClosedError(),
    "CHATBUS_CLOSED",
    false,
    "this chat bus is closed; create a new one with createChatBus() to send again.",
  ],
  [
    new TopicMismatchError("topic has 3 partitions"),
    "CHATBUS_TOPIC_MISMATCH",
    false,
    "topic has 3 partitions",
  ],
  [
    new ProduceRejectedError("chat.events", "MESSAGE_TOO_LARGE", cause),
    "CHATBUS_PRODUCE_REJECTED",
    false,
    'Kafka refused the event for topic "chat.events": MESSAGE_TOO_LARGE. Check the topic exists and the event is under the broker\'s message.max.bytes.',
  ],
];

describe("the producer error catalogue", () => {
  it.each(samples)("%s has its code, retryable and message", (error, code, retryable, message) => {
    expect(error).toBeInstanceOf(ChatBusError);
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe(error.constructor.name);
    expect(error.code).toBe(code);
    expect(error.retryable).toBe(retryable);
    expect(error.message).toBe(message);
  });

  it("uses every code of producerErrorCodes exactly once", () => {
    expect(samples.map(([error]) => error.code).sort()).toEqual([...producerErrorCodes].sort());
  });

  it("keeps the cause of a Kafka failure", () => {
    expect(samples[2]![0].cause).toBe(cause);
  });

  it("narrows on code at compile time", () => {
    // A switch over ProducerError codes: a code outside the union would not compile.
    const retryAdvice = (error: ProducerError): string => {
      const code: ProducerErrorCode = error.code;
      switch (code) {
        case "CHATBUS_RATE_LIMITED":
        case "CHATBUS_BROKER_UNAVAILABLE":
          return "retry";
        case "CHATBUS_VALIDATION":
        case "CHATBUS_CLOSED":
        case "CHATBUS_TOPIC_MISMATCH":
        case "CHATBUS_PRODUCE_REJECTED":
          return "fix";
      }
    };
    expect(samples.map(([error]) => retryAdvice(error) === "retry")).toEqual(
      samples.map(([e]) => e.retryable),
    );
  });
});

describe("describeError", () => {
  it("names an error by its string code, else by its name, and adds a cause that says more", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:9092"), { code: "ECONNREFUSED" });
    const kafka = Object.assign(new Error("Connection error"), { name: "KafkaJSConnectionError", code: 5 });
    const wrapped = new Error("Closed connection", { cause: new Error("socket hang up") });
    const same = new Error("timed out", { cause: new Error("timed out") });
    expect(
      [refused, kafka, wrapped, same, new BusClosedError(), "plain text", undefined].map(describeError),
    ).toEqual([
      "ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:9092",
      "KafkaJSConnectionError: Connection error",
      "Error: Closed connection (socket hang up)",
      "Error: timed out",
      "CHATBUS_CLOSED: this chat bus is closed; create a new one with createChatBus() to send again.",
      "plain text",
      "undefined",
    ]);
  });
});
