/**
 * Two API instances on one projection (each with its own hub, LISTEN connection and
 * presence view, as two processes have): a stream position issued by one resumes
 * exactly on the other.
 */
import { decodeEventCursor } from "@chatbus/consumer-runtime/materialiser";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { configDefaults } from "../src/config.ts";
import { eventually, type Harness, openSse, type SseMessage, startHarness } from "./harness.ts";
import { type ApiOn, startApiOn } from "./realtime-apps.ts";

let h: Harness;
let b: ApiOn;
let ana: string;
let ben: string;
const tails = new Set<number>();
const groups: string[] = [];

beforeAll(async () => {
  // 120 sends by one user in about a second: over its rate limit (20/s, bursts of 100), which is not tested here.
  h = await startHarness("api_rtp", { rateLimits: { ...configDefaults.rateLimits, enabled: false } }, 8);
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
  b = await startApiOn(h);
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

describe("one presence across processes", () => {
  it("announces one online and one offline per transition, whichever process holds the streams", async () => {
    const [carol, dave] = await Promise.all([h.login("carol"), h.login("dave")]);
    const created = await h.app.inject({
      method: "POST",
      url: "/v1/conversations",
      headers: { authorization: `Bearer ${carol}` },
      payload: { kind: "group", title: "presence", members: ["dave"] },
    });
    expect(created.statusCode).toBe(202);
    await eventually("the group", async () => {
      const res = await h.app.inject({
        method: "GET",
        url: "/v1/me/conversations",
        headers: { authorization: `Bearer ${dave}` },
      });
      return res.json().conversations.length === 1;
    });
    // Carol watches from both processes; each watcher must see each transition once.
    const onA = await openSse(h.url, carol);
    const onB = await openSse(b.url, carol);
    const seen = (w: { events: SseMessage[] }) =>
      w.events.filter((e) => e.event === "presence" && e.data.userId === "dave").map((e) => e.data.status);
    try {
      // Dave opens streams on both processes at once: one online.
      const [d1, d2] = await Promise.all([openSse(h.url, dave), openSse(b.url, dave)]);
      await eventually("dave online on both watchers", () => seen(onA).length > 0 && seen(onB).length > 0);
      // Closing the stream on A leaves the one on B: no offline, past the 500 ms grace.
      d1.close();
      await new Promise((r) => setTimeout(r, 1500));
      expect(seen(onA)).toEqual(["online"]);
      expect(seen(onB)).toEqual(["online"]);
      // The last stream closes (on B): one offline, after the grace.
      const closedAt = Date.now();
      d2.close();
      await eventually("dave offline", () => seen(onA).includes("offline") && seen(onB).includes("offline"));
      expect(Date.now() - closedAt).toBeGreaterThanOrEqual(450);
      // Back on A after the grace: online once more.
      const d3 = await openSse(h.url, dave);
      await eventually("dave online again", () => seen(onA).length === 3 && seen(onB).length === 3);
      await new Promise((r) => setTimeout(r, 500));
      d3.close();
      expect(seen(onA)).toEqual(["online", "offline", "online"]);
      expect(seen(onB)).toEqual(["online", "offline", "online"]);
    } finally {
      onA.close();
      onB.close();
    }
  });
});

describe("presence of a process that died", () => {
  it("announces offline the users whose only streams were on a process that stopped its heartbeat", async () => {
    const quick = await startApiOn(h, { sse: { presenceProcessTimeoutMs: 600 } });
    try {
      const [ivy, jon] = [await h.login("ivy"), await h.login("jon")];
      const created = await h.app.inject({
        method: "POST",
        url: "/v1/conversations",
        headers: { authorization: `Bearer ${ivy}` },
        payload: { kind: "group", title: "dead", members: ["jon"] },
      });
      expect(created.statusCode).toBe(202);
      await eventually("the group", async () => {
        const res = await h.app.inject({
          method: "GET",
          url: "/v1/me/conversations",
          headers: { authorization: `Bearer ${jon}` },
        });
        return res.json().conversations.length === 1;
      });
      // jon's stream lives on a "process" that then stops writing its heartbeat (as
      // SIGKILL leaves it); its last heartbeat counts for 2 s more.
      await h.schema.pool.query(
        "INSERT INTO api_processes (process_id, heartbeat_at) VALUES ('gone', now() + interval '2 seconds')",
      );
      await h.schema.pool.query(
        `WITH s AS (INSERT INTO presence_streams (user_id, process_id) VALUES ('jon', 'gone'))
         INSERT INTO presence (user_id, online, changed_at) VALUES ('jon', true, now())`,
      );
      const watcher = await openSse(quick.url, ivy);
      const seen = () =>
        watcher.events
          .filter((e) => e.event === "presence" && e.data.userId === "jon")
          .map((e) => e.data.status);
      await eventually("the greeting: jon online", () => seen().includes("online"), 2000);
      await eventually("jon offline", () => seen().includes("offline"), 10_000);
      expect(seen()).toEqual(["online", "offline"]);
      // A live process swept by another (as after a long pause) puts its users back.
      const kim = await openSse(quick.url, await h.login("kim"));
      const kimRows = async () =>
        (await h.schema.pool.query("SELECT process_id FROM presence_streams WHERE user_id = 'kim'")).rows
          .length;
      await eventually("kim's stream row", async () => (await kimRows()) === 1);
      await h.schema.pool.query(
        "DELETE FROM api_processes WHERE process_id IN (SELECT process_id FROM presence_streams WHERE user_id = 'kim')",
      );
      expect(await kimRows()).toBe(0);
      await eventually("kim's stream row again", async () => (await kimRows()) === 1, 5000);
      kim.close();
      watcher.close();
    } finally {
      await quick.app.close();
    }
  });
});
