/**
 * Two API instances on one projection (each with its own hub, LISTEN connection and
 * presence view, as two processes have): a stream position issued by one resumes
 * exactly on the other.
 */
import { createProjectionReader, decodeEventCursor, eventsChannel } from "@chatbus/consumer-runtime";
import pino from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ApiApp } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { configDefaults, validateConfig } from "../src/config.ts";
import { eventually, type Harness, openSse, type SseMessage, startHarness } from "./harness.ts";

let h: Harness;
let b: { app: ApiApp; url: string };
let ana: string;
let ben: string;
const tails = new Set<number>();
const groups: string[] = [];

async function startSecond(harness: Harness): Promise<{ app: ApiApp; url: string }> {
  const config = validateConfig({
    ...configDefaults,
    nodeEnv: "test",
    jwtSecret: "int-test-secret-0123456789abcdef",
    operatorKey: "int-operator-key-0123456789",
    serviceKeys: ["int-service-key-0123456789"],
    topic: harness.topic,
    databaseUrl: harness.schema.url,
    sse: { ...configDefaults.sse, deliveredFlushMs: 200, presenceGraceMs: 500 },
  });
  const app = await buildApp({
    config,
    logger: pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" }),
    registry: new Registry(),
    bus: harness.bus,
    projection: createProjectionReader(harness.schema.pool),
    pool: harness.schema.pool,
    readiness: {},
    realtime: {
      pool: harness.schema.pool,
      databaseUrl: harness.schema.url,
      channel: eventsChannel(harness.schema.schema),
    },
  });
  const url = await app.listen({ port: 0, host: "127.0.0.1" });
  return { app, url };
}

beforeAll(async () => {
  h = await startHarness("api_rtp", {}, 8);
  [ana, ben] = await Promise.all([h.login("ana"), h.login("ben")]);
  for (let i = 0; i < 3; i++) {
    const res = await h.app.inject({
      method: "POST",
      url: "/v1/conversations",
      headers: { authorization: `Bearer ${ana}` },
      payload: { kind: "group", title: `g${i}`, members: ["ben"] },
    });
    groups.push(res.json().conversationId);
  }
  await eventually("the groups", async () => {
    const res = await h.app.inject({
      method: "GET",
      url: "/v1/me/conversations",
      headers: { authorization: `Bearer ${ben}` },
    });
    return res.json().conversations.length === 3;
  });
  // Every partition without a group other partition gets a record that is
  // dead-lettered (a receipt in no conversation): committed, so process A's hub has
  // seen its offset, but absent from event_log, and nothing follows it there.
  const { rows: parts } = await h.schema.pool.query<{ partition: number }>(
    "SELECT partition FROM conversations WHERE conversation_id = ANY($1)",
    [groups],
  );
  const used = new Set(parts.map((r) => r.partition));
  for (let i = 0; tails.size + used.size < 8 && i < 500; i++) {
    const key = `nowhere-${i}`;
    const { partition } = await h.bus.send(key, {
      type: "chat.receipt.read",
      userId: "stranger",
      upToSeq: 1,
    });
    if (!used.has(partition)) tails.add(partition);
  }
  expect(tails.size).toBeGreaterThan(0);
  await eventually("the dead letters", async () => {
    const { rows } = await h.schema.pool.query("SELECT count(*)::int AS n FROM dead_letters");
    return rows[0].n >= tails.size;
  });
  b = await startSecond(h);
});

afterAll(async () => {
  await b?.app.close();
  await h?.close();
});

const messages = (events: SseMessage[]) => events.filter((e) => e.event === "chat.message.sent");
const textOf = (e: SseMessage) => (e.data.data as { content: { text: string } }).content.text;

async function send(conversationId: string, text: string): Promise<void> {
  const res = await h.app.inject({
    method: "POST",
    url: `/v1/conversations/${conversationId}/messages`,
    headers: { authorization: `Bearer ${ana}` },
    payload: { content: { type: "text", text } },
  });
  expect(res.statusCode, res.body).toBe(202);
}

describe("resume on another process", () => {
  it("resumes a position from process A on process B with exactly the missed events", async () => {
    const first = await openSse(h.url, ben);
    const sent: string[] = [];
    for (let i = 0; i < 120; i++) {
      sent.push(`m${i}`);
      await send(groups[i % 3]!, `m${i}`);
      if (i === 40) await eventually("the first messages", () => messages(first.events).length >= 30);
    }
    const lastId = first.lastId();
    first.close();
    expect(first.events.filter((e) => e.event === "reset")).toEqual([]);
    // The position names partitions whose last committed record is not in event_log.
    expect(Object.keys(decodeEventCursor(lastId!) ?? {}).some((p) => tails.has(Number(p)))).toBe(true);
    const seenOnA = messages(first.events).filter((e) => e.id !== undefined);
    // B started after a dead letter ended partitions A had seen: it still accepts A's position.
    const second = await openSse(b.url, ben, lastId);
    await eventually(
      "every message across both streams",
      () => seenOnA.length + messages(second.events).length >= sent.length,
    );
    await send(groups[0]!, "marker");
    await eventually("the marker", () => messages(second.events).some((e) => textOf(e) === "marker"));
    second.close();
    expect(second.events.filter((e) => e.event === "reset")).toEqual([]);
    const all = [...seenOnA, ...messages(second.events)].map(textOf).filter((t) => t !== "marker");
    expect(all.length).toBe(sent.length); // none twice
    expect([...all].sort()).toEqual([...sent].sort()); // none lost
    const seqs: Record<string, number[]> = {};
    for (const e of [...seenOnA, ...messages(second.events)]) {
      const id = e.data.conversationId as string;
      seqs[id] ??= [];
      seqs[id].push(e.data.seq as number);
    }
    for (const [id, list] of Object.entries(seqs)) expect(list, id).toEqual([...list].sort((x, y) => x - y));
  });

  it("still resets a position that is really ahead of the projection", async () => {
    const stream = await openSse(b.url, ben, "0:99999999.1:99999999");
    await eventually("the reset", () => stream.events.some((e) => e.event === "reset"));
    stream.close();
    expect(stream.events.find((e) => e.event === "reset")?.data.reason).toMatch(/ahead/);
  });
});
