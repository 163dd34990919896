/**
 * The shared rate limits' PostgreSQL goes down mid-flight (a throwaway cluster of
 * this test's own; the projection stays on the shared server). While it is down,
 * sends are refused with 503 and nothing reaches Kafka; a client that retries with
 * its clientMsgId gets every message through once PostgreSQL is back. Then we count:
 * every message materialised once, in the order sent, and a later message arrives.
 */
import { createServer } from "node:net";
import { createProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import pino from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate } from "../../consumer-runtime/src/database/migrate.ts";
import { createThrowawayPostgres, type ThrowawayPostgres } from "../../test/support/throwaway-postgres.ts";
import type { ApiApp } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { configDefaults } from "../src/config.ts";
import { createWriteLimiter } from "../src/write-limits.ts";
import { eventually, type Harness, startHarness } from "./harness.ts";

let h: Harness;
let limitsDb: ThrowawayPostgres | undefined;
let limitsPool: pg.Pool;
let app: ApiApp;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

beforeAll(async () => {
  h = await startHarness("api_limits_outage");
  limitsDb = createThrowawayPostgres(await freePort());
  limitsPool = new pg.Pool({ connectionString: limitsDb.url, max: 4, connectionTimeoutMillis: 1000 });
  limitsPool.on("error", () => {}); // idle connections die with the server; the next query reconnects
  await migrate(limitsPool);
  const logger = pino({ level: "silent" });
  app = await buildApp({
    config: h.config,
    logger,
    registry: new Registry(),
    bus: h.bus,
    projection: createProjectionReader(h.schema.pool),
    pool: h.schema.pool,
    readiness: {},
    writeLimiter: createWriteLimiter(limitsPool, { ...configDefaults.rateLimits, enabled: true }, logger),
  });
});

afterAll(async () => {
  await app?.close();
  await limitsPool?.end().catch(() => {});
  limitsDb?.destroy();
  await h?.close();
});

describe("rate limits when their PostgreSQL goes down", () => {
  it("refuses with 503 and sends nothing while it is down; retried sends arrive once each, in order", async () => {
    const ana = await h.login("ana");
    const auth = { authorization: `Bearer ${ana}` };
    const created = await app.inject({
      method: "POST",
      url: "/v1/conversations",
      headers: auth,
      payload: { kind: "group", members: ["ben"] },
    });
    expect(created.statusCode).toBe(202);
    const conversation = created.json().conversationId as string;
    const projection = createProjectionReader(h.schema.pool);
    await eventually("the group", () => projection.isMember(conversation, "ana"));

    const total = 30;
    const refused: string[] = [];
    let offsetsWhileDown: [number, number] | undefined;
    for (let i = 0; i < total; i++) {
      if (i === 10) {
        limitsDb!.stop("immediate");
        const before = await h.endOffsets();
        // Every attempt while it is down must be refused, and none may reach Kafka.
        for (let attempt = 0; attempt < 5; attempt++) {
          const res = await app.inject({
            method: "POST",
            url: `/v1/conversations/${conversation}/messages`,
            headers: auth,
            payload: { content: { type: "text", text: `m${i}` }, clientMsgId: `m${i}` },
          });
          expect(res.statusCode).toBe(503);
          refused.push(res.json().error.code);
        }
        offsetsWhileDown = [before, await h.endOffsets()];
        limitsDb!.start();
      }
      for (let attempt = 0; ; attempt++) {
        const res = await app.inject({
          method: "POST",
          url: `/v1/conversations/${conversation}/messages`,
          headers: auth,
          payload: { content: { type: "text", text: `m${i}` }, clientMsgId: `m${i}` },
        });
        if (res.statusCode === 202) break;
        expect(res.statusCode, res.body).toBe(503); // the pool reconnecting after the restart
        if (attempt > 100) throw new Error(`m${i} was refused 100 times`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    expect(refused).toEqual(Array(5).fill("CHATBUS_POSTGRES_UNAVAILABLE"));
    expect(offsetsWhileDown![1]).toBe(offsetsWhileDown![0]);

    const later = await app.inject({
      method: "POST",
      url: `/v1/conversations/${conversation}/messages`,
      headers: auth,
      payload: { content: { type: "text", text: "later" } },
    });
    expect(later.statusCode).toBe(202);
    const history = await eventually("every message materialised", async () => {
      const messages = await projection.history(conversation, { limit: 100, after: 0 });
      return messages.length >= total + 1 ? messages : undefined;
    });
    const texts = history.map((m) => (m.content as { text: string }).text);
    expect(texts).toEqual([...Array.from({ length: total }, (_, i) => `m${i}`), "later"]);
    expect(new Set(history.map((m) => m.seq)).size).toBe(history.length);
  });

  it("concurrent senders across a crash mid-batch: every retried message arrives once, each sender's in order", async () => {
    const [ana, ben] = await Promise.all([h.login("ana"), h.login("ben")]);
    const created = await app.inject({
      method: "POST",
      url: "/v1/conversations",
      headers: { authorization: `Bearer ${ana}` },
      payload: { kind: "group", members: ["ben"] },
    });
    expect(created.statusCode).toBe(202);
    const conversation = created.json().conversationId as string;
    const projection = createProjectionReader(h.schema.pool);
    await eventually("the group", () => projection.isMember(conversation, "ben"));

    // Eight senders at once keep a batch in flight and the next one queued, so the
    // crash lands on batches of several writes.
    const senders = 8;
    const each = 6;
    let admitted = 0;
    let refused = 0;
    const sender = async (s: number) => {
      for (let m = 0; m < each; m++) {
        for (let attempt = 0; ; attempt++) {
          const res = await app.inject({
            method: "POST",
            url: `/v1/conversations/${conversation}/messages`,
            headers: { authorization: `Bearer ${s % 2 === 0 ? ana : ben}` },
            payload: { content: { type: "text", text: `s${s}-${m}` }, clientMsgId: `s${s}-${m}` },
          });
          if (res.statusCode === 202) break;
          expect(res.statusCode, res.body).toBe(503);
          refused++;
          if (attempt > 100) throw new Error(`s${s}-${m} was refused 100 times`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        admitted++;
      }
    };
    const crash = async () => {
      while (admitted < 12) await new Promise((resolve) => setImmediate(resolve));
      limitsDb!.stop("immediate");
      await new Promise((resolve) => setTimeout(resolve, 500));
      limitsDb!.start();
    };
    await Promise.all([...Array.from({ length: senders }, (_, s) => sender(s)), crash()]);
    expect(refused).toBeGreaterThan(senders / 2); // the senders in flight or queued at the crash

    const history = await eventually("every message materialised", async () => {
      const messages = await projection.history(conversation, { limit: 100, after: 0 });
      return messages.length >= senders * each ? messages : undefined;
    });
    const texts = history.map((m) => (m.content as { text: string }).text);
    expect(texts).toHaveLength(senders * each);
    expect(new Set(texts).size).toBe(senders * each);
    for (let s = 0; s < senders; s++) {
      expect(texts.filter((t) => t.startsWith(`s${s}-`))).toEqual(
        Array.from({ length: each }, (_, m) => `s${s}-${m}`),
      );
    }
  });
});
