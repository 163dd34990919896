/**
 * The idempotent producer behind a bus: what the bus needs of a Kafka client
 * (`ProducerConnection`), the kafkajs one, and choosing the backend
 * (`openProducerConnection`; the @platformatic/kafka one is in platformatic-connection.ts).
 * The kafkajs connection connects once (concurrent callers share the attempt), sends
 * a batch with acks=all, and replaces the producer after a failure.
 */
import { type Kafka, Partitioners, type Producer } from "kafkajs";
import { timedOut, toChatBusError, within } from "./kafka-client.ts";
import type { ResolvedOptions } from "./options.ts";
import { PlatformaticConnection } from "./platformatic-connection.ts";

/** One record as the bus hands it to a backend: the partition is the SDK's choice. */
export interface OutgoingRecord {
  key: string;
  value: Buffer;
  headers: Record<string, string>;
  partition: number;
}

/** What the bus needs of a Kafka producer, whichever client runs it. */
export interface ProducerConnection {
  /**
   * Sends one batch to the topic, idempotently with acks=all, to the partitions the
   * records name; resolves with each partition's base offset. Rejects with the
   * client's own error (the batcher maps it with `toChatBusError`).
   */
  produce(records: OutgoingRecord[]): Promise<Map<number, string>>;
  /** After a failure: a fresh producer (new producer id) takes over; the old one closes in the background. */
  reset(): void;
  /** Closes the current producer (errors ignored: we are closing). */
  disconnect(): Promise<void>;
}

/**
 * A connected producer of the backend `options.producer` names. Throws a
 * ChatBusError when Kafka cannot be reached in time, and a ValidationError when the
 * backend's package is not installed.
 */
export function openProducerConnection(kafka: Kafka, options: ResolvedOptions): Promise<ProducerConnection> {
  return options.producer === "platformatic"
    ? PlatformaticConnection.open(options)
    : KafkajsConnection.open(kafka, options);
}

/** One kafkajs producer at a time; a failed one is swapped for a fresh one. */
export class KafkajsConnection implements ProducerConnection {
  readonly #kafka: Kafka;
  readonly #options: ResolvedOptions;
  #producer: Producer;
  #connecting: Promise<void> | undefined;
  #connected = false;

  private constructor(kafka: Kafka, options: ResolvedOptions) {
    this.#kafka = kafka;
    this.#options = options;
    this.#producer = this.#newProducer();
  }

  /** A connected producer; throws a ChatBusError when Kafka cannot be reached in time. */
  static async open(kafka: Kafka, options: ResolvedOptions): Promise<KafkajsConnection> {
    const connection = new KafkajsConnection(kafka, options);
    await connection.#connect().catch(async (error) => {
      await connection.#producer.disconnect().catch(() => {});
      throw toChatBusError(options, error);
    });
    return connection;
  }

  #newProducer(): Producer {
    return this.#kafka.producer({
      idempotent: true,
      // kafkajs allows only one in-flight request per broker with idempotence.
      maxInFlightRequests: 1,
      createPartitioner: Partitioners.DefaultPartitioner,
      allowAutoTopicCreation: false,
    });
  }

  #connect(): Promise<void> {
    const current = this.#producer;
    this.#connecting ??= within(
      current.connect(),
      this.#options.sendTimeoutMs,
      timedOut(this.#options, "connecting"),
    ).then(
      () => {
        if (current === this.#producer) this.#connected = true;
      },
      (error) => {
        this.#connecting = undefined;
        throw error;
      },
    );
    return this.#connecting;
  }

  async produce(messages: OutgoingRecord[]): Promise<Map<number, string>> {
    const { topic, sendTimeoutMs } = this.#options;
    // Awaiting only when needed: an extra await would let woken callers run first.
    if (!this.#connected) await this.#connect();
    const results = await this.#producer.send({ topic, acks: -1, timeout: sendTimeoutMs, messages });
    const baseOffsets = new Map<number, string>();
    for (const r of results) {
      if (r.topicName === topic && r.baseOffset !== undefined) baseOffsets.set(r.partition, r.baseOffset);
    }
    return baseOffsets;
  }

  /**
   * After a failure, the producer's sequence numbers may disagree with the broker's
   * (a request may or may not have landed), so a fresh producer (new producer id)
   * takes over; the old one is disconnected in the background.
   */
  reset(): void {
    const old = this.#producer;
    this.#producer = this.#newProducer();
    this.#connecting = undefined;
    this.#connected = false;
    old.disconnect().catch(() => {});
    this.#options.logger?.warn(
      { brokers: this.#options.brokers },
      "chatbus producer: Kafka request failed; using a fresh producer for the next sends",
    );
  }

  async disconnect(): Promise<void> {
    await this.#producer.disconnect().catch(() => {});
  }
}
