/**
 * Delivered receipts in large groups (docs/decisions.md): against the real stack, a
 * group with more members than `sse.deliveredReceiptsMaxMembers` records no
 * per-member delivered receipts, a group at the bound still does, and read receipts
 * are recorded in both. Every message still reaches the stream exactly once, in order.
 * A group that shrinks to the bound gets delivered receipts again once its cached
 * member count expires (`sse.deliveredMemberCountTtlMs`, short here).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually, type Harness, openSse, type SseMessage, startHarness } from "./harness.ts";

let h: Harness;
let ana: string;
let ben: string;
let small: string; // ana, ben, cy: 3 members, at the bound
let large: string; // ana, ben, cy, dee: 4 members, above it
const memberCountTtlMs = 2_000;

async function create(members: string[]): Promise<string> {
  const res = await h.app.inject({
    method: "POST",
    url: "/v1/conversations",
    headers: { authorization: `Bearer ${ana}` },
    payload: { kind: "group", title: `g-${members.length}`, members },
  });
  expect(res.statusCode, res.body).toBe(202);
  return res.json().conversationId;
}

async function send(conversationId: string, text: string) {
  const res = await h.app.inject({
    method: "POST",
    url: `/v1/conversations/${conversationId}/messages`,
    headers: { authorization: `Bearer ${ana}` },
    payload: { content: { type: "text", text } },
  });
  expect(res.statusCode, res.body).toBe(202);
}

const receiptsIn = async (conversationId: string, type: string) =>
  (
    await h.schema.pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM event_log WHERE conversation_id = $1 AND type = $2",
      [conversationId, type],
    )
  ).rows[0]!.n;

const textsIn = (events: SseMessage[], conversationId: string) =>
  events
    .filter((e) => e.event === "chat.message.sent" && e.data.conversationId === conversationId)
    .map((e) => (e.data.data as { content: { text: string } }).content.text);

beforeAll(async () => {
  h = await startHarness("api_rt_large", {
    sse: { deliveredReceiptsMaxMembers: 3, deliveredMemberCountTtlMs: memberCountTtlMs },
  });
  [ana, ben] = await Promise.all([h.login("ana"), h.login("ben")]);
  small = await create(["ben", "cy"]);
  large = await create(["ben", "cy", "dee"]);
  await eventually("the groups to be materialised", async () => {
    const res = await h.app.inject({
      method: "GET",
      url: "/v1/me/conversations",
      headers: { authorization: `Bearer ${ben}` },
    });
    return res.json().conversations.length === 2;
  });
});

afterAll(async () => {
  await h?.close();
});

describe("delivered receipts in large groups", () => {
  it("are not recorded above the member bound, are at it, and read receipts are in both", async () => {
    const stream = await openSse(h.url, ben);
    try {
      const expected = ["m0", "m1", "m2", "m3", "m4"];
      // Messages to both groups, interleaved, so that flushes see both together.
      for (const text of expected) {
        await send(large, text);
        await send(small, text);
      }
      await eventually("every message on the stream", () => textsIn(stream.events, small).length === 5);
      await eventually("every message on the stream", () => textsIn(stream.events, large).length === 5);
      // Each exactly once, in order.
      expect(textsIn(stream.events, small)).toEqual(expected);
      expect(textsIn(stream.events, large)).toEqual(expected);
      // The small group's receipt is materialised: the flushes that would carry the large one's ran.
      await eventually("a delivered receipt in the small group", async () =>
        (await receiptsIn(small, "chat.receipt.delivered")) > 0 ? true : undefined,
      );
      await new Promise((r) => setTimeout(r, 600)); // three more flush windows (200 ms in the harness)
      expect(await receiptsIn(large, "chat.receipt.delivered")).toBe(0);
      const skipped = await (await fetch(`${h.url}/metrics`)).text();
      expect(Number(/^chatbus_delivered_receipts_skipped_total (\d+)/m.exec(skipped)?.[1])).toBeGreaterThan(
        0,
      );

      const read = await h.app.inject({
        method: "POST",
        url: `/v1/conversations/${large}/read`,
        headers: { authorization: `Bearer ${ben}` },
        payload: { seq: 5 },
      });
      expect(read.statusCode, read.body).toBe(202);
      await eventually("the read receipt in the large group", async () =>
        (await receiptsIn(large, "chat.receipt.read")) === 1 ? true : undefined,
      );
    } finally {
      stream.close();
    }
  });

  it("are recorded again once a group shrinks to the bound and its member count expires", async () => {
    const stream = await openSse(h.url, ben);
    try {
      const removed = await h.app.inject({
        method: "DELETE",
        url: `/v1/conversations/${large}/members/dee`,
        headers: { authorization: `Bearer ${ana}` },
      });
      expect(removed.statusCode, removed.body).toBe(202);
      await eventually("dee's removal materialised", async () => {
        const { rows } = await h.schema.pool.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM members WHERE conversation_id = $1 AND left_at IS NULL",
          [large],
        );
        return rows[0]!.n === 3 ? true : undefined;
      });
      // Messages keep arriving; within a TTL the cached "large" expires and the count is read again.
      let i = 0;
      await eventually(
        "a delivered receipt in the group that shrank",
        async () => {
          await send(large, `shrunk-${i++}`);
          await new Promise((r) => setTimeout(r, 250));
          return (await receiptsIn(large, "chat.receipt.delivered")) > 0 ? true : undefined;
        },
        memberCountTtlMs * 5 + 10_000,
      );
      expect(textsIn(stream.events, large).filter((t) => t.startsWith("shrunk-")).length).toBeGreaterThan(0);
    } finally {
      stream.close();
    }
  });
});
