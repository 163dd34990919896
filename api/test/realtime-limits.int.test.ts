/**
 * Limits of SSE streams against the real stack (issue 13.6–13.8): a stream ends at
 * its token's expiry and resumes with a fresh token; streams per user and the
 * conversations a stream follows are bounded (at the limit and past it); a stream
 * that opens while its user is being removed does not keep the conversation.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  eventually,
  type Harness,
  openSse,
  type SseClient,
  type SseMessage,
  startHarness,
} from "./harness.ts";
import { type ApiOn, startApiOn } from "./realtime-apps.ts";

let h: Harness;
let ana: string;
const extra: ApiOn[] = [];

beforeAll(async () => {
  h = await startHarness("api_rtl");
  ana = await h.login("ana");
});

afterAll(async () => {
  for (const api of extra) await api.app.close();
  await h?.close();
});

async function api(overrides: Parameters<typeof startApiOn>[1]): Promise<ApiOn> {
  const started = await startApiOn(h, overrides);
  extra.push(started);
  return started;
}

async function login(on: ApiOn | Harness, user: string): Promise<string> {
  const res = await on.app.inject({ method: "POST", url: "/v1/dev/login", payload: { username: user } });
  return res.json().token as string;
}

async function group(title: string, members: string[]): Promise<string> {
  const res = await h.app.inject({
    method: "POST",
    url: "/v1/conversations",
    headers: { authorization: `Bearer ${ana}` },
    payload: { kind: "group", title, members },
  });
  expect(res.statusCode, res.body).toBe(202);
  return res.json().conversationId as string;
}

async function send(conversationId: string, text: string): Promise<void> {
  const res = await h.app.inject({
    method: "POST",
    url: `/v1/conversations/${conversationId}/messages`,
    headers: { authorization: `Bearer ${ana}` },
    payload: { content: { type: "text", text } },
  });
  expect(res.statusCode, res.body).toBe(202);
}

async function conversationsOf(token: string, n: number): Promise<void> {
  await eventually(`${n} conversations`, async () => {
    const res = await h.app.inject({
      method: "GET",
      url: "/v1/me/conversations",
      headers: { authorization: `Bearer ${token}` },
    });
    return res.json().conversations.length === n;
  });
}

const texts = (events: SseMessage[]) =>
  events
    .filter((e) => e.event === "chat.message.sent")
    .map((e) => (e.data.data as { content: { text: string } }).content.text);
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("token expiry", () => {
  it("ends a stream at its token's expiry with token-expired; a fresh token resumes from the last id", async () => {
    const short = await api({ tokenTtlSeconds: 2 });
    const token = await login(short, "fay");
    const g = await group("expiry", ["fay"]);
    await conversationsOf(token, 1);
    // The token's own exp (whole seconds): the setup above may take most of its 2 s.
    const exp = (JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { exp: number })
      .exp;
    const stream = await openSse(short.url, token);
    await send(g, "before expiry");
    await eventually("the first message", () => texts(stream.events).includes("before expiry"));
    await eventually("token-expired", () => stream.events.some((e) => e.event === "token-expired"), 10_000);
    // Not before the token expired (a stream ended at once would be early).
    expect(Date.now()).toBeGreaterThanOrEqual(exp * 1000 - 50);
    await eventually("the stream to end", () => stream.ended, 5000);
    const lastId = stream.lastId();
    await send(g, "after expiry");
    await pause(500);
    expect(texts(stream.events)).not.toContain("after expiry");
    // The expired token is refused; a fresh one resumes exactly after the last id.
    const refused = await fetch(`${short.url}/v1/me/events?access_token=${encodeURIComponent(token)}`);
    expect(refused.status).toBe(401);
    const fresh = await openSse(short.url, await login(short, "fay"), lastId);
    await eventually("the missed message", () => texts(fresh.events).includes("after expiry"));
    fresh.close();
    expect(texts(fresh.events)).toEqual(["after expiry"]);
    expect(fresh.events.some((e) => e.event === "reset")).toBe(false);
  });
});

describe("streams per user", () => {
  it("keeps streamsPerUser streams; one more closes the oldest with a closed event", async () => {
    const limited = await api({ sse: { streamsPerUser: 3 } });
    const token = await login(limited, "gus");
    const g = await group("streams", ["gus"]);
    await conversationsOf(token, 1);
    const streams: SseClient[] = [];
    for (let i = 0; i < 3; i++) {
      streams.push(await openSse(limited.url, token));
      await pause(200); // opening order decides which one is the oldest
    }
    await send(g, "at the limit");
    await eventually("all three streams", () =>
      streams.every((s) => texts(s.events).includes("at the limit")),
    );
    expect(streams.some((s) => s.events.some((e) => e.event === "closed"))).toBe(false);
    streams.push(await openSse(limited.url, token));
    await eventually("the oldest to be closed", () => streams[0]!.ended, 10_000);
    expect(streams[0]!.events.some((e) => e.event === "closed")).toBe(true);
    await send(g, "past the limit");
    await eventually("the three newest", () =>
      streams.slice(1).every((s) => texts(s.events).includes("past the limit")),
    );
    expect(texts(streams[0]!.events)).not.toContain("past the limit");
    for (const s of streams.slice(1)) expect(s.ended).toBe(false);
    for (const s of streams) s.close();
  });
});

describe("conversations a stream follows", () => {
  it("follows the streamConversationsMax most recent conversations", async () => {
    const token = await h.login("hal");
    const [g1, g2, g3] = [await group("c1", ["hal"]), await group("c2", ["hal"]), await group("c3", ["hal"])];
    await conversationsOf(token, 3);
    await send(g3!, "make c3 the most recent");
    await pause(300);
    const atLimit = await api({ sse: { streamConversationsMax: 3 } });
    const pastLimit = await api({ sse: { streamConversationsMax: 2 } });
    const all = await openSse(atLimit.url, token);
    const two = await openSse(pastLimit.url, token);
    await pause(300);
    for (const [i, g] of [g1, g2, g3].entries()) await send(g!, `to c${i + 1}`);
    await eventually("all three at the limit", () => texts(all.events).length === 3);
    await eventually("two past the limit", () => texts(two.events).length === 2);
    await pause(500);
    all.close();
    two.close();
    expect(texts(all.events).sort()).toEqual(["to c1", "to c2", "to c3"]);
    // c1 has the oldest activity: it is the one left out.
    expect(texts(two.events).sort()).toEqual(["to c2", "to c3"]);
  });
});

describe("membership race", () => {
  it("gives no later event of a conversation to streams that opened while their user was removed", async () => {
    const users = Array.from({ length: 20 }, (_, i) => `race${i}`);
    const tokens = await Promise.all(users.map((u) => h.login(u)));
    const stay = await h.login("stayer");
    const g = await group("race", [...users, "stayer"]);
    await conversationsOf(stay, 1);
    const control = await openSse(h.url, stay);
    const streams: { user: string; client: Promise<SseClient> }[] = [];
    // Streams of every user open before, during and after each removal.
    const opening = (async () => {
      for (let round = 0; round < 4; round++) {
        for (const [i, user] of users.entries()) streams.push({ user, client: openSse(h.url, tokens[i]!) });
        await pause(150);
      }
    })();
    for (const user of users) {
      const res = await h.app.inject({
        method: "DELETE",
        url: `/v1/conversations/${g}/members/${user}`,
        headers: { authorization: `Bearer ${ana}` },
      });
      expect(res.statusCode, res.body).toBe(202);
      await pause(25);
    }
    await opening;
    const clients = await Promise.all(streams.map((s) => s.client));
    await eventually("every removal to be materialised", async () => {
      const { rows } = await h.schema.pool.query(
        "SELECT count(*)::int AS n FROM members WHERE conversation_id = $1 AND left_at IS NOT NULL",
        [g],
      );
      return rows[0].n === users.length;
    });
    await pause(1000); // the hubs dispatch the removals
    await send(g, "after the removals");
    await eventually("the control stream", () => texts(control.events).includes("after the removals"));
    await pause(1500);
    control.close();
    const leaked = clients.filter((c) => texts(c.events).includes("after the removals"));
    for (const c of clients) c.close();
    expect(clients.length).toBe(users.length * 4);
    expect(leaked.length).toBe(0);
  });
});
