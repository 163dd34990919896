/**
 * Write rate limits across API processes (issue 13 item 2, issue 18 item 3): two API
 * apps on one stack (real Kafka, PostgreSQL and materialiser), a client alternating
 * between them. The limits are kept in PostgreSQL, so together the two admit what
 * one would; limits kept in each process's memory would admit about twice as much.
 */
import { createProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import pino from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ApiApp } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { configDefaults } from "../src/config.ts";
import { eventually, type Harness, serviceKey, startHarness } from "./harness.ts";

let h: Harness;
let b: ApiApp;
let ana: string;
let groups: string[];

/** Small buckets that refill slowly, so that a few quick requests reach the limits. */
const rateLimits = {
  ...configDefaults.rateLimits,
  groupMessagesPerSecond: 1,
  userMessagesPerSecond: 1.5,
  userWritesPerSecond: 1,
  conversationWritesPerSecond: 1,
  burstSeconds: 4,
};

beforeAll(async () => {
  h = await startHarness("api_limits", { rateLimits });
  b = await buildApp({
    config: h.config,
    logger: pino({ level: "silent" }),
    registry: new Registry(),
    bus: h.bus,
    projection: createProjectionReader(h.schema.pool),
    pool: h.schema.pool,
    readiness: {},
  });
  ana = await h.login("ana");
  const created = [];
  for (const app of [h.app, b]) {
    const res = await app.inject({
      method: "POST",
      url: "/v1/conversations",
      headers: { authorization: `Bearer ${ana}` },
      payload: { kind: "group", members: ["ben"] },
    });
    expect(res.statusCode).toBe(202);
    created.push(res.json().conversationId as string);
  }
  groups = created;
  for (const id of groups) {
    await eventually(`group ${id} materialised`, async () =>
      createProjectionReader(h.schema.pool).isMember(id, "ana"),
    );
  }
  // Creating the groups took two of ana's write tokens: let them refill.
  await new Promise((resolve) => setTimeout(resolve, 2500));
});

afterAll(async () => {
  await b?.close();
  await h?.close();
});

/** Sends alternately through both apps as fast as they answer; counts statuses. */
async function alternate(
  count: number,
  request: (
    app: ApiApp,
    i: number,
  ) => Promise<{
    statusCode: number;
    headers: Record<string, unknown>;
    json(): { error?: { message: string } };
  }>,
) {
  const started = performance.now();
  const statuses: number[] = [];
  const retryAfter: unknown[] = [];
  const messages = new Set<string>();
  for (let i = 0; i < count; i++) {
    const res = await request(i % 2 === 0 ? h.app : b, i);
    statuses.push(res.statusCode);
    if (res.statusCode === 429) {
      retryAfter.push(res.headers["retry-after"]);
      messages.add(res.json().error?.message ?? "");
    }
  }
  const seconds = (performance.now() - started) / 1000;
  return { accepted: statuses.filter((s) => s === 202).length, statuses, retryAfter, messages, seconds };
}

describe("write limits shared by two API processes", () => {
  it("a conversation's message limit holds across both: 429 with Retry-After past it", async () => {
    const ben = await h.login("ben");
    const result = await alternate(12, (app, i) =>
      app.inject({
        method: "POST",
        url: `/v1/conversations/${groups[0]}/messages`,
        headers: { authorization: `Bearer ${i % 4 < 2 ? ana : ben}` },
        payload: { content: { type: "text", text: `m${i}` } },
      }),
    );
    // Bucket of 4, refilling at 1/s: two in-memory buckets would admit 8 or more.
    expect(result.accepted).toBeGreaterThanOrEqual(4);
    expect(result.accepted).toBeLessThanOrEqual(4 + Math.ceil(result.seconds * 1));
    expect(result.statuses).toContain(429);
    for (const value of result.retryAfter) expect(Number(value)).toBeGreaterThanOrEqual(1);
    expect([...result.messages].join()).toContain("1 messages/s in this group conversation");
  });

  it("a user's message limit holds across conversations and processes", async () => {
    await new Promise((resolve) => setTimeout(resolve, 4000)); // refill
    const result = await alternate(14, (app, i) =>
      app.inject({
        method: "POST",
        url: `/v1/conversations/${groups[i % 4 < 2 ? 0 : 1]}/messages`,
        headers: { authorization: `Bearer ${ana}` },
        payload: { content: { type: "text", text: `u${i}` } },
      }),
    );
    // ana's bucket holds 6 (1.5/s × 4 s); each conversation's holds 4.
    expect(result.accepted).toBeGreaterThanOrEqual(6);
    expect(result.accepted).toBeLessThanOrEqual(6 + Math.ceil(result.seconds * 1.5));
    expect(result.statuses).toContain(429);
    expect([...result.messages].join()).toContain("1.5 messages/s per user");
  });

  it("read receipts are limited per user across processes too", async () => {
    await new Promise((resolve) => setTimeout(resolve, 4000));
    const result = await alternate(10, (app, i) =>
      app.inject({
        method: "POST",
        url: `/v1/conversations/${groups[i % 2]}/read`,
        headers: { authorization: `Bearer ${ana}` },
        payload: { seq: 1 },
      }),
    );
    expect(result.accepted).toBeGreaterThanOrEqual(4);
    expect(result.accepted).toBeLessThanOrEqual(4 + Math.ceil(result.seconds * 1));
    expect(result.retryAfter.length).toBeGreaterThan(0);
  });

  it("a service's high-priority notices pass the conversation limit; a user's high is a 403", async () => {
    const notices = await alternate(8, (app, i) =>
      app.inject({
        method: "POST",
        url: `/v1/conversations/${groups[1]}/messages`,
        headers: { authorization: `Bearer ${serviceKey}` },
        payload: { senderId: "ana", content: { type: "text", text: `notice ${i}` }, priority: "high" },
      }),
    );
    expect(notices.accepted).toBe(8);
    const user = await b.inject({
      method: "POST",
      url: `/v1/conversations/${groups[1]}/messages`,
      headers: { authorization: `Bearer ${ana}` },
      payload: { content: { type: "text", text: "me first" }, priority: "high" },
    });
    expect(user.statusCode).toBe(403);
    expect(user.json().error.field).toBe("priority");
  });
});
