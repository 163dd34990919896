/**
 * Per-test-file isolation on the shared broker and database: unique topic names and
 * a fresh PostgreSQL schema (migrated), dropped again by `cleanup()`.
 */

import { randomBytes } from "node:crypto";
import { waitForPartitionLeaders } from "@chatbus/producer-sdk/internal";
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";
import { migrate } from "../../consumer-runtime/src/database/migrate.ts";
import { databaseUrl, kafkaBrokers } from "./env.ts";

/** A name unique to this run, safe as a topic, group or schema name. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString("hex")}`;
}

/** Creates a topic and waits until every partition has a leader. */
export async function createTestTopic(prefix: string, partitions = 12): Promise<string> {
  const topic = uniqueName(prefix);
  const admin = new Kafka({
    clientId: "chatbus-test",
    brokers: kafkaBrokers(),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  try {
    // kafkajs waits for leaders by default and gives up on UNKNOWN_TOPIC_OR_PARTITION
    // while a busy broker propagates a new topic: wait our way instead.
    await admin.createTopics({
      waitForLeaders: false,
      topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }],
    });
    await waitForPartitionLeaders(admin, topic, partitions, 30_000);
    // The metadata names a leader before that broker serves the partition: a ListOffsets
    // right after answered NOT_LEADER_OR_FOLLOWER once (producer-sdk's chat-bus test).
    // Wait until every partition answers.
    for (const deadline = Date.now() + 30_000; ; ) {
      const served = await admin.fetchTopicOffsets(topic).then(
        () => true,
        (error: unknown) => {
          if (!(error as { retriable?: boolean }).retriable || Date.now() > deadline) throw error;
          return false;
        },
      );
      if (served) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    await admin.disconnect();
  }
  return topic;
}

export interface TestSchema {
  /** The schema name, also the pool's search_path. */
  schema: string;
  /** DATABASE_URL-style connection string whose connections use the schema. */
  url: string;
  pool: pg.Pool;
  cleanup(): Promise<void>;
}

/** A fresh, migrated schema with a pool whose search_path points at it. */
export async function createTestSchema(prefix = "t"): Promise<TestSchema> {
  const schema = uniqueName(prefix).toLowerCase();
  const url = new URL(databaseUrl());
  url.searchParams.set("options", `-c search_path=${schema}`);
  const admin = new pg.Client({ connectionString: databaseUrl() });
  await admin.connect();
  await admin.query(`CREATE SCHEMA "${schema}"`);
  await admin.end();
  const pool = new pg.Pool({ connectionString: url.toString(), max: 10 });
  await migrate(pool);
  return {
    schema,
    url: url.toString(),
    pool,
    async cleanup() {
      await pool.end();
      const client = new pg.Client({ connectionString: databaseUrl() });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    },
  };
}
