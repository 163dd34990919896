/**
 * The producer: `createChatBus` validates, rate-limits, encodes and batches chat
 * events onto the chat topic with an idempotent producer (acks=all): kafkajs, or
 * @platformatic/kafka when the `producer` option asks for it.
 *
 * The pieces, each with one reason to change: `kafka-client.ts` (the kafkajs client,
 * error mapping, topic provisioning), `producer-connection.ts` (connecting and
 * replacing the producer, choosing the backend; `platformatic-connection.ts`), `event-admission.ts` (validation, size, partition, rate
 * limit), `record-batcher.ts` (batching and per-send timeouts). This file composes
 * them and holds the send and close paths.
 */
import { BrokerUnavailableError, BusClosedError, type ChatBusError, ValidationError } from "./errors.ts";
import { EventAdmission, type Prepared } from "./event-admission.ts";
import type { ChatEventInput, ConversationKind } from "./events.ts";
import { kafkaClient, provisionTopic, toChatBusError } from "./kafka-client.ts";
import { createProducerMetrics, type ProducerMetrics } from "./metrics.ts";
import { type ChatBusOptions, type ResolvedOptions, resolveOptions } from "./options.ts";
import {
  type OutgoingRecord,
  openProducerConnection,
  type ProducerConnection,
} from "./producer-connection.ts";
import { type PendingRecord, RecordBatcher } from "./record-batcher.ts";

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

/** The batcher that turns sends into produce requests on `connection`. */
function createBatcher(
  options: ResolvedOptions,
  connection: ProducerConnection,
): RecordBatcher<OutgoingRecord> {
  const { brokers, sendTimeoutMs } = options;
  return new RecordBatcher<OutgoingRecord>({
    lingerMs: options.lingerMs,
    maxBatchSize: options.maxBatchSize,
    maxBatchBytes: options.maxBatchBytes,
    timeoutMs: sendTimeoutMs,
    produce: (batch) => connection.produce(batch.map((r) => r.message)),
    timeoutError: (sent) =>
      new BrokerUnavailableError(
        brokers,
        sent
          ? `no acknowledgement within ${sendTimeoutMs} ms (the event may or may not be stored; a retry with the same clientMsgId is safe)`
          : `the event waited ${sendTimeoutMs} ms without being sent (it was not stored)`,
      ),
    failureError: (error) => toChatBusError(options, error),
    onFailure: () => connection.reset(),
  });
}

/**
 * One send waiting in the batcher: the batcher's record and the caller's promise in
 * one object. A class rather than a literal with arrow functions: this runs once per
 * event, and its methods are shared instead of allocating (and naming) two closures
 * per send; `addedAt` and `settled` are declared so the batcher's writes keep its shape.
 */
class PendingSend implements PendingRecord<OutgoingRecord> {
  readonly message: OutgoingRecord;
  readonly partition: number;
  readonly bytes: number;
  addedAt = 0;
  settled = false;
  readonly #prepared: Prepared;
  readonly #metrics: ProducerMetrics;
  readonly #startedAt: number;
  readonly #resolve: (result: SendResult) => void;
  readonly #reject: (error: unknown) => void;

  constructor(
    prepared: Prepared,
    metrics: ProducerMetrics,
    startedAt: number,
    resolve: (result: SendResult) => void,
    reject: (error: unknown) => void,
  ) {
    const { record, partition } = prepared;
    this.message = { key: record.key, value: record.value, headers: record.headers, partition };
    this.partition = partition;
    this.bytes = prepared.bytes;
    this.#prepared = prepared;
    this.#metrics = metrics;
    this.#startedAt = startedAt;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  resolve(offset: string): void {
    const prepared = this.#prepared;
    this.#metrics.produced(prepared.type);
    this.#metrics.sendDuration((performance.now() - this.#startedAt) / 1000);
    this.#resolve({ eventId: prepared.eventId, partition: prepared.partition, offset });
  }

  reject(error: Error): void {
    this.#metrics.failed((error as ChatBusError).code ?? "CHATBUS_UNKNOWN");
    this.#reject(error);
  }
}

/** Hands a prepared event to the batcher; settles with its offset or its error, counted. */
function enqueue(
  batcher: RecordBatcher<OutgoingRecord>,
  metrics: ProducerMetrics,
  prepared: Prepared,
  startedAt: number,
): Promise<SendResult> {
  return new Promise<SendResult>((resolve, reject) =>
    batcher.add(new PendingSend(prepared, metrics, startedAt, resolve, reject)),
  );
}

/**
 * Connects to Kafka, makes sure the topic exists with the expected partition count,
 * and returns a bus. Options fall back to `KAFKA_BROKERS`, `CHATBUS_TOPIC` and
 * `CHATBUS_PARTITIONS`. Throws ValidationError (bad options), TopicMismatchError or
 * BrokerUnavailableError.
 */
export async function createChatBus(options: ChatBusOptions = {}): Promise<ChatBus> {
  const resolved = resolveOptions(options);
  const metrics = createProducerMetrics(resolved.registry);
  const kafka = kafkaClient(resolved);
  await provisionTopic(kafka, resolved);
  const connection = await openProducerConnection(kafka, resolved);
  const batcher = createBatcher(resolved, connection);
  const admission = new EventAdmission(resolved);
  let closed: Promise<void> | undefined;

  const failed = (error: unknown): Promise<never> => {
    metrics.failed((error as ChatBusError).code ?? "CHATBUS_UNKNOWN");
    return Promise.reject(error);
  };

  return {
    topic: resolved.topic,
    partitions: resolved.partitions,
    partitionOf: admission.partitionOf,
    send(conversationId, event, sendOptions) {
      const startedAt = performance.now();
      if (closed) return failed(new BusClosedError());
      let prepared: Prepared;
      try {
        prepared = admission.prepare(conversationId, event, sendOptions);
        admission.admit(prepared, event);
      } catch (error) {
        return failed(error);
      }
      return enqueue(batcher, metrics, prepared, startedAt);
    },
    sendMany(items) {
      const startedAt = performance.now();
      if (closed) return failed(new BusClosedError());
      if (!Array.isArray(items))
        return failed(
          new ValidationError("items", "type", "sendMany expects an array of { conversationId, event }."),
        );
      const prepared: Prepared[] = [];
      try {
        // entries(), not map(): a hole in a sparse array is an invalid item, not a skipped one.
        for (const [i, item] of items.entries()) {
          prepared.push(admission.prepare(item?.conversationId, item?.event, item, `items[${i}]`));
        }
        // All or nothing: a refusal gives back the tokens the earlier ones took.
        admission.admitAll(
          prepared,
          prepared.map((_, i) => items[i]!.event),
        );
      } catch (error) {
        return failed(error);
      }
      const results = prepared.map((p) => enqueue(batcher, metrics, p, startedAt));
      batcher.flush();
      return Promise.all(results);
    },
    close() {
      closed ??= (async () => {
        await batcher.drained();
        await connection.disconnect();
      })();
      return closed;
    },
  };
}
