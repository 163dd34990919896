/**
 * The membership cache's rules that a real stack cannot hit on demand: a lookup that
 * straddles an invalidation is answered but not stored, a notification without its
 * `members` list drops everything, nothing is used before LISTEN is up; and the
 * notification payload leaves the list out when it would not fit. The projection is a
 * fake whose answers the test controls (and holds back, to interleave).
 */
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { eventsNotification } from "../../consumer-runtime/src/materialiser/events-channel.ts";
import { MembershipCache } from "../src/membership-cache.ts";
import { ReadGate } from "./read-gate.ts";

function setup(maxEntries = 100) {
  const members = new Set(["c1/ana", "c1/ben", "c2/ana"]);
  const reads = { isMember: 0, conversation: 0 };
  const gate = new ReadGate();
  const projection = {
    async isMember(conversationId: string, userId: string) {
      reads.isMember++;
      const answer = members.has(`${conversationId}/${userId}`);
      await gate.passed();
      return answer;
    },
    async conversation(id: string) {
      reads.conversation++;
      return { kind: "group" as const, id } as never;
    },
  };
  const cache = new MembershipCache({ projection, maxEntries, registry: new Registry() });
  return {
    cache,
    members,
    reads,
    holdReads: () => gate.hold(),
  };
}

describe("MembershipCache", () => {
  it("reads the database until LISTEN is up, then answers members from memory", async () => {
    const { cache, reads } = setup();
    expect(await cache.memberOf("c1", "ana")).toBe("group");
    expect(await cache.memberOf("c1", "ana")).toBe("group");
    expect(reads).toEqual({ isMember: 2, conversation: 2 });
    cache.connected();
    await cache.memberOf("c1", "ana");
    await cache.memberOf("c1", "ana");
    expect(await cache.isMember("c1", "ana")).toBe(true);
    expect(reads).toEqual({ isMember: 3, conversation: 3 });
  });

  it("drops the conversations a notification names, and everything when it names none", async () => {
    const { cache, members, reads } = setup();
    cache.connected();
    await cache.memberOf("c1", "ben");
    await cache.memberOf("c2", "ana");
    members.delete("c1/ben");
    cache.notified({ members: ["c1"] });
    expect(await cache.memberOf("c1", "ben")).toBeNull();
    expect(await cache.memberOf("c2", "ana")).toBe("group"); // still cached
    expect(reads.isMember).toBe(3);
    cache.notified({ members: [] });
    await cache.memberOf("c2", "ana");
    expect(reads.isMember).toBe(3);
    cache.notified({}); // an older materialiser, or too many to list
    expect(cache.size).toBe(0);
    await cache.memberOf("c2", "ana");
    expect(reads.isMember).toBe(4);
  });

  it("does not store an answer read while an invalidation went by", async () => {
    const { cache, members, reads, holdReads } = setup();
    cache.connected();
    const release = holdReads();
    const pending = cache.isMember("c1", "ben"); // reads "member" before the removal commits
    members.delete("c1/ben");
    cache.notified({ members: ["c1"] });
    release();
    expect(await pending).toBe(true); // a request concurrent with the removal may pass
    expect(await cache.isMember("c1", "ben")).toBe(false); // but it was not remembered
    expect(reads.isMember).toBe(2);
  });

  it("does not store an answer read before LISTEN came back", async () => {
    const { cache, members, holdReads } = setup();
    cache.connected();
    await cache.isMember("c1", "ben");
    cache.lost();
    const release = holdReads();
    const pending = cache.isMember("c1", "ben");
    members.delete("c1/ben"); // committed while nobody listened
    cache.connected();
    release();
    expect(await pending).toBe(true);
    expect(await cache.isMember("c1", "ben")).toBe(false);
  });

  it("keeps at most maxEntries, least recently used out first; 0 turns it off", async () => {
    const { cache, members, reads } = setup(4);
    members.add("c3/ana");
    cache.connected();
    await cache.memberOf("c1", "ana"); // c1, ana
    await cache.memberOf("c2", "ana"); // c2, ana: 4
    await cache.memberOf("c1", "ana"); // hit: c1 is now the most recent
    await cache.memberOf("c3", "ana"); // 6 > 4: c2, the least recently used, goes
    expect(cache.size).toBe(4);
    const before = reads.isMember;
    await cache.memberOf("c1", "ana");
    expect(reads.isMember).toBe(before);
    await cache.memberOf("c2", "ana");
    expect(reads.isMember).toBe(before + 1);
    expect(cache.size).toBeLessThanOrEqual(4);

    const off = setup(0);
    off.cache.connected();
    await off.cache.memberOf("c1", "ana");
    await off.cache.memberOf("c1", "ana");
    expect(off.reads.isMember).toBe(2);
    expect(off.cache.size).toBe(0);
  });
});

describe("eventsNotification", () => {
  it("lists the changed conversations once, and leaves the list out when it would not fit", () => {
    expect(JSON.parse(eventsNotification(3, "10", "12", ["g-1", "g-2", "g-1"]))).toEqual({
      partition: 3,
      from: "10",
      to: "12",
      members: ["g-1", "g-2"],
    });
    expect(JSON.parse(eventsNotification(3, "10", "12", []))).toEqual({
      partition: 3,
      from: "10",
      to: "12",
      members: [],
    });
    const many = Array.from({ length: 100 }, (_, i) => `${"x".repeat(120)}-${i}`);
    const payload = eventsNotification(0, "1", "2", many);
    expect(JSON.parse(payload)).toEqual({ partition: 0, from: "1", to: "2" });
    expect(Buffer.byteLength(payload)).toBeLessThan(8000);
    const fits = Array.from({ length: 40 }, (_, i) => `${"x".repeat(120)}-${i}`);
    expect(JSON.parse(eventsNotification(0, "1", "2", fits)).members).toHaveLength(40);
  });
});
