/**
 * The API process (`npm start` runs it): reads the environment, checks PostgreSQL
 * and Kafka, builds the app and listens on PORT; SIGTERM/SIGINT close the SSE
 * streams (clients resume elsewhere), flush pending receipts and the producer, and
 * exit. A missing or unreachable dependency is one line naming it and the fix.
 */
import { createProjectionReader, eventsChannel } from "@chatbus/consumer-runtime/materialiser";
import { createChatBus, topicRetentionMs } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";
import pino from "pino";
import { collectDefaultMetrics, Registry } from "prom-client";
import { buildApp } from "./build-app.ts";
import { loadConfig } from "./config.ts";
import { ConfigError } from "./errors.ts";
import { retentionDetail } from "./topic-retention.ts";

function fail(message: string): never {
  console.error(`chatbus-api: ${message}`);
  process.exit(1);
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main(): Promise<void> {
  let loaded: ReturnType<typeof loadConfig>;
  try {
    loaded = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) fail(error.message);
    throw error;
  }
  const { config, notes } = loaded;
  const logger = pino({ level: process.env.LOG_LEVEL ?? "info", name: "chatbus-api" });
  for (const warning of notes.warnings) logger.warn(warning);

  const pool = new pg.Pool({ connectionString: config.databaseUrl, max: 20, connectionTimeoutMillis: 5000 });
  pool.on("error", (error) => logger.warn({ err: error }, "idle PostgreSQL connection failed"));
  const where = new URL(config.databaseUrl);
  let schema: string;
  try {
    const { rows } = await pool.query<{ schema: string }>("SELECT current_schema() AS schema");
    schema = rows[0]!.schema;
  } catch (error) {
    fail(
      `PostgreSQL is not reachable at ${where.host}${where.pathname} (${(error as Error).message}); start it or set DATABASE_URL.`,
    );
  }
  try {
    await pool.query("SELECT 1 FROM event_log LIMIT 0");
    await pool.query("SELECT 1 FROM dead_letters LIMIT 0");
  } catch {
    fail(
      `the database ${where.pathname.slice(1)} at ${where.host} has no chatbus tables in schema ${schema}; run \`npm start\` (it creates and migrates the database) or start the consumer runtime first.`,
    );
  }

  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  let bus: Awaited<ReturnType<typeof createChatBus>>;
  try {
    bus = await createChatBus({
      brokers: config.kafkaBrokers,
      topic: config.topic,
      logger,
      registry,
      source: "/chatbus/api",
    });
  } catch (error) {
    fail(
      `Kafka at ${config.kafkaBrokers.join(",")} could not be used (${(error as Error).message}); start it or set KAFKA_BROKERS.`,
    );
  }

  const admin = new Kafka({
    brokers: config.kafkaBrokers,
    clientId: "chatbus-api-readiness",
    logLevel: logLevel.NOTHING,
  }).admin();
  let adminConnected: Promise<void> | undefined;
  const connectAdmin = () => {
    adminConnected ??= admin.connect().catch((error: unknown) => {
      adminConnected = undefined;
      throw error;
    });
    return adminConnected;
  };
  const readiness = {
    postgresql: async () => {
      await withTimeout(pool.query("SELECT 1"), 2000, `PostgreSQL at ${where.host}`);
    },
    kafka: async () => {
      await withTimeout(connectAdmin(), 2000, `Kafka at ${config.kafkaBrokers.join(",")}`);
      const cluster = await withTimeout(
        admin.describeCluster(),
        2000,
        `Kafka at ${config.kafkaBrokers.join(",")}`,
      );
      if (cluster.brokers.length === 0)
        throw new Error(`Kafka at ${config.kafkaBrokers.join(",")} lists no brokers`);
    },
  };

  const app = await buildApp({
    config,
    logger,
    registry,
    bus,
    pool,
    projection: createProjectionReader(pool),
    readiness,
    readinessDetails: {
      // The chat topic must keep its records (createChatBus warned once at start if not).
      topicRetention: async () => {
        await withTimeout(connectAdmin(), 2000, `Kafka at ${config.kafkaBrokers.join(",")}`);
        return retentionDetail(
          config.topic,
          await withTimeout(topicRetentionMs(admin, config.topic), 2000, "DescribeConfigs"),
        );
      },
    },
    realtime: { pool, databaseUrl: config.databaseUrl, channel: eventsChannel(schema) },
  });
  try {
    await app.listen({ port: config.port, host: config.host });
  } catch (error) {
    fail(
      `cannot listen on ${config.host}:${config.port} (${(error as Error).message}); set PORT to a free port.`,
    );
  }

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down: closing streams, flushing receipts and the producer");
    const force = setTimeout(() => process.exit(1), 20_000);
    force.unref();
    await app.close().catch((error) => logger.error({ err: error }, "closing the HTTP server failed"));
    await bus.close().catch((error) => logger.error({ err: error }, "closing the producer failed"));
    await admin.disconnect().catch(() => {});
    await pool.end().catch(() => {});
    process.exit(0);
  };
  process.once("SIGTERM", () => void stop("SIGTERM"));
  process.once("SIGINT", () => void stop("SIGINT"));
}

main().catch((error: unknown) => fail(error instanceof Error ? error.message : String(error)));
