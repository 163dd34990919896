/**
 * The first half of a send, before anything reaches Kafka: validate and encode the
 * event, check its size against `maxBatchBytes`, pick its partition, remember the
 * conversation's kind, and take a rate-limit token for a message.
 */
import type { SendOptions } from "./chat-bus.ts";
import { type EncodedRecord, encodeEvent } from "./codec.ts";
import { RateLimitedError, ValidationError } from "./errors.ts";
import type { ChatEventInput, ConversationKind, Priority } from "./events.ts";
import type { ResolvedOptions } from "./options.ts";
import { createKeyPartitioner } from "./partitioner.ts";
import { RateLimiter } from "./rate-limiter.ts";

/** An encoded event, ready for the batcher. */
export interface Prepared {
  record: EncodedRecord;
  eventId: string;
  type: string;
  partition: number;
  conversationId: string;
  rateLimited: boolean;
  /** Key, value and header bytes, counted against `maxBatchBytes`. */
  bytes: number;
}

/** Kinds learnt from hints and from conversation.created events, least recently used first. */
class ConversationKinds {
  readonly #kinds = new Map<string, ConversationKind>();
  readonly #options: ResolvedOptions;

  constructor(options: ResolvedOptions) {
    this.#options = options;
  }

  learn(conversationId: string, kind: ConversationKind): void {
    this.#kinds.delete(conversationId);
    this.#kinds.set(conversationId, kind);
    if (this.#kinds.size > this.#options.rateLimit.maxConversations) {
      this.#kinds.delete(this.#kinds.keys().next().value!);
    }
  }

  of(conversationId: string): ConversationKind {
    return this.#kinds.get(conversationId) ?? this.#options.conversationKind?.(conversationId) ?? "direct";
  }
}

/** Prepares and admits events for one bus. */
export class EventAdmission {
  /** The partition that holds a conversation (the Java client's murmur2 partitioner). */
  readonly partitionOf: (conversationId: string) => number;
  readonly #options: ResolvedOptions;
  readonly #limiter: RateLimiter | undefined;
  readonly #kinds: ConversationKinds;
  readonly #encodeOptions: { source: string };

  constructor(options: ResolvedOptions) {
    this.#options = options;
    this.partitionOf = createKeyPartitioner(options.partitions);
    this.#limiter = options.rateLimit.enabled ? new RateLimiter(options.rateLimit) : undefined;
    this.#kinds = new ConversationKinds(options);
    this.#encodeOptions = { source: options.source };
  }

  /** Validates and encodes; records the conversation kind; nothing is sent yet. */
  prepare(
    conversationId: string,
    event: ChatEventInput,
    hint: SendOptions | undefined,
    fieldPrefix?: string,
  ): Prepared {
    const { maxBatchBytes, source } = this.#options;
    const { record, event: encoded } = encodeEvent(
      conversationId,
      event,
      fieldPrefix === undefined ? this.#encodeOptions : { source, fieldPrefix },
    );
    let bytes = record.key.length + record.value.length;
    for (const name in record.headers) bytes += name.length + record.headers[name]!.length;
    if (bytes > maxBatchBytes) {
      // Kafka would refuse it (message.max.bytes): say so before anything is sent.
      const field = fieldPrefix ?? "(event)";
      throw new ValidationError(
        field,
        "maxBytes",
        `\`${field}\` is ${bytes} bytes as a Kafka record, over the ${maxBatchBytes}-byte limit (maxBatchBytes, under the broker's message.max.bytes); send large payloads by reference.`,
      );
    }
    if (hint?.kind === "direct" || hint?.kind === "group") this.#kinds.learn(conversationId, hint.kind);
    if (encoded.type === "chat.conversation.created") this.#kinds.learn(conversationId, encoded.data.kind);
    return {
      record,
      eventId: encoded.id,
      type: encoded.type,
      partition: this.partitionOf(conversationId),
      conversationId,
      rateLimited: encoded.type === "chat.message.sent",
      bytes,
    };
  }

  /** Takes a rate-limit token for a message; throws RateLimitedError when there is none. */
  admit(prepared: Prepared, event: ChatEventInput): void {
    if (!this.#limiter || !prepared.rateLimited) return;
    const priority: Priority = (event as { priority?: Priority }).priority ?? "normal";
    const decision = this.#limiter.take(
      prepared.conversationId,
      this.#kinds.of(prepared.conversationId),
      priority,
    );
    if (!decision.allowed)
      throw new RateLimitedError(prepared.conversationId, decision.retryAfterMs, priority);
  }

  /**
   * Admits all of `prepared` or none: when one is refused, the tokens the earlier ones
   * took are given back and the refusal is thrown.
   */
  admitAll(prepared: Prepared[], events: ChatEventInput[]): void {
    const admitted: Prepared[] = [];
    try {
      prepared.forEach((p, i) => {
        this.admit(p, events[i]!);
        if (p.rateLimited) admitted.push(p);
      });
    } catch (error) {
      if (this.#limiter) for (const p of admitted) this.#limiter.refund(p.conversationId);
      throw error;
    }
  }
}
