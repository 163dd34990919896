/**
 * The history cache's rules that a real stack cannot hit on demand: a read that
 * straddles a change is answered but not stored, concurrent misses share one read
 * unless a change came between them, nothing is used before LISTEN is caught up or
 * after it is lost, an unreadable range drops everything, and the byte bound holds.
 * The projection is a fake whose pages the test controls (and holds back, to
 * interleave); the SQL and the route are tested on a real stack in hot-paths.int.test.ts.
 */
import type { HistoryPage, LoggedEvent } from "@chatbus/consumer-runtime/materialiser";
import { Registry } from "prom-client";
import { describe, expect, it, vi } from "vitest";
import { HistoryCache } from "../src/history-cache.ts";
import { ReadGate } from "./read-gate.ts";

function setup(maxBytes = 1_000_000) {
  /** The "database": the text of each conversation's newest message. */
  const latest = new Map([
    ["c1", "one"],
    ["c2", "two"],
  ]);
  const reads: string[] = [];
  const gate = new ReadGate();
  const projection = {
    async historyPage(conversationId: string, options: { limit: number; after?: number }) {
      reads.push(
        `${conversationId}/${options.limit}${options.after === undefined ? "" : `/a${options.after}`}`,
      );
      const text = latest.get(conversationId) ?? "";
      await gate.passed();
      const page: HistoryPage = {
        messages: [
          { seq: 1, senderId: "ana", json: JSON.stringify({ id: "e", content: { type: "text", text } }) },
        ],
        positions: [],
      };
      return page;
    },
  };
  const cache = new HistoryCache({ projection, maxBytes, registry: new Registry() });
  const text = async (conversationId: string, limit = 50) => {
    const page = await cache.page(conversationId, { limit });
    return (JSON.parse(page.messages[0]!.json) as { content: { text: string } }).content.text;
  };
  const event = (conversationId: string) => ({ conversationId }) as LoggedEvent;
  return {
    cache,
    latest,
    reads,
    text,
    event,
    holdReads: () => gate.hold(),
  };
}

describe("HistoryCache", () => {
  it("reads the database until LISTEN is caught up, then answers newest pages from memory", async () => {
    const { cache, reads, text } = setup();
    await text("c1");
    await text("c1");
    expect(reads).toHaveLength(2);
    cache.connected();
    expect(await text("c1")).toBe("one");
    expect(await text("c1")).toBe("one");
    expect(await text("c1", 20)).toBe("one"); // another page size is another page
    expect(reads).toEqual(["c1/50", "c1/50", "c1/50", "c1/20"]);
  });

  it("never caches a page with a cursor", async () => {
    const { cache, reads } = setup();
    cache.connected();
    await cache.page("c1", { limit: 50, after: 3 });
    await cache.page("c1", { limit: 50, after: 3 });
    expect(reads).toEqual(["c1/50/a3", "c1/50/a3"]);
  });

  it("drops the conversations of an applied range, and only those", async () => {
    const { cache, latest, reads, text, event } = setup();
    cache.connected();
    await text("c1");
    await text("c2");
    latest.set("c1", "one, edited");
    latest.set("c2", "two, edited");
    expect(await text("c1")).toBe("one"); // not applied yet: as realtime has it
    cache.applied([event("c1"), event("c1")]);
    expect(await text("c1")).toBe("one, edited");
    expect(await text("c2")).toBe("two");
    expect(reads).toEqual(["c1/50", "c2/50", "c1/50"]);
  });

  it("answers but does not store a read that a change overtook", async () => {
    const { cache, latest, reads, text, event, holdReads } = setup();
    cache.connected();
    const release = holdReads();
    const first = text("c1"); // reads "one" and is held
    latest.set("c1", "one, edited");
    cache.applied([event("c1")]);
    release();
    expect(await first).toBe("one");
    expect(await text("c1")).toBe("one, edited");
    expect(await text("c1")).toBe("one, edited");
    expect(reads).toHaveLength(2);
  });

  it("shares one read between concurrent misses, but not across a change", async () => {
    const { cache, latest, reads, text, event, holdReads } = setup();
    cache.connected();
    let release = holdReads();
    const a = text("c1");
    const b = text("c1");
    release();
    expect([await a, await b]).toEqual(["one", "one"]);
    expect(reads).toHaveLength(1);
    cache.applied([event("c1")]);
    release = holdReads();
    const before = text("c1");
    latest.set("c1", "one, edited");
    cache.applied([event("c1")]);
    const after = text("c1"); // must not join the read that started before the change
    release();
    expect([await before, await after]).toEqual(["one", "one, edited"]);
    expect(reads).toHaveLength(3);
  });

  it("does not join a read that has been in flight for a second or more (one that never returns)", async () => {
    const { cache, reads, text, holdReads } = setup();
    cache.connected();
    const release = holdReads();
    const stuck = text("c1");
    const now = Date.now();
    const clock = vi.spyOn(Date, "now").mockReturnValue(now + 1000);
    try {
      release();
      const later = text("c1");
      expect(await later).toBe("one");
    } finally {
      clock.mockRestore();
    }
    await stuck;
    expect(reads).toHaveLength(2);
  });

  it("bypasses and forgets while LISTEN is lost, and drops everything for an unreadable range", async () => {
    const { cache, latest, reads, text, holdReads } = setup();
    cache.connected();
    await text("c1");
    cache.lost();
    latest.set("c1", "one, edited"); // a commit nobody here hears of
    expect(await text("c1")).toBe("one, edited");
    expect(await text("c1")).toBe("one, edited");
    expect(reads).toHaveLength(3);
    // A read begun while lost is not stored after the reconnect either.
    const release = holdReads();
    const during = text("c1");
    cache.connected();
    release();
    await during;
    await text("c1");
    expect(reads).toHaveLength(5);
    await text("c2");
    latest.set("c2", "two, edited");
    cache.applied(null);
    expect(await text("c2")).toBe("two, edited");
    expect(await text("c1")).toBe("one, edited");
    expect(reads).toHaveLength(8);
  });

  it("keeps within its byte bound, least recently read conversations first", async () => {
    const { cache, reads, text } = setup();
    cache.connected();
    await text("c1");
    const onePage = cache.bytes;
    expect(onePage).toBeGreaterThan(0);
    const small = setup(onePage * 2 + 1);
    small.cache.connected();
    await small.text("c1");
    await small.text("c2");
    await small.text("c1"); // c1 most recent
    await small.text("c3"); // evicts c2
    expect(small.cache.bytes).toBeLessThanOrEqual(onePage * 2 + 1);
    await small.text("c1");
    await small.text("c2");
    expect(small.reads).toEqual(["c1/50", "c2/50", "c3/50", "c2/50"]);
    const off = setup(0);
    off.cache.connected();
    await off.text("c1");
    await off.text("c1");
    expect(off.reads).toHaveLength(2);
    expect(reads).toHaveLength(1);
  });
});
