/**
 * The clients a started runtime holds besides its consumer: the PostgreSQL pool (its
 * own, or the one passed in), the kafkajs client, an admin and a producer (dead
 * letters). `open` checks each dependency with an error that says what to do.
 */

import { describeError } from "@chatbus/producer-sdk";
import { kafkaLogCreator } from "@chatbus/producer-sdk/internal";
import { type Admin, Kafka, logLevel, Partitioners, type Producer } from "kafkajs";
import pg from "pg";
import type { Logger } from "pino";
import { ensureDeadLetterTopic } from "../dead-letters/dead-letter-topic.ts";
import { DependencyUnavailableError } from "../errors.ts";
import type { ResolvedRuntimeOptions } from "./options.ts";

/** The runtime's pool and Kafka clients; fields are set as `open` gets to them. */
export class Connections {
  #config: ResolvedRuntimeOptions;
  #logger: Logger;
  #ownsPool = false;
  pool!: pg.Pool;
  kafka!: Kafka;
  admin: Admin | undefined;
  producer: Producer | undefined;

  constructor(config: ResolvedRuntimeOptions, logger: Logger) {
    this.#config = config;
    this.#logger = logger;
  }

  /** Connects and checks PostgreSQL (migrated), Kafka and the topic; makes the dead-letter topic. */
  async open(): Promise<void> {
    const config = this.#config;
    const logger = this.#logger;
    if (config.pool) this.pool = config.pool;
    else {
      this.pool = new pg.Pool({ connectionString: config.databaseUrl, max: 4 });
      // An idle connection dies when PostgreSQL restarts; without a listener pg's
      // 'error' event would crash the process. The next query reconnects.
      this.pool.on("error", (error) => logger.warn({ err: error }, "idle PostgreSQL connection closed"));
      this.#ownsPool = true;
    }
    this.kafka = new Kafka({
      clientId: config.clientId,
      brokers: config.brokers,
      logLevel: logLevel.WARN,
      logCreator: kafkaLogCreator(logger),
      retry: {
        retries: config.kafkaRetries,
        initialRetryTime: config.kafkaInitialRetryTimeMs,
        // The runtime restarts crashed consumers itself (kafka-consumer.ts).
        restartOnFailure: async () => false,
      },
    });
    const admin = this.kafka.admin();
    this.admin = admin;
    this.producer = this.kafka.producer({
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    try {
      await admin.connect();
      await this.producer.connect();
    } catch (error) {
      throw new DependencyUnavailableError(
        `Kafka at ${config.brokers.join(",")} is not reachable (${describeError(error)}); start it or set KAFKA_BROKERS.`,
        error,
      );
    }
    await this.#checkDatabase();
    const topics = await admin.listTopics();
    if (!topics.includes(config.topic)) {
      throw new DependencyUnavailableError(
        `topic ${config.topic} does not exist on ${config.brokers.join(",")}; create it (npm start does) or set CHATBUS_TOPIC.`,
      );
    }
    try {
      await ensureDeadLetterTopic(admin, config.topic, config.deadLetterTopic);
    } catch (error) {
      logger.warn(
        { err: error },
        `could not create the dead-letter topic ${config.deadLetterTopic}; dead letters wait until it exists`,
      );
    }
  }

  async #checkDatabase(): Promise<void> {
    try {
      await this.pool.query("SELECT 1 FROM dead_letters LIMIT 0");
    } catch (error) {
      throw new DependencyUnavailableError(
        `PostgreSQL for subscription ${this.#config.group} is not usable (${describeError(error)}); start it, check DATABASE_URL, and run the migrations (migrate(pool)).`,
        error,
      );
    }
  }

  /** Disconnects the producer and the admin (errors ignored: they are going away). */
  async disconnectKafka(): Promise<void> {
    await Promise.all([
      this.producer?.disconnect().catch(() => {}),
      this.admin?.disconnect().catch(() => {}),
    ]);
  }

  /** Ends the pool if the runtime made it (a pool passed in stays the caller's). */
  async endPool(): Promise<void> {
    if (this.#ownsPool) await this.pool.end().catch(() => {});
  }
}
