/**
 * SSE against the real stack (Kafka, the materialiser, PostgreSQL LISTEN): resume
 * with Last-Event-ID across several conversations gives exactly the missed events,
 * once, in per-conversation order (with our client and with curl); delivery
 * states go sent → delivered → read; refused input never reaches Kafka.
 */
import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually, type Harness, openSse, parseSse, type SseMessage, startHarness } from "./harness.ts";

let h: Harness;
let ana: string;
let ben: string;
const groups: string[] = [];

beforeAll(async () => {
  // Presence grace 500 ms (harness); a resume further behind than 30 events is reset.
  h = await startHarness("api_rt", { sse: { heartbeatMs: 300, resumeMaxEvents: 30 } });
  [ana, ben] = await Promise.all([h.login("ana"), h.login("ben")]);
  for (let i = 0; i < 3; i++) {
    const res = await h.app.inject({
      method: "POST",
      url: "/v1/conversations",
      headers: { authorization: `Bearer ${ana}` },
      payload: { kind: "group", title: `g${i}`, members: ["ben"] },
    });
    expect(res.statusCode).toBe(202);
    groups.push(res.json().conversationId);
  }
  await eventually("the groups to be materialised", async () => {
    const res = await h.app.inject({
      method: "GET",
      url: "/v1/me/conversations",
      headers: { authorization: `Bearer ${ben}` },
    });
    return res.json().conversations.length === 3;
  });
});

afterAll(async () => {
  await h?.close();
});

async function send(token: string, conversationId: string, text: string) {
  const res = await h.app.inject({
    method: "POST",
    url: `/v1/conversations/${conversationId}/messages`,
    headers: { authorization: `Bearer ${token}` },
    payload: { content: { type: "text", text } },
  });
  expect(res.statusCode, res.body).toBe(202);
  return res.json() as { eventId: string; partition: number; offset: string };
}

const texts = (events: SseMessage[]) =>
  events
    .filter((e) => e.event === "chat.message.sent")
    .map((e) => (e.data.data as { content: { text: string } }).content.text);

/** Per conversation, the seqs of message events in arrival order. */
function seqsByConversation(events: SseMessage[]): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const e of events.filter((x) => x.event === "chat.message.sent")) {
    const id = e.data.conversationId as string;
    if (!out[id]) out[id] = [];
    out[id].push(e.data.seq as number);
  }
  return out;
}

describe("SSE resume", () => {
  it("gives a reconnecting client exactly the missed events, once, in per-conversation order", async () => {
    const first = await openSse(h.url, ben);
    expect(first.status).toBe(200);
    expect(first.headers.get("content-type")).toContain("text/event-stream");
    expect(first.headers.get("x-accel-buffering")).toBe("no");
    await send(ana, groups[0]!, "before-1");
    await send(ben, groups[1]!, "before-2");
    await eventually("ben to receive the first messages", () => texts(first.events).length === 2);
    const lastId = first.lastId();
    expect(lastId).toMatch(/^\d+:\d+(\.\d+:\d+)*$/);
    first.close();

    const missed: string[] = [];
    for (let round = 0; round < 3; round++) {
      for (const [i, conversationId] of groups.entries()) {
        const text = `missed-${round}-${i}`;
        missed.push(text);
        await send(round % 2 === 0 ? ana : ben, conversationId, text);
      }
    }
    const second = await openSse(h.url, ben, lastId);
    await eventually("the missed messages", () => texts(second.events).length >= missed.length);
    // A marker after the catch-up proves nothing else (no duplicate) was queued before it.
    await send(ana, groups[2]!, "marker");
    await eventually("the marker", () => texts(second.events).includes("marker"));
    second.close();

    const received = texts(second.events);
    expect(received.filter((t) => t !== "marker").sort()).toEqual([...missed].sort());
    expect(new Set(received).size).toBe(received.length);
    for (const [conversationId, seqs] of Object.entries(seqsByConversation(second.events))) {
      expect(seqs, conversationId).toEqual([...seqs].sort((a, b) => a - b));
      expect(seqs.length, conversationId).toBe(new Set(seqs).size);
    }
    expect(second.events.some((e) => e.event === "reset")).toBe(false);
  });

  it("resumes the same way with curl as the client", async () => {
    const first = await openSse(h.url, ben);
    await send(ana, groups[1]!, "curl-before");
    await eventually("the message before the disconnect", () => texts(first.events).includes("curl-before"));
    const lastId = first.lastId()!;
    first.close();
    const missed = ["curl-a", "curl-b", "curl-c"];
    for (const [i, text] of missed.entries()) await send(i % 2 ? ben : ana, groups[i]!, text);

    const curl = spawn("curl", [
      "-sS",
      "-N",
      "-H",
      `Authorization: Bearer ${ben}`,
      "-H",
      `Last-Event-ID: ${lastId}`,
      `${h.url}/v1/me/events`,
    ]);
    let raw = "";
    curl.stdout.on("data", (chunk: Buffer) => {
      raw += chunk.toString();
    });
    try {
      await eventually("curl to print the missed messages", () => texts(parseSse(raw).events).length >= 3);
      await send(ana, groups[0]!, "curl-marker");
      await eventually("curl to print the marker", () => texts(parseSse(raw).events).includes("curl-marker"));
      await eventually("a heartbeat comment", () => raw.includes(": heartbeat\n\n"));
    } finally {
      curl.kill();
    }
    const received = texts(parseSse(raw).events);
    expect(received).toEqual(expect.arrayContaining(missed));
    expect(received.filter((t) => t !== "curl-marker").sort()).toEqual([...missed].sort());
  });

  it("sends a reset event for a Last-Event-ID it cannot resume from", async () => {
    const client = await openSse(h.url, ben, "not-a-cursor");
    await eventually("the reset event", () => client.events.find((e) => e.event === "reset"));
    client.close();
    const reset = client.events.find((e) => e.event === "reset")!;
    expect(reset.id).toMatch(/^\d+:\d+/);
    expect(String(reset.data.reason)).toContain("Last-Event-ID");
  });

  it("sends a reset event, not a gap, to a client too far behind, then carries on live", async () => {
    const first = await openSse(h.url, ben);
    await send(ana, groups[0]!, "before-far");
    await eventually("the message before the disconnect", () => texts(first.events).includes("before-far"));
    const lastId = first.lastId()!;
    first.close();
    for (let i = 0; i < 35; i++) {
      const res = await h.app.inject({
        method: "POST",
        url: `/v1/conversations/${groups[i % 3]}/messages`,
        headers: { authorization: `Bearer ${ana}` },
        payload: { content: { type: "text", text: `far-${i}` } },
      });
      expect(res.statusCode).toBe(202);
    }
    await eventually("the 35 messages materialised", async () => {
      const res = await h.app.inject({
        method: "GET",
        url: "/v1/me/conversations",
        headers: { authorization: `Bearer ${ben}` },
      });
      const texts = res
        .json()
        .conversations.map(
          (c: { lastMessage: { content: { text: string } } }) => c.lastMessage?.content?.text,
        );
      return ["far-32", "far-33", "far-34"].every((t) => texts.includes(t));
    });
    const second = await openSse(h.url, ben, lastId);
    try {
      const reset = await eventually("the reset", () => second.events.find((e) => e.event === "reset"));
      expect(String(reset.data.reason)).toContain("more than 30 events");
      await send(ana, groups[1]!, "after-reset");
      await eventually("live after the reset", () => texts(second.events).includes("after-reset"));
      expect(texts(second.events).filter((t) => t.startsWith("far-")).length).toBeLessThanOrEqual(30);
    } finally {
      second.close();
    }
  });

  it("refuses a stream without a valid token, with JSON", async () => {
    const res = await fetch(`${h.url}/v1/me/events?access_token=forged.token.value`);
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("CHATBUS_UNAUTHORIZED");
  });
});

describe("presence", () => {
  it("announces online to fellow members, and offline only after the grace period (no flap on reconnect)", async () => {
    const [carol, dave] = await Promise.all([h.login("carol"), h.login("dave")]);
    const created = await h.app.inject({
      method: "POST",
      url: "/v1/conversations",
      headers: { authorization: `Bearer ${carol}` },
      payload: { kind: "direct", members: ["dave"] },
    });
    expect(created.json().conversationId).toBe("dm:carol:dave");
    await eventually("the direct conversation", async () => {
      const res = await h.app.inject({
        method: "GET",
        url: "/v1/me/conversations",
        headers: { authorization: `Bearer ${dave}` },
      });
      return res.json().conversations.length === 1;
    });
    const watcher = await openSse(h.url, carol);
    const presence = () =>
      watcher.events.filter((e) => e.event === "presence").map((e) => `${e.data.userId}:${e.data.status}`);
    try {
      const first = await openSse(h.url, dave);
      await eventually("dave online", () => presence().includes("dave:online"));
      // The greeting (carol online) follows the stream's catch-up; dave's announcement races it.
      await eventually("carol's presence greeting dave", () =>
        first.events.some((e) => e.event === "presence" && e.data.userId === "carol"),
      );
      first.close();
      const again = await openSse(h.url, dave); // reconnect within the grace period
      await new Promise((r) => setTimeout(r, 800)); // longer than the 500 ms grace: an offline would have come
      expect(presence()).toEqual(["dave:online"]);
      const closedAt = Date.now();
      again.close();
      await eventually("dave offline", () => presence().includes("dave:offline"));
      expect(Date.now() - closedAt).toBeGreaterThanOrEqual(450);
    } finally {
      watcher.close();
    }
  });
});

describe("delivery states", () => {
  it("shows the sender sent, then delivered when the recipient's stream has it, then read", async () => {
    const conversation = groups[0]!;
    const { eventId } = await send(ana, conversation, "track me");
    const status = async () => {
      const res = await h.app.inject({
        method: "GET",
        url: `/v1/conversations/${conversation}/messages?limit=5`,
        headers: { authorization: `Bearer ${ana}` },
      });
      const message = res.json().messages.find((m: { id: string }) => m.id === eventId);
      return message as { seq: number; delivery: { status: string } } | undefined;
    };
    const sent = await eventually("the message in history", status);
    expect(sent.delivery.status).toBe("sent");

    const stream = await openSse(h.url, ben, undefined);
    try {
      // Opened after the send: resume from before it so the stream delivers it.
      await send(ana, conversation, "nudge");
      await eventually("the stream to deliver", () => texts(stream.events).includes("nudge"));
      const delivered = await eventually("delivered", async () => {
        const m = await status();
        return m?.delivery.status === "delivered" ? m : undefined;
      });
      const read = await h.app.inject({
        method: "POST",
        url: `/v1/conversations/${conversation}/read`,
        headers: { authorization: `Bearer ${ben}` },
        payload: { seq: delivered.seq },
      });
      expect(read.statusCode).toBe(202);
      await eventually("read", async () => (await status())?.delivery.status === "read");
      // The receipts reach the sender's stream too.
      expect(stream.events.some((e) => e.event === "chat.receipt.delivered")).toBe(true);
    } finally {
      stream.close();
    }
  });
});

describe("delivered receipts are batched", () => {
  it("records far fewer delivered receipts than messages delivered", async () => {
    const conversation = groups[2]!;
    const stream = await openSse(h.url, ben);
    try {
      const sent: { eventId: string }[] = [];
      for (let i = 0; i < 10; i++) {
        const res = await h.app.inject({
          method: "POST",
          url: `/v1/conversations/${conversation}/messages`,
          headers: { authorization: `Bearer ${ana}` },
          payload: { content: { type: "text", text: `burst-${i}` } },
        });
        sent.push(res.json());
      }
      const burst = () =>
        stream.events.filter((e) =>
          String((e.data.data as { content?: { text?: string } }).content?.text).startsWith("burst-"),
        );
      await eventually("the burst", () => burst().length === 10);
      const lastSeq = burst().at(-1)!.data.seq as number;
      const receipts = () =>
        stream.events.filter(
          (e) =>
            e.event === "chat.receipt.delivered" &&
            e.data.conversationId === conversation &&
            (e.data.data as { userId: string }).userId === "ben",
        );
      await eventually("the receipt covering the burst", () =>
        receipts().some((e) => (e.data.seq as number) >= lastSeq),
      );
      const forBurst = receipts().filter(
        (e) => (e.data.seq as number) > (burst()[0]!.data.seq as number) - 1,
      );
      expect(forBurst.length).toBeGreaterThanOrEqual(1);
      expect(forBurst.length).toBeLessThanOrEqual(4);
    } finally {
      stream.close();
    }
  });
});

describe("edits, recalls and members", () => {
  const auth = (token: string) => ({ authorization: `Bearer ${token}` });
  const history = async (token: string, conversationId: string) =>
    (
      await h.app.inject({
        method: "GET",
        url: `/v1/conversations/${conversationId}/messages?limit=200`,
        headers: auth(token),
      })
    ).json().messages as {
      id: string;
      content: { text: string } | null;
      editCount: number;
      recalledAt: string | null;
    }[];

  it("lets only the sender edit and recall, and history shows both", async () => {
    const conversation = groups[1]!;
    const { eventId } = await send(ana, conversation, "first draft");
    await eventually("the message", async () =>
      (await history(ana, conversation)).some((m) => m.id === eventId),
    );
    const url = `/v1/conversations/${conversation}/messages/${eventId}`;
    const byOther = await h.app.inject({
      method: "PATCH",
      url,
      headers: auth(ben),
      payload: { content: { type: "text", text: "hijack" } },
    });
    expect(byOther.statusCode).toBe(403);
    const edit = await h.app.inject({
      method: "PATCH",
      url,
      headers: auth(ana),
      payload: { content: { type: "text", text: "final" } },
    });
    expect(edit.statusCode).toBe(202);
    await eventually("the edit", async () => {
      const m = (await history(ben, conversation)).find((x) => x.id === eventId);
      return m?.content?.text === "final" && m.editCount === 1;
    });
    expect((await h.app.inject({ method: "DELETE", url, headers: auth(ben) })).statusCode).toBe(403);
    expect((await h.app.inject({ method: "DELETE", url, headers: auth(ana) })).statusCode).toBe(202);
    await eventually("the recall", async () => {
      const m = (await history(ben, conversation)).find((x) => x.id === eventId);
      return m?.recalledAt !== null && m?.content === null;
    });
  });

  it("adds and removes members; only owners remove others; a removed member loses access", async () => {
    const conversation = groups[2]!;
    const erin = await h.login("erin");
    const inboxOf = async (token: string) =>
      (await h.app.inject({ method: "GET", url: "/v1/me/conversations", headers: auth(token) })).json()
        .conversations as { id: string }[];
    const add = await h.app.inject({
      method: "POST",
      url: `/v1/conversations/${conversation}/members`,
      headers: auth(ana), // owners and admins add members
      payload: { userId: "erin" },
    });
    expect(add.statusCode).toBe(202);
    await eventually("erin's inbox", async () => (await inboxOf(erin)).some((c) => c.id === conversation));
    const byMember = await h.app.inject({
      method: "DELETE",
      url: `/v1/conversations/${conversation}/members/erin`,
      headers: auth(ben),
    });
    expect(byMember.statusCode).toBe(403);
    const byOwner = await h.app.inject({
      method: "DELETE",
      url: `/v1/conversations/${conversation}/members/erin`,
      headers: auth(ana),
    });
    expect(byOwner.statusCode).toBe(202);
    await eventually("erin removed", async () => !(await inboxOf(erin)).some((c) => c.id === conversation));
    const read = await h.app.inject({
      method: "GET",
      url: `/v1/conversations/${conversation}/messages`,
      headers: auth(erin),
    });
    expect(read.statusCode).toBe(403);
    expect(Object.keys(read.json())).toEqual(["error"]);
  });
});

describe("refused input reaches no one", () => {
  it("sends nothing to Kafka for bad fields, odd ids, oversized bodies and non-members", async () => {
    const before = await h.endOffsets();
    const eve = await h.login("eve");
    const attempts = [
      { token: ana, url: `/v1/conversations/${groups[0]}/messages`, payload: { content: { type: "text" } } },
      {
        token: ana,
        url: `/v1/conversations/${groups[0]}/messages`,
        payload: { content: { type: "text", text: 7 } },
      },
      {
        token: ana,
        url: `/v1/conversations/${encodeURIComponent('g"1')}/messages`,
        payload: { content: { type: "text", text: "x" } },
      },
      {
        token: ana,
        url: "/v1/conversations/g%001/messages",
        payload: { content: { type: "text", text: "x" } },
      },
      {
        token: ana,
        url: `/v1/conversations/${"g".repeat(10_000)}/messages`,
        payload: { content: { type: "text", text: "x" } },
      },
      {
        token: ana,
        url: `/v1/conversations/${groups[0]}/messages`,
        payload: { content: { type: "text", text: "x".repeat(70_000) } },
      },
      {
        token: eve,
        url: `/v1/conversations/${groups[0]}/messages`,
        payload: { content: { type: "text", text: "x" } },
      },
    ];
    const statuses: number[] = [];
    for (const a of attempts) {
      const res = await h.app.inject({
        method: "POST",
        url: a.url,
        headers: { authorization: `Bearer ${a.token}` },
        payload: a.payload,
      });
      statuses.push(res.statusCode);
      expect(Object.keys(res.json())).toEqual(["error"]);
    }
    expect(statuses).toEqual([400, 400, 400, 400, 400, 413, 403]);
    // A valid send afterwards lands, so the offsets are live: exactly one more record.
    await send(ana, groups[0]!, "valid");
    expect(await h.endOffsets()).toBe(before + 1);
  });
});
