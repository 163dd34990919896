/**
 * Issue 14.7: with KAFKA_BROKERS and DATABASE_URL given (e.g. `docker compose up`
 * elsewhere), the test setup uses them as they are: it starts no broker of its own,
 * fails with a message naming KAFKA_BROKERS when nothing answers there, stops
 * nothing at teardown, and creates the given database when it is missing.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterEach, expect, it } from "vitest";
import { kafkaAnswers } from "../../scripts/kafka.ts";
import { databaseUrl, kafkaBrokers } from "../support/env.ts";
import setup from "../support/global-setup.ts";
import { freeKafkaPort, listening } from "./stack-process.ts";

const saved = { KAFKA_BROKERS: process.env.KAFKA_BROKERS, DATABASE_URL: process.env.DATABASE_URL };
afterEach(() => {
  for (const [name, value] of Object.entries(saved)) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
});

it("fails on a given broker that does not answer, and starts none in its place", async () => {
  const port = await freeKafkaPort();
  process.env.KAFKA_BROKERS = `127.0.0.1:${port}`;
  await expect(setup()).rejects.toThrow(/KAFKA_BROKERS=127\.0\.0\.1:\d+ does not answer/);
  expect(await listening(port)).toBe(false);
});

it("uses a given broker and database as they are, and leaves them running", async () => {
  const brokers = kafkaBrokers();
  const database = `chatbus_given_${randomBytes(4).toString("hex")}`;
  const base = databaseUrl();
  const url = new URL(base);
  url.pathname = `/${database}`;
  process.env.KAFKA_BROKERS = brokers.join(",");
  process.env.DATABASE_URL = url.toString();
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  try {
    const teardown = await setup();
    const exists = await admin.query("SELECT 1 FROM pg_database WHERE datname = $1", [database]);
    expect(exists.rowCount).toBe(1);
    await teardown();
    expect(await kafkaAnswers(brokers, 5000)).toBe(true);
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    await admin.end();
  }
});
