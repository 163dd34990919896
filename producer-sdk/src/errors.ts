/**
 * The producer SDK's error catalogue. Every error has a stable `code`, says whether
 * retrying can help (`retryable`) and reads as a sentence a person can act on.
 */

/** Base of every error the SDK throws. */
export class ChatBusError extends Error {
  /** Stable, prefixed code, e.g. `CHATBUS_VALIDATION`. */
  readonly code: string;
  /** True when the same call may succeed later unchanged. */
  readonly retryable: boolean;

  constructor(code: string, message: string, options: { retryable: boolean; cause?: unknown }) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable;
  }
}

/** The input broke the event contract or an options schema; nothing was sent. */
export class ValidationError extends ChatBusError {
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
export class RateLimitedError extends ChatBusError {
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
export class BrokerUnavailableError extends ChatBusError {
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
export class BusClosedError extends ChatBusError {
  constructor() {
    super("CHATBUS_CLOSED", "this chat bus is closed; create a new one with createChatBus() to send again.", {
      retryable: false,
    });
  }
}

/** The topic exists with a shape chatbus cannot use (e.g. a different partition count). */
export class TopicMismatchError extends ChatBusError {
  constructor(message: string) {
    super("CHATBUS_TOPIC_MISMATCH", message, { retryable: false });
  }
}

/** Kafka answered but refused the records (e.g. too large, topic deleted); retrying unchanged will not help. */
export class ProduceRejectedError extends ChatBusError {
  constructor(topic: string, detail: string, cause?: unknown) {
    super(
      "CHATBUS_PRODUCE_REJECTED",
      `Kafka refused the event for topic "${topic}": ${detail}. Check the topic exists and the event is under the broker's message.max.bytes.`,
      { retryable: false, cause },
    );
  }
}
