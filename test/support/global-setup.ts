/**
 * Vitest global setup for the integration and end-to-end tiers: makes sure a Kafka
 * broker and the PostgreSQL database exist before any test file runs.
 *
 * KAFKA_BROKERS set → that cluster is used as is (and must answer).
 * Unset → the local broker of scripts/kafka.ts is started unless it already runs,
 * and stopped again at teardown only if this setup started it.
 * CHATBUS_PRODUCER=platformatic → every bus that names no backend produces through
 * @platformatic/kafka, which is installed (first run) and linked into node_modules.
 */
import { ensureDatabase } from "../../consumer-runtime/src/database/migrate.ts";
import { kafkaAnswers, startKafka, stopKafka } from "../../scripts/kafka.ts";
import { linkPlatformatic } from "../../scripts/platformatic-kafka.ts";
import { ensurePostgres } from "../../scripts/postgres.ts";
import { databaseUrl } from "./env.ts";

export default async function setup(): Promise<() => Promise<void>> {
  let startedPort: number | undefined;
  if (process.env.CHATBUS_PRODUCER === "platformatic") linkPlatformatic();
  if (process.env.KAFKA_BROKERS) {
    const brokers = process.env.KAFKA_BROKERS.split(",");
    if (!(await kafkaAnswers(brokers, 5000))) {
      throw new Error(
        `KAFKA_BROKERS=${process.env.KAFKA_BROKERS} does not answer; start that cluster or unset KAFKA_BROKERS.`,
      );
    }
  } else {
    const port = Number(process.env.KAFKA_PORT ?? 9092);
    const broker = await startKafka(port);
    if (broker.started) startedPort = port;
    process.env.KAFKA_BROKERS = broker.brokers.join(",");
  }
  // DATABASE_URL unset and no PostgreSQL on 5432: the embedded one (issue 19).
  const postgres = await ensurePostgres(process.env);
  process.env.DATABASE_URL = postgres.databaseUrl;
  await ensureDatabase(databaseUrl());
  return async () => {
    if (startedPort !== undefined) await stopKafka(startedPort);
    await postgres.stop?.();
  };
}
