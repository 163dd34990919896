/**
 * The API's hot paths (issue 16) on a real stack (Kafka, PostgreSQL, materialiser).
 *
 * The history page, read in one query with the members' receipt positions, answers
 * exactly what the page and the members read apart would, each message's JSON (built by
 * PostgreSQL) byte for byte what `JSON.stringify` wrote: texts that JSON escapes, custom
 * content, edits and recalls.
 *
 * The membership cache:
 * a removed member is refused within 1 s of the removal being materialised (measured
 * from the event's `materialised_at`), an added member is accepted as soon as the join
 * is materialised, a lost LISTEN connection admits nobody the cache remembers while
 * notifications cannot arrive, and the bound holds.
 *
 * The history cache: the newest page is answered from memory, and a new message or a
 * read receipt is on it within 1 s of being materialised; while LISTEN is down the page
 * is read from the database.
 *
 * The LISTEN tests run a second API app whose LISTEN connection goes through a small
 * TCP proxy: the backend is killed with pg_terminate_backend and the proxy refuses the
 * reconnect until the removal is materialised, so the removal's NOTIFY is surely missed.
 */
import net from "node:net";
import {
  createProjectionReader,
  eventsChannel,
  type HistoryOptions,
  type MessageView,
} from "@chatbus/consumer-runtime/materialiser";
import pino from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { uniqueName } from "../../test/support/isolation.ts";
import type { ApiApp } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { configDefaults } from "../src/config.ts";
import { deliveryOf } from "../src/delivery.ts";
import { eventually, type Harness, startHarness } from "./harness.ts";

/** A TCP proxy to PostgreSQL that can refuse new connections. */
async function startProxy(target: URL) {
  let refusing = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", end);
      s.on("close", () => {
        sockets.delete(s);
        end();
      });
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    refuse(on: boolean) {
      refusing = on;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

let h: Harness;
const tokens = new Map<string, string>();

async function token(user: string): Promise<string> {
  if (!tokens.has(user)) tokens.set(user, await h.login(user));
  return tokens.get(user)!;
}

/** A message as the history route answers it, without `delivery`: as `JSON.stringify` wrote it when the route built objects. */
function messageResponse(m: MessageView) {
  return {
    id: m.eventId,
    seq: m.seq,
    senderId: m.senderId,
    clientMsgId: m.clientMsgId,
    content: m.content,
    priority: m.priority,
    sentAt: m.sentAt.toISOString(),
    editedAt: m.editedAt?.toISOString() ?? null,
    editCount: m.editCount,
    recalledAt: m.recalledAt?.toISOString() ?? null,
    recalledBy: m.recalledBy,
  };
}

async function send(app: ApiApp, user: string, conversationId: string, text = "hi"): Promise<number> {
  const res = await app.inject({
    method: "POST",
    url: `/v1/conversations/${conversationId}/messages`,
    headers: { authorization: `Bearer ${await token(user)}` },
    payload: { content: { type: "text", text } },
  });
  return res.statusCode;
}

interface PageJson {
  messages: { seq: number; content: { text: string }; delivery: { readBy: number } | null }[];
}

/** The newest page of 50 as `user` reads it. */
async function newestPage(app: ApiApp, user: string, conversationId: string): Promise<PageJson> {
  const res = await app.inject({
    method: "GET",
    url: `/v1/conversations/${conversationId}/messages?limit=50`,
    headers: { authorization: `Bearer ${await token(user)}` },
  });
  expect(res.statusCode).toBe(200);
  return res.json();
}

/** When the message with `text` was materialised (ms since the epoch), once it is. */
function messageMaterialisedAt(conversationId: string, text: string): Promise<number> {
  return eventually(`the message "${text}" materialised`, async () => {
    const { rows } = await h.schema.pool.query<{ at: number }>(
      `SELECT extract(epoch FROM materialised_at) * 1000 AS at FROM messages
        WHERE conversation_id = $1 AND content->>'text' = $2`,
      [conversationId, text],
    );
    return rows[0] ? Number(rows[0].at) : undefined;
  });
}

/** Reads the newest page every 10 ms until `ready` holds; when it first did (ms since the epoch). */
async function pageShows(
  app: ApiApp,
  user: string,
  conversationId: string,
  ready: (page: PageJson) => boolean,
): Promise<number> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (ready(await newestPage(app, user, conversationId))) return Date.now();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`the newest page of ${conversationId} did not change within 15 s`);
}

async function createGroup(owner: string, members: string[]): Promise<string> {
  const res = await h.app.inject({
    method: "POST",
    url: "/v1/conversations",
    headers: { authorization: `Bearer ${await token(owner)}` },
    payload: { kind: "group", members },
  });
  expect(res.statusCode).toBe(202);
  const id = res.json().conversationId as string;
  await eventually("the group materialised", async () => (await send(h.app, owner, id)) === 202);
  return id;
}

async function memberChange(method: "POST" | "DELETE", conversationId: string, actor: string, user: string) {
  const res = await h.app.inject({
    method,
    url:
      method === "POST"
        ? `/v1/conversations/${conversationId}/members`
        : `/v1/conversations/${conversationId}/members/${user}`,
    headers: { authorization: `Bearer ${await token(actor)}` },
    ...(method === "POST" ? { payload: { userId: user } } : {}),
  });
  expect(res.statusCode).toBe(202);
}

/** When the member event of `userId` was materialised (ms since the epoch), once it is. */
function materialisedAt(conversationId: string, type: string, userId: string): Promise<number> {
  return eventually(`${type} of ${userId} materialised`, async () => {
    const { rows } = await h.schema.pool.query<{ at: number }>(
      `SELECT extract(epoch FROM materialised_at) * 1000 AS at FROM event_log
        WHERE conversation_id = $1 AND type = $2 AND payload->>'userId' = $3`,
      [conversationId, type, userId],
    );
    return rows[0] ? Number(rows[0].at) : undefined;
  });
}

async function metric(app: ApiApp, name: string): Promise<number> {
  const text = (await app.inject({ method: "GET", url: "/metrics" })).body;
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`metric ${name} is not on /metrics`);
  return Number(line.slice(name.length + 1));
}

beforeAll(async () => {
  h = await startHarness("api_mcache", { rateLimits: { ...configDefaults.rateLimits, enabled: false } });
});
afterAll(async () => {
  await h?.close();
});

describe("membership cache", () => {
  it("refuses a removed member within 1 s of the removal being materialised", async () => {
    const id = await createGroup("ana", ["ana", "ben"]);
    expect(await send(h.app, "ben", id)).toBe(202);
    const hits = await metric(h.app, "chatbus_membership_cache_hits_total");
    expect(await send(h.app, "ben", id)).toBe(202);
    // The check is meaningful only if ben's send is answered from the cache.
    expect(await metric(h.app, "chatbus_membership_cache_hits_total")).toBeGreaterThan(hits);
    await memberChange("DELETE", id, "ana", "ben");
    let refusedAt: number | undefined;
    const deadline = Date.now() + 15_000;
    while (refusedAt === undefined && Date.now() < deadline) {
      const status = await send(h.app, "ben", id);
      if (status === 403) refusedAt = Date.now();
      // 429: admitted as a member, then held by the SDK's per-conversation rate (40/s in a group).
      else expect([202, 429]).toContain(status);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const removedAt = await materialisedAt(id, "chat.member.left", "ben");
    expect(refusedAt, "ben was still admitted 15 s after his removal").toBeDefined();
    expect(refusedAt! - removedAt).toBeLessThan(1000);
    expect(await send(h.app, "ben", id)).toBe(403);
  });

  it("accepts an added member as soon as the join is materialised", async () => {
    const id = await createGroup("ana", ["ana"]);
    expect(await send(h.app, "cat", id)).toBe(403);
    expect(await send(h.app, "cat", id)).toBe(403);
    await memberChange("POST", id, "ana", "cat");
    await materialisedAt(id, "chat.member.joined", "cat");
    expect(await send(h.app, "cat", id)).toBe(202);
  });

  describe("on an app whose LISTEN connection goes through a proxy", () => {
    let proxy: Awaited<ReturnType<typeof startProxy>>;
    let b: ApiApp;
    const applicationName = uniqueName("mcache-listen");

    beforeAll(async () => {
      const target = new URL(h.schema.url);
      proxy = await startProxy(target);
      const viaProxy = new URL(h.schema.url);
      viaProxy.hostname = "127.0.0.1";
      viaProxy.port = String(proxy.port);
      viaProxy.searchParams.set("application_name", applicationName);
      b = await buildApp({
        config: { ...h.config, membershipCacheSize: 6 },
        logger: pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" }),
        registry: new Registry(),
        bus: h.bus,
        projection: createProjectionReader(h.schema.pool),
        pool: h.schema.pool,
        readiness: {},
        realtime: {
          pool: h.schema.pool,
          databaseUrl: viaProxy.toString(),
          channel: eventsChannel(h.schema.schema),
        },
      });
    });
    afterAll(async () => {
      await b?.close();
      await proxy?.close();
    });

    it("admits nobody it remembers while LISTEN is down: a removal then is not missed", async () => {
      const id = await createGroup("ana", ["ana", "dan"]);
      expect(await metric(b, "chatbus_membership_cache_live")).toBe(1);
      expect(await send(b, "dan", id)).toBe(202);
      const hits = await metric(b, "chatbus_membership_cache_hits_total");
      expect(await send(b, "dan", id)).toBe(202);
      expect(await metric(b, "chatbus_membership_cache_hits_total")).toBeGreaterThan(hits);

      proxy.refuse(true);
      const killed = await h.schema.pool.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND query = $2",
        [applicationName, `LISTEN "${eventsChannel(h.schema.schema)}"`],
      );
      expect(killed.rowCount).toBe(1);
      await eventually(
        "the cache bypassed",
        async () => (await metric(b, "chatbus_membership_cache_live")) === 0,
      );
      await memberChange("DELETE", id, "ana", "dan");
      await materialisedAt(id, "chat.member.left", "dan");
      // Its NOTIFY went to nobody here: a cache that kept dan would admit him.
      expect(await send(b, "dan", id)).toBe(403);

      proxy.refuse(false);
      await eventually("LISTEN back", async () => (await metric(b, "chatbus_membership_cache_live")) === 1);
      expect(await send(b, "dan", id)).toBe(403);
      expect(await send(b, "ana", id)).toBe(202);
      const again = await metric(b, "chatbus_membership_cache_hits_total");
      expect(await send(b, "ana", id)).toBe(202);
      expect(await metric(b, "chatbus_membership_cache_hits_total")).toBeGreaterThan(again);
    });

    it("history: reads the database while LISTEN is down, so a message then is not missed", async () => {
      const id = await createGroup("ana", ["ana", "fay"]);
      await pageShows(b, "fay", id, (p) => p.messages.length > 0); // the group's first message
      const hits = await metric(b, "chatbus_history_cache_hits_total");
      const cached = await newestPage(b, "fay", id);
      expect(await metric(b, "chatbus_history_cache_hits_total")).toBe(hits + 1);

      proxy.refuse(true);
      try {
        await h.schema.pool.query(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND query = $2",
          [applicationName, `LISTEN "${eventsChannel(h.schema.schema)}"`],
        );
        await eventually(
          "the cache bypassed",
          async () => (await metric(b, "chatbus_membership_cache_live")) === 0,
        );
        expect(await send(h.app, "ana", id, "while b is deaf")).toBe(202);
        await messageMaterialisedAt(id, "while b is deaf");
        // Its NOTIFY went to nobody here: a cache that kept the page would not show it.
        const page = await newestPage(b, "fay", id);
        expect(page.messages).toHaveLength(cached.messages.length + 1);
        expect(page.messages.at(-1)!.content.text).toBe("while b is deaf");
      } finally {
        proxy.refuse(false);
      }
      await eventually("LISTEN back", async () => (await metric(b, "chatbus_membership_cache_live")) === 1);
      expect((await newestPage(b, "fay", id)).messages.at(-1)!.content.text).toBe("while b is deaf");
    });

    it("holds its bound, evicting the least recently used conversations", async () => {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push(await createGroup("eve", ["eve"]));
      const evictions = await metric(b, "chatbus_membership_cache_evictions_total");
      for (const id of ids) {
        expect(await send(b, "eve", id)).toBe(202); // each conversation and eve: two entries
        expect(await metric(b, "chatbus_membership_cache_entries")).toBeLessThanOrEqual(6);
      }
      // Three conversations of two entries each; the rest (and what earlier tests left) evicted.
      expect(await metric(b, "chatbus_membership_cache_entries")).toBe(6);
      expect(await metric(b, "chatbus_membership_cache_evictions_total")).toBeGreaterThanOrEqual(
        evictions + 2,
      );
      // The most recent is a hit; the first was evicted and is read again (still admitted).
      const hits = await metric(b, "chatbus_membership_cache_hits_total");
      expect(await send(b, "eve", ids[4]!)).toBe(202);
      expect(await metric(b, "chatbus_membership_cache_hits_total")).toBe(hits + 1);
      expect(await send(b, "eve", ids[0]!)).toBe(202);
      expect(await metric(b, "chatbus_membership_cache_hits_total")).toBe(hits + 1);
    });
  });
});

describe("history cache", () => {
  it("serves the newest page from memory; a new message is on it within 1 s of being materialised", async () => {
    const id = await createGroup("ana", ["ana", "ben"]);
    await pageShows(h.app, "ben", id, (p) => p.messages.length > 0); // the group's first message
    const first = await newestPage(h.app, "ben", id);
    const hits = await metric(h.app, "chatbus_history_cache_hits_total");
    expect(await newestPage(h.app, "ben", id)).toEqual(first);
    expect(await newestPage(h.app, "ana", id)).toBeDefined();
    // The check below is meaningful only if the page is answered from the cache.
    expect(await metric(h.app, "chatbus_history_cache_hits_total")).toBe(hits + 2);

    for (const text of ["second", "third"]) {
      expect(await send(h.app, "ana", id, text)).toBe(202);
      const shownAt = await pageShows(h.app, "ben", id, (p) => p.messages.at(-1)?.content.text === text);
      expect(shownAt - (await messageMaterialisedAt(id, text))).toBeLessThan(1000);
    }
    const page = await newestPage(h.app, "ben", id);
    expect(page.messages.slice(-2).map((m) => m.content.text)).toEqual(["second", "third"]);
    expect(page.messages.map((m) => m.seq)).toEqual(page.messages.map((_, i) => first.messages[0]!.seq + i));
  });

  it("shows a read receipt in the sender's delivery status within 1 s of it being materialised", async () => {
    const id = await createGroup("ana", ["ana", "ben"]);
    expect(await send(h.app, "ana", id, "read me")).toBe(202);
    await pageShows(h.app, "ana", id, (p) => p.messages.at(-1)?.content.text === "read me");
    const before = await newestPage(h.app, "ana", id);
    expect(before.messages.at(-1)!.delivery?.readBy).toBe(0);
    const seq = before.messages.at(-1)!.seq;
    const res = await h.app.inject({
      method: "POST",
      url: `/v1/conversations/${id}/read`,
      headers: { authorization: `Bearer ${await token("ben")}` },
      payload: { seq },
    });
    expect(res.statusCode).toBe(202);
    const shownAt = await pageShows(h.app, "ana", id, (p) => p.messages.at(-1)?.delivery?.readBy === 1);
    const readAt = await eventually("ben's read receipt materialised", async () => {
      const { rows } = await h.schema.pool.query<{ at: number }>(
        `SELECT extract(epoch FROM materialised_at) * 1000 AS at FROM event_log
          WHERE conversation_id = $1 AND type = 'chat.receipt.read'`,
        [id],
      );
      return rows[0] ? Number(rows[0].at) : undefined;
    });
    expect(shownAt - readAt).toBeLessThan(1000);
  });
});

describe("history page", () => {
  it("reads the page and the members' positions in one query, as the two reads apart", async () => {
    const id = await createGroup("ana", ["ana", "ben", "cy", "dee"]);
    // Texts that JSON escapes (PostgreSQL writes plain text content into the page's JSON).
    const texts = [
      "hi",
      "hi",
      'a "quote", a \\ and a /',
      "lines\nand\ttabs\r\b\f, \u0001, \u001f, \u007f; é, 😀 and \u2028",
    ];
    for (const text of texts) expect(await send(h.app, "ana", id, text)).toBe(202);
    // Custom content, with a client message id: the page's JSON gets it from JSON.stringify.
    const custom = await h.app.inject({
      method: "POST",
      url: `/v1/conversations/${id}/messages`,
      headers: { authorization: `Bearer ${await token("ben")}` },
      payload: {
        content: {
          type: "custom",
          customType: "red_packet",
          data: {
            amount: 888.5,
            currency: "CNY",
            greeting: "恭喜发财",
            nested: { list: [1, "two", null, true] },
          },
          description: "[Red packet]",
        },
        clientMsgId: "ben-1",
      },
    });
    expect(custom.statusCode).toBe(202);
    const reader = createProjectionReader(h.schema.pool);
    await eventually("6 messages", async () => (await reader.conversation(id))?.lastSeq === 6);
    // An edited and a recalled message: every time column of a page has a value somewhere.
    const [, second, third] = await reader.history(id, { limit: 3, after: 0 });
    const auth = { authorization: `Bearer ${await token("ana")}` };
    const edit = await h.app.inject({
      method: "PATCH",
      url: `/v1/conversations/${id}/messages/${second!.eventId}`,
      headers: auth,
      payload: { content: { type: "text", text: 'edited, "quoted"\n' } },
    });
    expect(edit.statusCode).toBe(202);
    const recall = await h.app.inject({
      method: "DELETE",
      url: `/v1/conversations/${id}/messages/${third!.eventId}`,
      headers: auth,
    });
    expect(recall.statusCode).toBe(202);
    await eventually("the edit and the recall", async () => {
      const [, edited, recalled] = await reader.history(id, { limit: 3, after: 0 });
      return edited!.editedAt !== null && recalled!.recalledAt !== null;
    });
    const read = async (user: string, seq: number) => {
      const res = await h.app.inject({
        method: "POST",
        url: `/v1/conversations/${id}/read`,
        headers: { authorization: `Bearer ${await token(user)}` },
        payload: { seq },
      });
      expect(res.statusCode).toBe(202);
    };
    await read("ben", 3);
    await read("cy", 6);
    await memberChange("DELETE", id, "ana", "dee"); // a former member counts for nobody
    await eventually("the receipts and the removal", async () => {
      const members = await reader.members(id);
      const seq = (user: string) => members.find((m) => m.userId === user)?.lastReadSeq;
      return members.length === 3 && seq("ben") === 3 && seq("cy") === 6;
    });

    const options: HistoryOptions[] = [
      { limit: 50 },
      { limit: 2 },
      { limit: 3, after: 1 },
      { limit: 50, before: 4 },
      { limit: 50, after: 2, before: 5 },
      { limit: 50, after: 6 }, // empty
    ];
    for (const o of options) {
      const [page, history, members] = await Promise.all([
        reader.historyPage(id, o),
        reader.history(id, o),
        reader.members(id),
      ]);
      // The same messages, byte for byte as JSON.stringify wrote them (times as `toISOString` writes them).
      expect(page.messages).toEqual(
        history.map((m) => ({
          seq: m.seq,
          senderId: m.senderId,
          json: JSON.stringify(messageResponse(m)),
        })),
      );
      if (history.length === 0) expect(page.positions).toEqual([]);
      else
        expect([...page.positions].sort((a, b) => (a.userId < b.userId ? -1 : 1))).toEqual(
          members.map((m) => ({
            userId: m.userId,
            lastDeliveredSeq: m.lastDeliveredSeq,
            lastReadSeq: m.lastReadSeq,
          })),
        );
    }
    const res = await h.app.inject({
      method: "GET",
      url: `/v1/conversations/${id}/messages?limit=50`,
      headers: { authorization: `Bearer ${await token("ana")}` },
    });
    expect(res.statusCode).toBe(200);
    const members = await reader.members(id);
    const delivery = res
      .json()
      .messages.map((m: { seq: number; senderId: string; delivery: unknown }) => [m.seq, m.delivery]);
    const expected = (await reader.history(id, { limit: 50 })).map((m) => [m.seq, deliveryOf(m, members)]);
    expect(delivery).toEqual(expected);
    // Byte for byte the answer of the route when it formatted pg's Dates itself.
    const all = await reader.history(id, { limit: 50 });
    expect(res.body).toBe(
      JSON.stringify({
        messages: all.map((m) => ({ ...messageResponse(m), delivery: deliveryOf(m, members) })),
        limit: 50,
        nextAfter: all.at(-1)!.seq,
        prevBefore: all[0]!.seq,
      }),
    );
    // The same page by cursor (never from the history cache): the same bytes.
    const byCursor = await h.app.inject({
      method: "GET",
      url: `/v1/conversations/${id}/messages?limit=50&before=7`,
      headers: { authorization: `Bearer ${await token("ana")}` },
    });
    expect(byCursor.headers["content-type"]).toBe(res.headers["content-type"]);
    expect(byCursor.body).toBe(res.body);
    // Not all alike: ben read 3 of ana's 5 messages, cy all of them; dee left and counts for nobody.
    const counts = expected.slice(0, 5).map(([, d]) => {
      const { readBy, recipients } = d as { readBy: number; recipients: number };
      return [readBy, recipients];
    });
    expect(counts).toEqual([
      [2, 2],
      [2, 2],
      [2, 2],
      [1, 2],
      [1, 2],
    ]);
  });
});
