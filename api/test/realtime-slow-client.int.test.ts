/**
 * A client that falls behind (issue 18 follow-up, whole-stack bench at 8,000 events/s):
 * against the real stack, with a small `sse.maxBufferedBytes`, a client that stops
 * reading while thousands of large messages arrive still gets every one, once, in
 * per-conversation order, on the same stream, once it reads again; the stream was
 * written from the event log meanwhile (`chatbus_sse_catch_ups_total`). Before the fix
 * the stream was cut off as `slow_client` and the client saw a fraction.
 *
 * A client that reads nothing at all for `sse.stalledClientMs` is disconnected (unit
 * test of `drained`); an int test of that was left out: loopback's receive buffer
 * autotunes up to `net.ipv4.tcp_rmem`'s 32 MB here, so a stuck client takes tens of MB
 * before the server's side fills.
 */
import { request } from "node:http";
import { type ChatBus, createChatBus } from "@chatbus/producer-sdk";
import pino from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import { eventually, type Harness, parseSse, type SseMessage, startHarness } from "./harness.ts";

let h: Harness;
/** A producer without the SDK's rate limit: the burst is the point. */
let bus: ChatBus;
let ben: string;
const groups: string[] = [];

/** An SSE client on a raw socket that can stop reading (fetch's body cannot). */
function pausableSse(url: string, token: string, lastEventId?: string) {
  const events: SseMessage[] = [];
  const state = { ended: false, paused: true };
  const { hostname, port } = new URL(url);
  const req = request({
    hostname,
    port,
    path: `/v1/me/events?access_token=${encodeURIComponent(token)}`,
    headers: lastEventId === undefined ? {} : { "last-event-id": lastEventId },
  });
  const opened = new Promise<import("node:http").IncomingMessage>((resolve, reject) => {
    req.on("response", resolve);
    req.on("error", reject);
  });
  req.end();
  void opened.then((res) => {
    res.setEncoding("utf8");
    let buffer = "";
    res.on("data", (chunk: string) => {
      buffer += chunk;
      const parsed = parseSse(buffer);
      buffer = parsed.rest;
      events.push(...parsed.events);
    });
    const end = () => {
      state.ended = true;
    };
    res.on("end", end);
    res.on("close", end);
    res.on("error", end);
  });
  return {
    events,
    state,
    opened,
    async pause() {
      (await opened).pause();
    },
    async resume() {
      (await opened).resume();
    },
    close: () => req.destroy(),
  };
}

const messages = (events: SseMessage[]) => events.filter((e) => e.event === "chat.message.sent");
const textOf = (e: SseMessage) => (e.data.data as { content: { text: string } }).content.text;

/** Sends `count` large messages straight to the topic (no HTTP rate limits), spread over the groups. */
async function sendBurst(tag: string, count: number): Promise<void> {
  const padding = "x".repeat(12_000);
  for (let i = 0; i < count; i += 200) {
    await Promise.all(
      Array.from({ length: Math.min(200, count - i) }, (_, j) =>
        bus.send(groups[(i + j) % groups.length]!, {
          type: "chat.message.sent",
          senderId: "ana",
          content: { type: "text", text: `${tag}-${i + j} ${padding}` },
        }),
      ),
    );
  }
}

async function materialised(tag: string, count: number): Promise<void> {
  await eventually(
    `the ${count} ${tag} messages materialised`,
    async () =>
      (
        await h.schema.pool.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM messages WHERE content->>'text' LIKE $1",
          [`${tag}-%`],
        )
      ).rows[0]!.n === count,
    60_000,
  );
}

/** Every message of `tag` exactly once, and each conversation's in ascending seq. */
function expectAllInOrder(events: SseMessage[], tag: string, count: number): void {
  const got = messages(events).filter((e) => textOf(e).startsWith(`${tag}-`));
  const numbers = got.map((e) =>
    Number(
      textOf(e)
        .split(" ")[0]!
        .slice(tag.length + 1),
    ),
  );
  expect(new Set(numbers).size, "no duplicates").toBe(numbers.length);
  expect(numbers.length, "every message").toBe(count);
  const lastSeq = new Map<string, number>();
  for (const e of got) {
    const conversationId = e.data.conversationId as string;
    expect(e.data.seq as number).toBeGreaterThan(lastSeq.get(conversationId) ?? 0);
    lastSeq.set(conversationId, e.data.seq as number);
  }
}

async function catchUps(): Promise<number> {
  const text = (await h.app.inject({ method: "GET", url: "/metrics" })).body;
  return Number(/^chatbus_sse_catch_ups_total (\d+)/m.exec(text)?.[1] ?? "0");
}

beforeAll(async () => {
  h = await startHarness("api_rt_slow", { sse: { maxBufferedBytes: 65_536, stalledClientMs: 1_500 } });
  bus = await createChatBus({
    brokers: kafkaBrokers(),
    topic: h.topic,
    partitions: 4,
    ensureTopic: false,
    rateLimit: { enabled: false },
    logger: pino({ level: "silent" }),
    registry: new Registry(),
  });
  const ana = await h.login("ana");
  ben = await h.login("ben");
  for (let i = 0; i < 4; i++) {
    const res = await h.app.inject({
      method: "POST",
      url: "/v1/conversations",
      headers: { authorization: `Bearer ${ana}` },
      payload: { kind: "group", title: `slow-${i}`, members: ["ben"] },
    });
    expect(res.statusCode, res.body).toBe(202);
    groups.push(res.json().conversationId);
  }
  await eventually("the groups materialised", async () => {
    const res = await h.app.inject({
      method: "GET",
      url: "/v1/me/conversations",
      headers: { authorization: `Bearer ${ben}` },
    });
    return res.json().conversations.length === groups.length;
  });
}, 60_000);

afterAll(async () => {
  await bus?.close();
  await h?.close();
});

describe("an SSE client that falls behind", () => {
  it("gets every event, once, in order, on the same stream once it reads again", async () => {
    const count = 2000; // 2,000 × 12 KB: far past the socket buffers and the 64 KiB bound
    const before = await catchUps();
    const client = pausableSse(h.url, ben);
    try {
      await client.opened;
      await client.pause();
      // While the client does not read, the server's side fills and the stream falls behind.
      const reading = (async () => {
        await sendBurst("burst", count);
        await materialised("burst", count);
      })();
      // Read in short spells, each shorter than stalledClientMs: slow, but reading.
      while (messages(client.events).length < count && !client.state.ended) {
        await new Promise((r) => setTimeout(r, 300));
        await client.resume();
        await new Promise((r) => setTimeout(r, 50));
        await client.pause();
      }
      await reading;
      await client.resume();
      await eventually("every message at the client", () => messages(client.events).length >= count, 60_000);
      expect(client.state.ended, "the stream stayed open").toBe(false);
      expect(client.events.filter((e) => e.event === "reset")).toEqual([]);
      expectAllInOrder(client.events, "burst", count);
      expect(await catchUps(), "the stream fell behind and was written from the log").toBeGreaterThan(before);
      // And it is live again: a new message arrives without reconnecting.
      await sendBurst("after", 1);
      await eventually("live again", () =>
        messages(client.events).some((e) => textOf(e).startsWith("after-")),
      );
    } finally {
      client.close();
    }
  }, 120_000);
});
