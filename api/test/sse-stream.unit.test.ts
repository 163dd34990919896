/**
 * One SSE stream's rules without sockets: exactly-once by the offset vector, the
 * queue while catching up, and the bound on unsent bytes (a client past it falls
 * behind: nothing more is written or queued until the hub catches it up from the log).
 */
import { EventEmitter } from "node:events";
import type { ServerResponse } from "node:http";
import type { LoggedEvent } from "@chatbus/consumer-runtime/materialiser";
import { describe, expect, it } from "vitest";
import { type CloseReason, SseStream } from "../src/realtime/stream.ts";

/** A response whose client never reads: everything written stays buffered. */
class StuckResponse extends EventEmitter {
  /** The client reads this many bytes (what is still unread shrinks). */
  read(bytes: number) {
    this.writableLength = Math.max(0, this.writableLength - bytes);
  }
  chunks: string[] = [];
  writableLength = 0;
  destroyed = false;
  socket = null;
  write(text: string) {
    this.chunks.push(text);
    this.writableLength += Buffer.byteLength(text);
    return true;
  }
  destroy() {
    this.destroyed = true;
    this.emit("close");
  }
}

function event(partition: number, offset: number, text = "hi"): LoggedEvent {
  return {
    partition,
    offset: String(offset),
    conversationId: `c${partition}`,
    eventId: `e-${partition}-${offset}`,
    type: "chat.message.sent",
    seq: offset,
    payload: { senderId: "ana", content: { type: "text", text } },
    eventTime: new Date(),
    materialisedAt: new Date(),
  };
}

function stream(maxBufferedBytes = 1_000_000, cursor: Record<number, string> = {}) {
  const response = new StuckResponse();
  const closed: CloseReason[] = [];
  const delivered: string[] = [];
  const behind: number[] = [];
  const s = new SseStream({
    userId: "ben",
    response: response as unknown as ServerResponse,
    cursor,
    maxBufferedBytes,
    onDelivered: (_s, e) => delivered.push(e.eventId),
    onBehind: () => behind.push(response.chunks.length),
    onClose: (_s, reason) => closed.push(reason),
  });
  return { s, response, closed, delivered, behind };
}

describe("SseStream", () => {
  it("writes each event once, skipping what its offset vector already covers", () => {
    const { s, delivered, response } = stream(1_000_000, { 0: "5" });
    s.goLive();
    for (const e of [event(0, 4), event(0, 5), event(0, 6), event(1, 0), event(0, 6), event(1, 0)])
      s.deliver(e);
    expect(delivered).toEqual(["e-0-6", "e-1-0"]);
    expect(response.chunks.at(-1)).toMatch(/^id: 0:6\.1:0\nevent: chat.message.sent\ndata: /);
  });

  it("queues live events while catching up, then drains them without duplicates", () => {
    const { s, delivered } = stream();
    s.offer(event(0, 2)); // live, arrives during catch-up
    s.offer(event(0, 3));
    s.deliver(event(0, 1)); // catch-up from the log
    s.deliver(event(0, 2));
    expect(delivered).toEqual(["e-0-1", "e-0-2"]);
    s.goLive();
    s.offer(event(0, 4));
    expect(delivered).toEqual(["e-0-1", "e-0-2", "e-0-3", "e-0-4"]);
  });

  it("falls behind when its unread bytes pass the bound: tells the hub once, then takes no live event", () => {
    const { s, response, closed, delivered, behind } = stream(4096);
    s.goLive();
    for (let i = 0; i < 100; i++) s.offer(event(0, i, "x".repeat(200)));
    expect(closed).toEqual([]); // not cut off: the hub writes the rest from the log
    expect(behind).toHaveLength(1);
    expect(s.catchingUp).toBe(true);
    expect(s.pending).toBeNull(); // dropped, not queued: memory stays bounded
    expect(delivered).toHaveLength(behind[0]!); // every frame written counts as delivered
    expect(response.writableLength).toBeLessThan(4096 + 1024);
    // The hub's catch-up writes from the log where the live events stopped, then goes live.
    s.pending = [];
    for (let i = 0; i < 100; i++) {
      response.read(1_000_000); // this time the client keeps up
      s.deliver(event(0, i, "x".repeat(200)));
    }
    s.offer(event(0, 100));
    s.goLive();
    s.offer(event(0, 101));
    expect(delivered).toEqual(Array.from({ length: 102 }, (_, i) => `e-0-${i}`));
    expect(behind).toHaveLength(1);
  });

  it("stops draining its queue at the bound and leaves the rest to the log", () => {
    const { s, delivered, behind } = stream(4096);
    for (let i = 0; i < 100; i++) s.offer(event(0, i, "x".repeat(200)));
    s.goLive();
    expect(behind).toEqual([delivered.length]); // the frame that passed the bound is the last
    expect(delivered.length).toBeLessThan(100);
    expect(delivered).toEqual(Array.from({ length: delivered.length }, (_, i) => `e-0-${i}`));
  });

  it("says when its client has read down to half the bound, or that it read nothing for too long", async () => {
    const { s, response } = stream(4096);
    s.goLive();
    for (let i = 0; i < 30; i++) s.offer(event(0, i, "x".repeat(200)));
    expect(s.full).toBe(true);
    expect(await s.drained(100, 5)).toBe(false); // the client read nothing
    const reading = s.drained(100, 5);
    const reader = setInterval(() => response.read(500), 10);
    expect(await reading).toBe(true);
    clearInterval(reader);
    expect(s.buffered).toBeLessThanOrEqual(2048);
  });
});
