/**
 * System failure: the materialiser's PostgreSQL (a throwaway cluster on port 55434)
 * goes down hard while events keep arriving and stays down longer than the Kafka
 * session timeout. The materialiser retries with back-off while holding its
 * partitions (metrics show the failures and the open state), and once PostgreSQL is
 * back every event is applied exactly once: the projection equals an undisturbed run.
 */

import { type Materialiser, startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { createThrowawayPostgres, type ThrowawayPostgres } from "../../test/support/throwaway-postgres.ts";
import { migrate } from "../src/database/migrate.ts";
import {
  generateWorkload,
  produceWorkload,
  projectionSnapshot,
  sequenceViolations,
  waitUntilApplied,
} from "./materialiser-support.ts";

const PORT = 55434;
let postgres: ThrowawayPostgres | undefined;

let topic: string;
let calm: TestSchema;
let pool: pg.Pool;
let materialiser: Materialiser | undefined;
let reference: Materialiser | undefined;
const registry = new Registry();

async function metric(name: string, match: string): Promise<number> {
  const text = await registry.getSingleMetricAsString(name);
  const line = text.split("\n").find((l) => l.includes(match) && !l.startsWith("#"));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  postgres = createThrowawayPostgres(PORT);
  pool = new pg.Pool({ connectionString: postgres.url, max: 13 });
  await migrate(pool);
  topic = await createTestTopic("mat_outage", 3);
  calm = await createTestSchema("mat_outage_ref");
});

afterAll(async () => {
  await materialiser?.stop();
  await reference?.stop();
  await pool?.end();
  await calm?.cleanup();
  postgres?.destroy();
});

describe("materialiser when PostgreSQL goes down", () => {
  it("holds, retries with back-off and applies everything exactly once when PostgreSQL returns", async () => {
    const workload = generateWorkload(60, 1500, 3, { prefix: "out" });
    materialiser = await startMaterialiser({
      pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-outage"),
      registry,
      sessionTimeoutMs: 6000,
      retryInitialMs: 50,
      retryMaxMs: 1000,
    });
    await produceWorkload(topic, workload.slice(0, 700));
    await waitUntilApplied(pool, topic);

    postgres!.stop("immediate");
    await produceWorkload(topic, workload.slice(700));
    await until("batches fail with system failures", async () => {
      return (await metric("chatbus_events_failed_total", 'failure_class="system"')) > 0;
    });
    expect(await metric("chatbus_breaker_state", 'subscription="materialiser"')).toBe(2);
    expect(materialiser.state().breaker).toBe("open");
    // Longer than the session timeout: heartbeats must keep the partitions ours.
    await new Promise((r) => setTimeout(r, 8000));
    const retriedWhileDown = await metric("chatbus_events_retried_total", 'failure_class="system"');
    expect(retriedWhileDown).toBeGreaterThan(0);

    postgres!.start();
    await waitUntilApplied(pool, topic, 90_000);
    await until("the breaker closes", async () => materialiser!.state().breaker === "closed", 10_000);
    expect(await metric("chatbus_events_dead_lettered_total", "materialiser")).toBe(0);

    reference = await startMaterialiser({
      pool: calm.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-outage-ref"),
    });
    await waitUntilApplied(calm.pool, topic);
    expect(await sequenceViolations(pool)).toEqual([]);
    const a = await projectionSnapshot(pool);
    const b = await projectionSnapshot(calm.pool);
    expect(a.event_log!.length).toBe(workload.length);
    for (const table of Object.keys(b)) expect({ table, rows: a[table] }).toEqual({ table, rows: b[table] });
  });
});
