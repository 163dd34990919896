/**
 * The producer: `createChatBus` validates, rate-limits, encodes and batches chat
 * events onto the chat topic with an idempotent kafkajs producer (acks=all).
 */
import {
  Kafka,
  logLevel as KafkaLogLevel,
  type LogEntry,
  type Message,
  Partitioners,
  type Producer,
} from "kafkajs";
import type { Logger } from "pino";
import { type EncodedRecord, encodeEvent } from "./codec.ts";
import {
  BrokerUnavailableError,
  BusClosedError,
  ChatBusError,
  ProduceRejectedError,
  RateLimitedError,
  ValidationError,
} from "./errors.ts";
import type { ChatEventInput, ConversationKind, Priority } from "./events.ts";
import { createProducerMetrics } from "./metrics.ts";
import { type ChatBusOptions, type ResolvedOptions, resolveOptions } from "./options.ts";
import { createKeyPartitioner } from "./partitioner.ts";
import { RateLimiter } from "./rate-limiter.ts";
import { RecordBatcher } from "./record-batcher.ts";
import { ensureTopic } from "./topic.ts";

/** Where Kafka stored an event. */
export interface SendResult {
  /** The event's `ce_id` (UUIDv7). */
  eventId: string;
  partition: number;
  /** The record's offset in its partition, as a decimal string (Kafka offsets are 64-bit). */
  offset: string;
}

/** Per-call hints for `send`. */
export interface SendOptions {
  /** The conversation's kind, for its rate limit; remembered for later sends. */
  kind?: ConversationKind;
}

/** One event of `sendMany`. */
export interface SendItem extends SendOptions {
  conversationId: string;
  event: ChatEventInput;
}

/** A connected chat bus. */
export interface ChatBus {
  /** The topic this bus writes to. */
  readonly topic: string;
  /** The partition count the bus checked (and routes by). */
  readonly partitions: number;
  /**
   * Validates, rate-limits and sends one event; resolves once every in-sync replica
   * has it. Rejects with ValidationError, RateLimitedError, BrokerUnavailableError,
   * ProduceRejectedError or BusClosedError.
   */
  send(conversationId: string, event: ChatEventInput, options?: SendOptions): Promise<SendResult>;
  /**
   * Sends many events, results in the same order. Validation and rate limits are
   * checked for all of them first: if one fails, none is sent. After that each
   * event is sent like `send` (an error rejects the whole call, but events in
   * other produce requests may already be stored).
   */
  sendMany(items: SendItem[]): Promise<SendResult[]>;
  /** The partition that holds `conversationId` (the Java client's murmur2 partitioner). */
  partitionOf(conversationId: string): number;
  /** Stops accepting sends, flushes what is pending (each send settles) and disconnects. */
  close(): Promise<void>;
}

/** kafkajs logs through pino: its errors during retries are warnings for us. */
function kafkaLogCreator(logger: Logger | undefined) {
  return () =>
    ({ level, log }: LogEntry) => {
      if (!logger) return;
      const { message, ...extra } = log;
      const entry = { ...extra, component: "kafkajs" };
      if (level <= KafkaLogLevel.WARN) logger.warn(entry, message);
      else if (level === KafkaLogLevel.INFO) logger.debug(entry, message);
      else logger.trace(entry, message);
    };
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = (error as { cause?: unknown }).cause;
  return cause instanceof Error && cause.message !== error.message
    ? `${error.message} (${cause.message})`
    : error.message;
}

/** A Kafka failure as one of our errors: unreachable brokers versus a refusal. */
function toChatBusError(options: ResolvedOptions, error: unknown): ChatBusError {
  if (error instanceof ChatBusError) return error;
  // kafkajs wraps a refusal it will not retry in KafkaJSNonRetriableError; judge the cause.
  const cause = (error as { cause?: unknown })?.cause;
  const root =
    (error as { name?: string })?.name === "KafkaJSNonRetriableError" && cause instanceof Error
      ? cause
      : error;
  const name = (root as { name?: string })?.name ?? "";
  if (name === "KafkaJSProtocolError" && (root as { retriable?: boolean }).retriable === false) {
    return new ProduceRejectedError(options.topic, describe(root), error);
  }
  return new BrokerUnavailableError(options.brokers, describe(error), error);
}

/** Rejects with `onTimeout()` when `promise` takes longer than `ms`. */
function within<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(onTimeout()), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Kafka client settings that keep every step inside `sendTimeoutMs`. */
function kafkaClient(options: ResolvedOptions): Kafka {
  const budget = options.sendTimeoutMs;
  return new Kafka({
    clientId: options.clientId,
    brokers: options.brokers,
    connectionTimeout: Math.min(3000, Math.max(100, Math.floor(budget / 4))),
    requestTimeout: Math.max(1000, budget),
    retry: { initialRetryTime: 100, maxRetryTime: Math.min(2000, budget), retries: 8 },
    logLevel: options.logger ? KafkaLogLevel.INFO : KafkaLogLevel.NOTHING,
    logCreator: kafkaLogCreator(options.logger),
  });
}

/**
 * Connects to Kafka, makes sure the topic exists with the expected partition count,
 * and returns a bus. Options fall back to `KAFKA_BROKERS`, `CHATBUS_TOPIC` and
 * `CHATBUS_PARTITIONS`. Throws ValidationError (bad options), TopicMismatchError or
 * BrokerUnavailableError.
 */
export async function createChatBus(options: ChatBusOptions = {}): Promise<ChatBus> {
  const resolved = resolveOptions(options);
  const { topic, partitions, sendTimeoutMs, brokers } = resolved;
  const logger = resolved.logger;
  const metrics = createProducerMetrics(resolved.registry);
  const kafka = kafkaClient(resolved);
  const unavailable = (what: string) => () =>
    new BrokerUnavailableError(brokers, `${what} did not finish within ${sendTimeoutMs} ms`);

  if (resolved.ensureTopic) {
    const admin = kafka.admin();
    try {
      await within(admin.connect(), sendTimeoutMs, unavailable("connecting"));
      await within(
        ensureTopic(admin, {
          topic,
          partitions,
          replicationFactor: resolved.replicationFactor,
          logger,
          timeoutMs: sendTimeoutMs * 2,
        }),
        sendTimeoutMs * 2 + 1000,
        unavailable(`checking topic "${topic}"`),
      );
    } catch (error) {
      throw toChatBusError(resolved, error);
    } finally {
      await admin.disconnect().catch(() => {});
    }
  }

  const newProducer = () =>
    kafka.producer({
      idempotent: true,
      // kafkajs allows only one in-flight request per broker with idempotence.
      maxInFlightRequests: 1,
      createPartitioner: Partitioners.DefaultPartitioner,
      allowAutoTopicCreation: false,
    });
  let producer: Producer = newProducer();
  let connecting: Promise<void> | undefined;
  let connected = false;
  const connect = () => {
    const current = producer;
    connecting ??= within(current.connect(), sendTimeoutMs, unavailable("connecting")).then(
      () => {
        if (current === producer) connected = true;
      },
      (error) => {
        connecting = undefined;
        throw error;
      },
    );
    return connecting;
  };
  await connect().catch(async (error) => {
    await producer.disconnect().catch(() => {});
    throw toChatBusError(resolved, error);
  });

  /**
   * After a failure, the producer's sequence numbers may disagree with the broker's
   * (a request may or may not have landed), so a fresh producer (new producer id)
   * takes over; the old one is disconnected in the background.
   */
  const resetProducer = () => {
    const old = producer;
    producer = newProducer();
    connecting = undefined;
    connected = false;
    old.disconnect().catch(() => {});
    logger?.warn(
      { brokers },
      "chatbus producer: Kafka request failed; using a fresh producer for the next sends",
    );
  };

  const batcher = new RecordBatcher<Message>({
    lingerMs: resolved.lingerMs,
    maxBatchSize: resolved.maxBatchSize,
    maxBatchBytes: resolved.maxBatchBytes,
    timeoutMs: sendTimeoutMs,
    produce: async (batch) => {
      // Awaiting only when needed: an extra await would let woken callers run first.
      if (!connected) await connect();
      const results = await producer.send({
        topic,
        acks: -1,
        timeout: sendTimeoutMs,
        messages: batch.map((r) => r.message),
      });
      const baseOffsets = new Map<number, string>();
      for (const r of results) {
        if (r.topicName === topic && r.baseOffset !== undefined) baseOffsets.set(r.partition, r.baseOffset);
      }
      return baseOffsets;
    },
    timeoutError: (sent) =>
      new BrokerUnavailableError(
        brokers,
        sent
          ? `no acknowledgement within ${sendTimeoutMs} ms (the event may or may not be stored; a retry with the same clientMsgId is safe)`
          : `the event waited ${sendTimeoutMs} ms without being sent (it was not stored)`,
      ),
    failureError: (error) => toChatBusError(resolved, error),
    onFailure: resetProducer,
  });

  const partitionOf = createKeyPartitioner(partitions);
  const maxConversations = resolved.rateLimit.maxConversations;
  const limiter = resolved.rateLimit.enabled ? new RateLimiter(resolved.rateLimit) : undefined;
  /** Kinds learnt from hints and from conversation.created events, least recently used first. */
  const kinds = new Map<string, ConversationKind>();
  const learnKind = (conversationId: string, kind: ConversationKind) => {
    kinds.delete(conversationId);
    kinds.set(conversationId, kind);
    if (kinds.size > maxConversations) kinds.delete(kinds.keys().next().value!);
  };
  const kindOf = (conversationId: string): ConversationKind =>
    kinds.get(conversationId) ?? resolved.conversationKind?.(conversationId) ?? "direct";

  let closed: Promise<void> | undefined;
  const encodeOptions = { source: resolved.source };

  interface Prepared {
    record: EncodedRecord;
    eventId: string;
    type: string;
    partition: number;
    conversationId: string;
    rateLimited: boolean;
    /** Key, value and header bytes, counted against `maxBatchBytes`. */
    bytes: number;
  }

  /** Validates and encodes; records the conversation kind; nothing is sent yet. */
  const prepare = (
    conversationId: string,
    event: ChatEventInput,
    hint: SendOptions | undefined,
    fieldPrefix?: string,
  ): Prepared => {
    const { record, event: encoded } = encodeEvent(
      conversationId,
      event,
      fieldPrefix === undefined ? encodeOptions : { source: resolved.source, fieldPrefix },
    );
    let bytes = record.key.length + record.value.length;
    for (const name in record.headers) bytes += name.length + record.headers[name]!.length;
    if (bytes > resolved.maxBatchBytes) {
      // Kafka would refuse it (message.max.bytes): say so before anything is sent.
      const field = fieldPrefix ?? "(event)";
      throw new ValidationError(
        field,
        "maxBytes",
        `\`${field}\` is ${bytes} bytes as a Kafka record, over the ${resolved.maxBatchBytes}-byte limit (maxBatchBytes, under the broker's message.max.bytes); send large payloads by reference.`,
      );
    }
    if (hint?.kind === "direct" || hint?.kind === "group") learnKind(conversationId, hint.kind);
    if (encoded.type === "chat.conversation.created") learnKind(conversationId, encoded.data.kind);
    return {
      record,
      eventId: encoded.id,
      type: encoded.type,
      partition: partitionOf(conversationId),
      conversationId,
      rateLimited: encoded.type === "chat.message.sent",
      bytes,
    };
  };

  const admit = (prepared: Prepared, event: ChatEventInput): void => {
    if (!limiter || !prepared.rateLimited) return;
    const priority: Priority = (event as { priority?: Priority }).priority ?? "normal";
    const decision = limiter.take(prepared.conversationId, kindOf(prepared.conversationId), priority);
    if (!decision.allowed)
      throw new RateLimitedError(prepared.conversationId, decision.retryAfterMs, priority);
  };

  const enqueue = (prepared: Prepared, startedAt: number): Promise<SendResult> =>
    new Promise<SendResult>((resolve, reject) => {
      const { record } = prepared;
      batcher.add({
        message: {
          key: record.key,
          value: record.value,
          headers: record.headers,
          partition: prepared.partition,
        },
        partition: prepared.partition,
        bytes: prepared.bytes,
        resolve: (offset) => {
          metrics.produced(prepared.type);
          metrics.sendDuration((performance.now() - startedAt) / 1000);
          resolve({ eventId: prepared.eventId, partition: prepared.partition, offset });
        },
        reject: (error) => {
          metrics.failed((error as ChatBusError).code ?? "CHATBUS_UNKNOWN");
          reject(error);
        },
      });
    });

  const failed = (error: unknown): Promise<never> => {
    metrics.failed((error as ChatBusError).code ?? "CHATBUS_UNKNOWN");
    return Promise.reject(error);
  };

  return {
    topic,
    partitions,
    partitionOf,
    send(conversationId, event, sendOptions) {
      const startedAt = performance.now();
      if (closed) return failed(new BusClosedError());
      let prepared: Prepared;
      try {
        prepared = prepare(conversationId, event, sendOptions);
        admit(prepared, event);
      } catch (error) {
        return failed(error);
      }
      return enqueue(prepared, startedAt);
    },
    sendMany(items) {
      const startedAt = performance.now();
      if (closed) return failed(new BusClosedError());
      if (!Array.isArray(items))
        return failed(new TypeError("sendMany expects an array of { conversationId, event }."));
      const prepared: Prepared[] = [];
      try {
        for (const [i, item] of items.entries()) {
          prepared.push(prepare(item?.conversationId, item?.event, item, `items[${i}]`));
        }
      } catch (error) {
        return failed(error);
      }
      const admitted: Prepared[] = [];
      try {
        prepared.forEach((p, i) => {
          admit(p, items[i]!.event);
          if (p.rateLimited) admitted.push(p);
        });
      } catch (error) {
        // All or nothing: give back the tokens the admitted ones took.
        if (limiter) for (const p of admitted) limiter.refund(p.conversationId);
        return failed(error);
      }
      const results = prepared.map((p) => enqueue(p, startedAt));
      batcher.flush();
      return Promise.all(results);
    },
    close() {
      closed ??= (async () => {
        await batcher.drained();
        await producer.disconnect().catch(() => {});
      })();
      return closed;
    },
  };
}
