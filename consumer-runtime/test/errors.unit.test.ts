/**
 * The runtime's error catalogue: every code of `runtimeErrorCodes` has its class, each
 * class is a ChatBusError with its name, its code and the `retryable` that
 * docs/consumer-runtime.md documents, and its message as before (people and log
 * searches rely on the wording).
 */
import { ChatBusError } from "@chatbus/producer-sdk";
import { describe, expect, it } from "vitest";
import {
  BusinessError,
  DeadLetterNotFoundError,
  DeadLetterStateError,
  DeadLetterWriteError,
  DependencyUnavailableError,
  type RuntimeError,
  type RuntimeErrorCode,
  RuntimeStateError,
  runtimeErrorCodes,
} from "../src/errors.ts";
import { OffsetGapError } from "../src/materialiser/apply-batch.ts";
import { OffsetMovedError } from "../src/materialiser/projection-writer.ts";
import { RebuildError } from "../src/materialiser/rebuild.ts";
import { BreakerOpenError } from "../src/runtime/circuit-breaker.ts";
import { HandlerTimeoutError } from "../src/runtime/handler-call.ts";

const writeFailure = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), {
  code: "ECONNREFUSED",
});
// Made outside the list: there TypeScript would infer its code from the list's type.
const business = new BusinessError("the account is closed");
const samples: [RuntimeError, RuntimeErrorCode, boolean, string][] = [
  [business, "CHATBUS_BUSINESS", false, "the account is closed"],
  [
    new DeadLetterNotFoundError("42"),
    "CHATBUS_DEAD_LETTER_NOT_FOUND",
    false,
    "dead letter 42 does not exist; list them to find the id.",
  ],
  [
    new DeadLetterStateError("42", "discarded", "replayed"),
    "CHATBUS_DEAD_LETTER_STATE",
    false,
    "dead letter 42 is discarded; only a waiting dead letter can be replayed.",
  ],
  [
    new DeadLetterWriteError("PostgreSQL", new BusinessError("refused", { code: "REFUSED" }), writeFailure),
    "CHATBUS_DEAD_LETTER_WRITE",
    true,
    "writing a dead letter to PostgreSQL failed (ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:5432) while dead-lettering an event that failed with: REFUSED: refused. The runtime retries the write; check PostgreSQL.",
  ],
  [new RuntimeStateError("on() after start()"), "CHATBUS_RUNTIME_STATE", false, "on() after start()"],
  [
    new DependencyUnavailableError("Kafka is not reachable"),
    "CHATBUS_DEPENDENCY_UNAVAILABLE",
    true,
    "Kafka is not reachable",
  ],
  [
    new HandlerTimeoutError(250),
    "CHATBUS_HANDLER_TIMEOUT",
    true,
    "the handler did not finish within 250 ms (handlerTimeoutMs); its ctx.signal was aborted and the event is retried with back-off",
  ],
  [
    new BreakerOpenError('the circuit breaker of subscription "mail" is open'),
    "CHATBUS_BREAKER_OPEN",
    true,
    'the circuit breaker of subscription "mail" is open',
  ],
  [
    new OffsetMovedError("chat.events", 3, "17"),
    "CHATBUS_OFFSET_MOVED",
    true,
    "the stored offset of chat.events/3 is no longer 17: another materialiser applied this partition meanwhile; the batch is retried and skips what it applied.",
  ],
  [
    new OffsetGapError("chat.events", 3, "10", "15"),
    "CHATBUS_OFFSET_GAP",
    true,
    "batch of chat.events/3 starts at offset 15 but the projection's stored offset is 10: records 10..14 were never applied; seeking back to 10.",
  ],
  [
    new RebuildError("the rebuilt projection differs"),
    "CHATBUS_REBUILD_FAILED",
    false,
    "the rebuilt projection differs",
  ],
];

describe("the runtime error catalogue", () => {
  it.each(samples)("%s has its code, retryable and message", (error, code, retryable, message) => {
    expect(error).toBeInstanceOf(ChatBusError);
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe(error.constructor.name);
    expect(error.code).toBe(code);
    expect(error.retryable).toBe(retryable);
    expect(error.message).toBe(message);
  });

  it("has a class for every code of runtimeErrorCodes, each code once", () => {
    expect(samples.map(([error]) => error.code).sort()).toEqual([...runtimeErrorCodes].sort());
  });

  it("keeps a handler's own code on a BusinessError, and the write failure as the cause", () => {
    const refused = new BusinessError("the account is closed", { code: "ACCOUNT_CLOSED" });
    expect(refused.code).toBe("ACCOUNT_CLOSED");
    expect(refused.retryable).toBe(false);
    expect(samples[3]![0].cause).toBe(writeFailure);
  });

  it("narrows on code at compile time", () => {
    // A switch over RuntimeError codes: a class whose code is outside the union would not compile.
    const retryAdvice = (error: RuntimeError): "retry" | "fix" => {
      const code: RuntimeErrorCode = error.code;
      switch (code) {
        case "CHATBUS_DEAD_LETTER_WRITE":
        case "CHATBUS_DEPENDENCY_UNAVAILABLE":
        case "CHATBUS_HANDLER_TIMEOUT":
        case "CHATBUS_BREAKER_OPEN":
        case "CHATBUS_OFFSET_MOVED":
        case "CHATBUS_OFFSET_GAP":
          return "retry";
        case "CHATBUS_BUSINESS":
        case "CHATBUS_DEAD_LETTER_NOT_FOUND":
        case "CHATBUS_DEAD_LETTER_STATE":
        case "CHATBUS_RUNTIME_STATE":
        case "CHATBUS_REBUILD_FAILED":
          return "fix";
      }
    };
    expect(samples.map(([error]) => retryAdvice(error) === "retry")).toEqual(
      samples.map(([e]) => e.retryable),
    );
  });
});
