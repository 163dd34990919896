/**
 * The stream index and the position rules without a database: membership events move
 * streams in and out of rooms (a removal reaches the removed user's streams, then
 * stops their routing), a stream that is catching up queues instead of writing, and
 * "ahead" compares positions partition by partition.
 */
import { EventEmitter } from "node:events";
import type { ServerResponse } from "node:http";
import type { LoggedEvent } from "@chatbus/consumer-runtime/materialiser";
import { describe, expect, it } from "vitest";
import { cursorAhead } from "../src/realtime/log-follower.ts";
import { SseStream } from "../src/realtime/stream.ts";
import { StreamIndex } from "../src/realtime/stream-index.ts";

class Response extends EventEmitter {
  chunks: string[] = [];
  writableLength = 0;
  socket = null;
  write(text: string) {
    this.chunks.push(text);
    return true;
  }
  end() {}
  destroy() {
    this.emit("close");
  }
}

let offset = 0;
function event(type: string, conversationId: string, payload: Record<string, unknown>): LoggedEvent {
  offset++;
  return {
    partition: 0,
    offset: String(offset),
    conversationId,
    eventId: `e${offset}`,
    type,
    seq: null,
    payload,
    eventTime: new Date(),
    materialisedAt: new Date(),
  };
}

function open(index: StreamIndex, userId: string) {
  const response = new Response();
  const s = new SseStream({
    userId,
    response: response as unknown as ServerResponse,
    cursor: {},
    maxBufferedBytes: 1_000_000,
    onDelivered: (stream, e) => {
      // What the hub does on delivery: follow membership in log order.
      if (e.type === "chat.member.left" && e.payload.userId === stream.userId)
        index.follow(stream, e.conversationId, false);
    },
    onBehind: () => {},
    onClose: (stream) => index.remove(stream),
  });
  index.add(s);
  return {
    s,
    texts: () => response.chunks.filter((c) => c.includes("event: chat.")).map((c) => c.split("\n")[1]),
  };
}

describe("StreamIndex", () => {
  it("routes a conversation's events to its members' streams, and stops after a removal", () => {
    const index = new StreamIndex({ roomBroadcastMaxStreams: 200 });
    const ben = open(index, "ben");
    const cat = open(index, "cat");
    for (const x of [ben, cat]) x.s.goLive();
    index.dispatch(event("chat.conversation.created", "g", { members: ["ana", "ben", "cat"] }));
    index.dispatch(event("chat.message.sent", "g", { senderId: "ana" }));
    index.dispatch(event("chat.member.left", "g", { userId: "ben" }));
    index.dispatch(event("chat.message.sent", "g", { senderId: "ana" }));
    expect(ben.texts()).toEqual([
      "event: chat.conversation.created",
      "event: chat.message.sent",
      "event: chat.member.left",
    ]);
    expect(cat.texts()).toHaveLength(4);
    expect(ben.s.conversations.has("g")).toBe(false);
  });

  it("queues a catching-up stream's events, including its own removal, and applies the removal on delivery", () => {
    const index = new StreamIndex({ roomBroadcastMaxStreams: 200 });
    const ben = open(index, "ben");
    index.follow(ben.s, "g", true); // subscribed from a snapshot before the removal
    index.dispatch(event("chat.member.left", "g", { userId: "ben" }));
    index.follow(ben.s, "g", true); // a stale subscription racing the removal (review M3)
    expect(ben.texts()).toEqual([]);
    ben.s.goLive(); // the queued removal is delivered and unsubscribes
    index.dispatch(event("chat.message.sent", "g", { senderId: "ana" }));
    expect(ben.texts()).toEqual(["event: chat.member.left"]);
  });

  it("forgets a closed stream and its user", () => {
    const index = new StreamIndex({ roomBroadcastMaxStreams: 200 });
    const ben = open(index, "ben");
    index.follow(ben.s, "g", true);
    expect(index.users()).toEqual(["ben"]);
    ben.s.close("client");
    expect(index.users()).toEqual([]);
    expect(index.smallRoom("g")).toBeUndefined();
  });
});

describe("cursorAhead", () => {
  it("is true only when some partition names an offset past the head", () => {
    expect(cursorAhead({ 0: "5", 1: "7" }, { 0: "5", 1: "9" })).toBe(false);
    expect(cursorAhead({ 0: "6" }, { 0: "5", 1: "9" })).toBe(true);
    expect(cursorAhead({ 2: "0" }, { 0: "5" })).toBe(true); // a partition the projection never applied
    expect(cursorAhead({}, {})).toBe(false);
  });
});
