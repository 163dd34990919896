/**
 * The materialiser stays alive and an operator can always unstick it (issue 20.6 and
 * the materialiser side of 12.4), against the real broker and database:
 * - after a consumer crash it restarts with back-off until it runs, even when the first
 *   restart fails;
 * - the status publisher has connections of its own: it publishes while every
 *   connection of the batch pool is taken;
 * - a statement that hangs is cancelled by the statement timeout (a system failure);
 *   the record retried past `stuckAfterMs` is published as stuck; an operator's skip
 *   request turns it into an `operator` dead letter and the partition moves on.
 */

import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { uuidv7 } from "@chatbus/producer-sdk";
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
import { getSkip, requestSkip } from "../src/status/skips.ts";
import type { SubscriptionState } from "../src/status/store.ts";
import { produceWorkload, type WorkloadEvent, waitUntilApplied } from "./materialiser-support.ts";

let db: TestSchema;
beforeAll(async () => {
  db = await createTestSchema("mat_live");
});
afterAll(async () => {
  await db?.cleanup();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
let clock = 0;
const ev = (conversationId: string, input: WorkloadEvent["input"]): WorkloadEvent => ({
  conversationId,
  input,
  id: uuidv7(),
  time: new Date(Date.UTC(2026, 4, 1) + clock++),
});
const created = (id: string) =>
  ev(id, { type: "chat.conversation.created", kind: "direct", createdBy: "ana", members: ["ana", "bob"] });
const text = (id: string, t: string) =>
  ev(id, { type: "chat.message.sent", senderId: "ana", content: { type: "text", text: t } });

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

describe("restart after a crash", () => {
  it("restarts with back-off until the consumer runs again when the first restart fails", async () => {
    const own = await createTestSchema("mat_restart");
    const topic = await createTestTopic("mat_restart", 1);
    const registry = new Registry();
    const starts: number[] = [];
    let crashed = false;
    const materialiser = await startMaterialiser({
      pool: own.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-restart"),
      registry,
      faults: {
        beforeStart: (attempt) => {
          starts.push(attempt);
          if (attempt === 2) throw new Error("injected: the first restart fails");
        },
        beforeBatch: () => {
          if (crashed) return;
          crashed = true;
          // Not retriable: kafkajs crashes the consumer and does not restart it itself.
          throw Object.assign(new Error("injected consumer crash"), { retriable: false });
        },
      },
    });
    try {
      await produceWorkload(topic, [created("rs"), text("rs", "one"), text("rs", "two")]);
      await waitUntilApplied(own.pool, topic, 60_000);
      expect(crashed).toBe(true);
      expect(starts).toEqual([1, 2, 3]);
      const { rows } = await own.pool.query("SELECT seq, content->>'text' AS t FROM messages ORDER BY seq");
      expect(rows).toEqual([
        { seq: "1", t: "one" },
        { seq: "2", t: "two" },
      ]);
      const restarts =
        (await registry.getSingleMetric("chatbus_consumer_restarts_total")?.get())?.values ?? [];
      expect(restarts.reduce((sum, v) => sum + v.value, 0)).toBeGreaterThanOrEqual(2);
    } finally {
      await materialiser.stop();
      await own.cleanup();
    }
  });
});

describe("a record that keeps failing for a system reason", () => {
  it("is cancelled by the statement timeout, published as stuck, and skipped by an operator", async () => {
    const topic = await createTestTopic("mat_stuck", 1);
    // A message "SLOW" makes its INSERT hang longer than the statement timeout.
    await db.pool.query(`
      CREATE FUNCTION test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.content->>'text' = 'SLOW' THEN PERFORM pg_sleep(3); END IF;
        RETURN NEW;
      END $$`);
    await db.pool.query(
      "CREATE TRIGGER test_slow BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION test_slow()",
    );
    const materialiser = await startMaterialiser({
      pool: db.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-stuck"),
      statementTimeoutMs: 500,
      stuckAfterMs: 1500,
      retryInitialMs: 50,
      retryMaxMs: 300,
      statusIntervalMs: 200,
    });
    try {
      await produceWorkload(topic, [created("st"), text("st", "one")]);
      await waitUntilApplied(db.pool, topic, 60_000);
      await produceWorkload(topic, [text("st", "SLOW"), text("st", "after")]);
      const state = await waitFor("the stuck record in the published status", async () => {
        const { rows } = await db.pool.query<{ state: SubscriptionState }>(
          "SELECT state FROM subscription_status WHERE subscription = 'materialiser'",
        );
        const s = rows[0]?.state;
        return s?.stuck && s.stuck.length > 0 ? s : undefined;
      });
      expect(state.stuck![0]).toMatchObject({
        partition: 0,
        offset: "2",
        eventType: "chat.message.sent",
        conversationId: "st",
      });
      expect(state.stuck![0]!.error).toContain("statement timeout");
      expect(state.stuck![0]!.attempts).toBeGreaterThan(1);
      expect(state.breaker).toBe("open");
      expect(state.oldestInFlightMs).toBeGreaterThanOrEqual(1500);
      // Nothing after the stuck record is applied while it is retried (order kept).
      expect((await db.pool.query("SELECT 1 FROM messages WHERE content->>'text' = 'after'")).rowCount).toBe(
        0,
      );

      const request = await requestSkip(db.pool, {
        subscription: "materialiser",
        topic,
        partition: 0,
        offset: "2",
        requestedBy: "test-operator",
      });
      await waitUntilApplied(db.pool, topic, 60_000);
      const dl = await db.pool.query(
        `SELECT id::text, "offset"::int AS "offset", failure_class, error_code, error_message, attempts
           FROM dead_letters WHERE topic = $1`,
        [topic],
      );
      expect(dl.rows).toHaveLength(1);
      expect(dl.rows[0]).toMatchObject({
        offset: 2,
        failure_class: "operator",
        error_code: "CHATBUS_OPERATOR_SKIP",
      });
      expect(dl.rows[0].error_message).toContain("test-operator");
      expect(dl.rows[0].error_message).toContain("statement timeout");
      const skip = await waitFor("the skip marked applied", async () => {
        const s = await getSkip(db.pool, request.id);
        return s?.appliedAt ? s : undefined;
      });
      expect(skip.deadLetterId).toBe(dl.rows[0].id);
      const texts = await db.pool.query("SELECT seq, content->>'text' AS t FROM messages ORDER BY seq");
      expect(texts.rows).toEqual([
        { seq: "1", t: "one" },
        { seq: "2", t: "after" },
      ]);
      await waitFor("the stuck record cleared and the breaker closed", async () => {
        const { rows } = await db.pool.query<{ state: SubscriptionState }>(
          "SELECT state FROM subscription_status WHERE subscription = 'materialiser'",
        );
        const s = rows[0]?.state;
        return s && s.stuck?.length === 0 && s.breaker === "closed" ? s : undefined;
      });
      // A request for a record already applied is answered: applied, no dead letter.
      const late = await requestSkip(db.pool, {
        subscription: "materialiser",
        topic,
        partition: 0,
        offset: "1",
        requestedBy: "test-operator",
      });
      const answered = await waitFor("the late skip answered", async () => {
        const s = await getSkip(db.pool, late.id);
        return s?.appliedAt ? s : undefined;
      });
      expect(answered.deadLetterId).toBeNull();
      // Every connection the materialiser creates has TCP keep-alive.
      expect((db.pool as unknown as { options: { keepAlive: boolean } }).options.keepAlive).toBe(true);
    } finally {
      await materialiser.stop();
    }
  });
});

describe("the status publisher's own connections", () => {
  it("publishes the status while every connection of the batch pool is taken", async () => {
    const topic = await createTestTopic("mat_status_pool", 1);
    const batchPool = new pg.Pool({ connectionString: db.url, max: 1 });
    const materialiser = await startMaterialiser({
      pool: batchPool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-status-pool"),
      subscription: "status-pool",
      statusIntervalMs: 200,
    });
    // The batch pool's only connection is held: a status publisher on that pool would
    // wait for it and never publish again.
    const held = await batchPool.connect();
    try {
      const lastSeen = async () =>
        (
          await db.pool.query<{ at: Date }>(
            "SELECT last_seen_at AS at FROM subscription_status WHERE subscription = 'status-pool'",
          )
        ).rows[0]?.at.getTime();
      await sleep(500);
      const before = (await lastSeen()) ?? 0;
      await waitFor(
        "a status published after the connection was taken",
        async () => (((await lastSeen()) ?? 0) > before ? true : undefined),
        5_000,
      );
    } finally {
      held.release();
      await materialiser.stop();
      await batchPool.end();
    }
  });
});
