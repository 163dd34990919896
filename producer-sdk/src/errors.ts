/**
 * The producer SDK's error catalogue. Every error has a stable `code`, says whether
 * retrying can help (`retryable`) and reads as a sentence a person can act on.
 *
 * Every error the SDK throws is one of the classes below, and each class has one
 * code from `producerErrorCodes`, so `switch (error.code)` over the SDK's errors is
 * checked by the compiler. Packages built on the SDK extend `ChatBusError` with their
 * own code union (`ChatBusError<TheirCode>`), so callers still catch one base.
 */

/** Every code of the SDK's errors. */
export const producerErrorCodes = [
  "CHATBUS_VALIDATION",
  "CHATBUS_RATE_LIMITED",
  "CHATBUS_BROKER_UNAVAILABLE",
  "CHATBUS_CLOSED",
  "CHATBUS_TOPIC_MISMATCH",
  "CHATBUS_PRODUCE_REJECTED",
] as const;

/** A code of the SDK's errors. */
export type ProducerErrorCode = (typeof producerErrorCodes)[number];

/** Base of every error the SDK throws; `Code` is the union of its subclass's codes. */
export class ChatBusError<Code extends string = string> extends Error {
  /** Stable, prefixed code, e.g. `CHATBUS_VALIDATION`. */
  readonly code: Code;
  /** True when the same call may succeed later unchanged. */
  readonly retryable: boolean;

  constructor(code: Code, message: string, options: { retryable: boolean; cause?: unknown }) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable;
  }
}

/** An error of the producer SDK itself (every class below). */
export type ProducerError =
  | ValidationError
  | RateLimitedError
  | BrokerUnavailableError
  | BusClosedError
  | TopicMismatchError
  | ProduceRejectedError;

/** The input broke the event contract or an options schema; nothing was sent. */
export class ValidationError extends ChatBusError<"CHATBUS_VALIDATION"> {
  /** Dotted path of the offending field, e.g. `content.text` (empty for the whole value). */
  readonly field: string;
  /** The rule it broke, e.g. `minLength`, `required`, `type`. */
  readonly rule: string;

  constructor(field: string, rule: string, message: string) {
    super("CHATBUS_VALIDATION", message, { retryable: false });
    this.field = field;
    this.rule = rule;
  }
}

/** The conversation is over its rate limit; retry after `retryAfterMs`. */
export class RateLimitedError extends ChatBusError<"CHATBUS_RATE_LIMITED"> {
  readonly conversationId: string;
  /** Milliseconds until a token is available for this priority. */
  readonly retryAfterMs: number;

  constructor(conversationId: string, retryAfterMs: number, priority: string) {
    super(
      "CHATBUS_RATE_LIMITED",
      `conversation "${conversationId}" is over its rate limit for ${priority}-priority messages; retry after ${retryAfterMs} ms.`,
      { retryable: true },
    );
    this.conversationId = conversationId;
    this.retryAfterMs = retryAfterMs;
  }
}

/** No broker acknowledged the record in time; the event may or may not be stored. */
export class BrokerUnavailableError extends ChatBusError<"CHATBUS_BROKER_UNAVAILABLE"> {
  /** The bootstrap brokers that were tried. */
  readonly brokers: string[];

  constructor(brokers: string[], detail: string, cause?: unknown) {
    super(
      "CHATBUS_BROKER_UNAVAILABLE",
      `Kafka at ${brokers.join(",")} is unreachable or did not acknowledge: ${detail}. Check that the brokers run and that KAFKA_BROKERS names them.`,
      { retryable: true, cause },
    );
    this.brokers = brokers;
  }
}

/** The bus was closed; create a new one to send again. */
export class BusClosedError extends ChatBusError<"CHATBUS_CLOSED"> {
  constructor() {
    super("CHATBUS_CLOSED", "this chat bus is closed; create a new one with createChatBus() to send again.", {
      retryable: false,
    });
  }
}

/** The topic exists with a shape chatbus cannot use (e.g. a different partition count). */
export class TopicMismatchError extends ChatBusError<"CHATBUS_TOPIC_MISMATCH"> {
  constructor(message: string) {
    super("CHATBUS_TOPIC_MISMATCH", message, { retryable: false });
  }
}

/** Kafka answered but refused the records (e.g. too large, topic deleted); retrying unchanged will not help. */
export class ProduceRejectedError extends ChatBusError<"CHATBUS_PRODUCE_REJECTED"> {
  constructor(topic: string, detail: string, cause?: unknown) {
    super(
      "CHATBUS_PRODUCE_REJECTED",
      `Kafka refused the event for topic "${topic}": ${detail}. Check the topic exists and the event is under the broker's message.max.bytes.`,
      { retryable: false, cause },
    );
  }
}

/**
 * One line describing any thrown value, for logs and for the message of an error that
 * wraps another: `CODE: message` (`Name: message` when there is no string code, as
 * for kafkajs errors, whose `code` is a number), followed by the cause's message when
 * it says something more (kafkajs puts the reason of a KafkaJSNonRetriableError in
 * its cause). Every package describes errors with this one function.
 */
export function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as { code?: unknown }).code;
  const line = `${typeof code === "string" ? code : error.name}: ${error.message}`;
  const cause = error.cause;
  return cause instanceof Error && cause.message !== error.message ? `${line} (${cause.message})` : line;
}
