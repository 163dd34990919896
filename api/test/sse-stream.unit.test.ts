/**
 * One SSE stream's rules without sockets: exactly-once by the offset vector, the
 * queue while catching up, and the bound on unsent bytes (slow clients are cut off).
 */
import { EventEmitter } from "node:events";
import type { ServerResponse } from "node:http";
import type { LoggedEvent } from "@chatbus/consumer-runtime/materialiser";
import { describe, expect, it } from "vitest";
import { type CloseReason, SseStream } from "../src/realtime/stream.ts";

/** A response whose client never reads: everything written stays buffered. */
class StuckResponse extends EventEmitter {
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
  const s = new SseStream({
    userId: "ben",
    response: response as unknown as ServerResponse,
    cursor,
    maxBufferedBytes,
    onDelivered: (_s, e) => delivered.push(e.eventId),
    onClose: (_s, reason) => closed.push(reason),
  });
  return { s, response, closed, delivered };
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

  it("disconnects a client whose unread bytes pass the bound", () => {
    const { s, response, closed } = stream(4096);
    s.goLive();
    for (let i = 0; i < 100 && !s.closed; i++) s.deliver(event(0, i, "x".repeat(200)));
    expect(closed).toEqual(["slow_client"]);
    expect(response.destroyed).toBe(true);
    expect(response.writableLength).toBeLessThan(4096 + 1024);
  });
});
