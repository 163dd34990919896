/**
 * A real infrastructure failure: the handler writes to a throwaway PostgreSQL cluster
 * of this test (initdb + pg_ctl on port 55433, data under /tmp). The cluster is stopped
 * mid-run and started again: nothing is lost, nothing is dead-lettered, the breaker
 * opened and closed, and each conversation's rows are in log order.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { uniqueName } from "../../test/support/isolation.ts";
import { createThrowawayPostgres, type ThrowawayPostgres } from "../../test/support/throwaway-postgres.ts";
import { listDeadLetters } from "../src/exports/operator.ts";
import type { Runtime } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import { connectProducer, numberOf, orderProblems, produceNumbered, waitFor } from "./runtime-support.ts";

const port = 55433;
let postgres: ThrowawayPostgres | undefined;
let runtime: Runtime | undefined;
let target: pg.Pool | undefined;
let webhook: Server | undefined;
const alerts: { kind: string; subscription: string }[] = [];

beforeAll(async () => {
  postgres = createThrowawayPostgres(port);
  target = new pg.Pool({
    connectionString: postgres.url,
    max: 8,
    connectionTimeoutMillis: 1000,
    query_timeout: 2000,
  });
  target.on("error", () => {}); // idle clients die with the cluster; queries report it
  // The alert webhook: a local HTTP server that records the posted JSON.
  webhook = createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => {
      body += chunk;
    });
    request.on("end", () => {
      alerts.push(JSON.parse(body));
      response.end("ok");
    });
  });
  await new Promise<void>((resolve) => webhook!.listen(0, "127.0.0.1", resolve));
  await target.query(
    "CREATE TABLE handled (id bigserial PRIMARY KEY, conversation text NOT NULL, n int NOT NULL, UNIQUE (conversation, n))",
  );
});

afterAll(async () => {
  await target?.end().catch(() => {});
  webhook?.close();
  postgres?.destroy();
});

// After the throwaway cluster's hooks: its afterAll (hooks run as a stack) stops the runtime first.
const rt = useRuntimeFixture("rt_infra", { partitions: 4 });

async function metric(registry: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const found = (await registry.getSingleMetric(name)?.get())?.values.find((v) =>
    Object.entries(labels).every(([k, value]) => v.labels[k] === value),
  );
  return found?.value ?? 0;
}

describe("real infrastructure failure", () => {
  it("holds conversations while the database is down, opens and closes the breaker, loses nothing", async () => {
    const conversations = 40;
    const perConversation = 30;
    const producer = await connectProducer();
    await produceNumbered(producer, rt.topic, conversations, perConversation, "infra");
    await producer.disconnect();

    const registry = new Registry();
    let calls = 0;
    runtime = rt.runtime({
      group: uniqueName("infra"),
      registry,
      concurrency: 8,
      systemRetry: { initialDelayMs: 100, maxDelayMs: 1000 },
      breaker: { volumeThreshold: 5, resetTimeoutMs: 1500, rollingWindowMs: 5000 },
      alertWebhook: `http://127.0.0.1:${(webhook!.address() as AddressInfo).port}/alerts`,
    });
    runtime.on("chat.message.sent", async (event) => {
      calls++;
      await target!.query("INSERT INTO handled (conversation, n) VALUES ($1, $2) ON CONFLICT DO NOTHING", [
        event.conversationId,
        numberOf(event),
      ]);
      await new Promise((r) => setTimeout(r, 5));
    });
    await runtime.start();

    const count = async () => {
      try {
        return Number((await target!.query("SELECT count(*) AS n FROM handled")).rows[0].n);
      } catch {
        return -1;
      }
    };
    await waitFor(async () => (await count()) >= 100, 30_000, "the first hundred rows");
    postgres!.stop();
    await waitFor(() => runtime!.breakerState === "open", 30_000, "the breaker to open");
    const callsWhenOpen = calls;
    await new Promise((r) => setTimeout(r, 1000));
    // While open the runtime stops calling the handler (at most a probe).
    expect(calls - callsWhenOpen).toBeLessThanOrEqual(2);
    postgres!.start();
    await waitFor(async () => (await count()) === conversations * perConversation, 90_000, "every row");
    await waitFor(() => runtime!.breakerState === "closed", 30_000, "the breaker to close");

    const { rows } = await target!.query<{ conversation: string; n: number }>(
      "SELECT conversation, n FROM handled ORDER BY id",
    );
    const seen = new Map<string, number[]>();
    for (const row of rows) seen.set(row.conversation, [...(seen.get(row.conversation) ?? []), row.n]);
    expect(orderProblems(seen, perConversation)).toEqual([]);

    const letters = await listDeadLetters(rt.schema.pool, { subscription: runtime.subscription, limit: 10 });
    expect(letters.items).toEqual([]);
    expect(
      await metric(registry, "chatbus_breaker_transitions_total", { to: "open" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      await metric(registry, "chatbus_breaker_transitions_total", { to: "closed" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      await metric(registry, "chatbus_events_failed_total", { failure_class: "system" }),
    ).toBeGreaterThanOrEqual(5);
    expect(await metric(registry, "chatbus_events_dead_lettered_total", {})).toBe(0);
    // The webhook heard the breaker open and close.
    await waitFor(() => alerts.some((a) => a.kind === "breaker_closed"), 10_000, "the breaker_closed alert");
    expect(alerts.map((a) => a.kind)).toContain("breaker_opened");
    expect(alerts.every((a) => a.subscription === runtime!.subscription)).toBe(true);
  });
});
