/**
 * The optional @platformatic/kafka backend (`producer: "platformatic"`): the same
 * contract as the kafkajs connection (idempotent, acks=all, the SDK's partition, one
 * request in flight, a fresh producer after a failure), on a client that used less CPU
 * per event than kafkajs in some bench/producer runs (docs/benchmarks.md). The package
 * is an optional peer dependency, loaded on first use, so the SDK installs and runs
 * without it.
 */
import { ValidationError } from "./errors.ts";
import { timedOut, toChatBusError, within } from "./kafka-client.ts";
import type { ResolvedOptions } from "./options.ts";
import type { OutgoingRecord, ProducerConnection } from "./producer-connection.ts";

/** The package name (its tested range is in package.json's peerDependencies). */
export const platformaticPackage = "@platformatic/kafka";

/** A record as @platformatic/kafka takes it (`partition` set: its partitioner is skipped). */
interface PlatformaticMessage {
  topic: string;
  key: string;
  value: Buffer;
  headers: Record<string, string>;
  partition: number;
}

/** The parts of a @platformatic/kafka `Producer` the connection uses. */
interface PlatformaticProducer {
  initIdempotentProducer(options: Record<string, never>): Promise<unknown>;
  send(request: {
    messages: PlatformaticMessage[];
  }): Promise<{ offsets?: { topic: string; partition: number; offset: bigint }[] }>;
  close(force?: boolean): Promise<void>;
}

/** The parts of the @platformatic/kafka module the connection uses. */
interface PlatformaticModule {
  Producer: new (options: Record<string, unknown>) => PlatformaticProducer;
  stringSerializer: (data?: string) => Buffer | undefined;
}

let loading: Promise<PlatformaticModule> | undefined;

/** Imports @platformatic/kafka once; a ValidationError saying how to install it when it is missing. */
function loadPlatformatic(): Promise<PlatformaticModule> {
  // A variable specifier: TypeScript must not need the package to compile the SDK.
  const specifier: string = platformaticPackage;
  loading ??= (import(specifier) as Promise<PlatformaticModule>).catch((error: unknown) => {
    loading = undefined;
    throw new ValidationError(
      "producer",
      "dependency",
      `the "platformatic" producer needs the optional package ${platformaticPackage}, which could not be loaded (${(error as Error)?.message}); install it next to @chatbus/producer-sdk (npm install ${platformaticPackage}@1.35) or use producer "kafkajs".`,
    );
  });
  return loading;
}

/** One @platformatic/kafka producer at a time; a failed one is swapped for a fresh one. */
export class PlatformaticConnection implements ProducerConnection {
  readonly #kafka: PlatformaticModule;
  readonly #options: ResolvedOptions;
  #producer: PlatformaticProducer;

  private constructor(kafka: PlatformaticModule, options: ResolvedOptions) {
    this.#kafka = kafka;
    this.#options = options;
    this.#producer = this.#newProducer();
  }

  /**
   * A producer that already has its producer id, so an unreachable Kafka fails here
   * (within `sendTimeoutMs`) as it does on kafkajs, not at the first send.
   */
  static async open(options: ResolvedOptions): Promise<PlatformaticConnection> {
    const connection = new PlatformaticConnection(await loadPlatformatic(), options);
    try {
      await within(
        connection.#producer.initIdempotentProducer({}),
        options.sendTimeoutMs,
        timedOut(options, "connecting"),
      );
    } catch (error) {
      await connection.#producer.close(true).catch(() => {});
      throw toChatBusError(options, error);
    }
    return connection;
  }

  #newProducer(): PlatformaticProducer {
    const { sendTimeoutMs: budget, brokers, clientId } = this.#options;
    const { Producer, stringSerializer } = this.#kafka;
    return new Producer({
      clientId,
      bootstrapBrokers: brokers,
      // Idempotence makes the client use acks=all and one request in flight per broker.
      idempotent: true,
      acks: -1,
      autocreateTopics: false,
      // The same budget as the kafkajs client: every step fits inside sendTimeoutMs,
      // and the batcher abandons (and resets) a request that runs past it anyway.
      connectTimeout: Math.min(3000, Math.max(100, Math.floor(budget / 4))),
      timeout: Math.max(1000, budget),
      requestTimeout: Math.max(1000, budget),
      retries: 8,
      retryDelay: Math.min(250, budget),
      // Keys and header values are strings; values are already Buffers (no serializer).
      serializers: { key: stringSerializer, headerKey: stringSerializer, headerValue: stringSerializer },
    });
  }

  async produce(records: OutgoingRecord[]): Promise<Map<number, string>> {
    const { topic } = this.#options;
    const messages = new Array<PlatformaticMessage>(records.length);
    for (let i = 0; i < records.length; i++) {
      const { key, value, headers, partition } = records[i]!;
      messages[i] = { topic, key, value, headers, partition };
    }
    const result = await this.#producer.send({ messages });
    const baseOffsets = new Map<number, string>();
    for (const r of result.offsets ?? []) {
      if (r.topic === topic) baseOffsets.set(r.partition, r.offset.toString());
    }
    return baseOffsets;
  }

  /**
   * After a failure the producer's sequence numbers may disagree with the broker's (a
   * request may or may not have landed), so a fresh producer (new producer id) takes
   * over; the old one is closed in the background, which also ends its retries.
   */
  reset(): void {
    const old = this.#producer;
    this.#producer = this.#newProducer();
    old.close(true).catch(() => {});
    this.#options.logger?.warn(
      { brokers: this.#options.brokers, producer: "platformatic" },
      "chatbus producer: Kafka request failed; using a fresh producer for the next sends",
    );
  }

  async disconnect(): Promise<void> {
    await this.#producer.close(true).catch(() => {});
  }
}
