/**
 * One SSE connection: its position (a per-partition offset vector), the
 * conversations it follows, and back-pressure. The socket's unsent bytes are
 * bounded: a client that reads slower than events arrive is disconnected (it
 * reconnects with Last-Event-ID and resumes) instead of growing server memory.
 */

import type { ServerResponse } from "node:http";
import type { EventCursor, LoggedEvent } from "@chatbus/consumer-runtime/materialiser";
import { encodeEventCursor } from "@chatbus/consumer-runtime/materialiser";

/**
 * Why a stream ended: the client left, read too slowly, the server shut down or
 * failed, the token expired (`token_expired`), or the user opened more streams than
 * allowed and this was the oldest (`replaced`).
 */
export type CloseReason = "client" | "slow_client" | "shutdown" | "error" | "token_expired" | "replaced";

/** Options of one stream. */
export interface StreamOptions {
  userId: string;
  response: ServerResponse;
  cursor: EventCursor;
  maxBufferedBytes: number;
  /**
   * When the token that opened the stream expires (ms since the epoch): the stream
   * then gets `event: token-expired` and ends, so that a leaked URL token stops
   * reading at its expiry (the client reconnects with a fresh token and its last id).
   */
  expiresAt?: number;
  /** Called once with each delivered event (metrics, delivered receipts). */
  onDelivered: (stream: SseStream, event: LoggedEvent) => void;
  onClose: (stream: SseStream, reason: CloseReason) => void;
}

/** The JSON an SSE client receives as `data:` of a chat event. */
export function eventPayload(event: LoggedEvent) {
  return {
    type: event.type,
    eventId: event.eventId,
    conversationId: event.conversationId,
    seq: event.seq,
    time: event.eventTime.toISOString(),
    data: event.payload,
  };
}

/** The `event:` and `data:` lines of an event, serialised once however many streams write it. */
const frameBodies = new WeakMap<LoggedEvent, string>();
function frameBody(event: LoggedEvent): string {
  let body = frameBodies.get(event);
  if (body === undefined) {
    body = `event: ${event.type}\ndata: ${JSON.stringify(eventPayload(event))}\n\n`;
    frameBodies.set(event, body);
  }
  return body;
}

/** An open SSE stream of one user. */
export class SseStream {
  readonly userId: string;
  /** Conversations whose events this stream receives. */
  readonly conversations = new Set<string>();
  /** Offset of the last event written, per partition (inclusive). */
  readonly cursor: EventCursor;
  /** While catching up, live events wait here (in hub order). */
  pending: LoggedEvent[] | null = [];
  closed = false;
  readonly #response: ServerResponse;
  readonly #maxBufferedBytes: number;
  readonly #options: StreamOptions;
  #expiry: NodeJS.Timeout | undefined;

  constructor(options: StreamOptions) {
    this.userId = options.userId;
    this.cursor = { ...options.cursor };
    this.#response = options.response;
    this.#maxBufferedBytes = options.maxBufferedBytes;
    this.#options = options;
    options.response.on("close", () => this.close("client"));
    if (options.expiresAt !== undefined) {
      // setTimeout holds at most 2^31-1 ms (24.8 days); a longer token is re-armed then.
      const arm = () => {
        const left = options.expiresAt! - Date.now();
        this.#expiry = setTimeout(
          left > 2_000_000_000 ? arm : () => this.#expire(),
          Math.min(left, 2_000_000_000),
        );
        this.#expiry.unref();
      };
      arm();
    }
  }

  #expire(): void {
    this.send("token-expired", {
      reason: "the token of this stream has expired; reconnect with a fresh token and your last event id.",
      expiredAt: new Date(this.#options.expiresAt!).toISOString(),
    });
    this.close("token_expired");
  }

  /** Bytes written but not yet taken by the client's TCP window. */
  get buffered(): number {
    return this.#response.writableLength + (this.#response.socket?.writableLength ?? 0);
  }

  /** Writes raw SSE text; disconnects the client when its unread bytes pass the bound. */
  write(text: string): void {
    if (this.closed) return;
    this.#response.write(text);
    if (this.buffered > this.#maxBufferedBytes) this.close("slow_client");
  }

  /** Hub entry point: queue while catching up, write once live. */
  offer(event: LoggedEvent): void {
    if (this.closed) return;
    if (this.pending) {
      this.pending.push(event);
      if (this.pending.length > 50_000) this.close("slow_client");
      return;
    }
    this.deliver(event);
  }

  /**
   * Writes a chat event unless this stream already has it (its offset is at or
   * below the stream's position in that partition): exactly once per stream.
   */
  deliver(event: LoggedEvent): void {
    if (this.closed) return;
    const seen = this.cursor[event.partition];
    if (seen !== undefined && BigInt(event.offset) <= BigInt(seen)) return;
    this.cursor[event.partition] = event.offset;
    this.#follow(event);
    this.write(`id: ${encodeEventCursor(this.cursor)}\n${frameBody(event)}`);
    this.#options.onDelivered(this, event);
  }

  /** Membership changes carried by the events themselves keep `conversations` current. */
  #follow(event: LoggedEvent): void {
    const data = event.payload as { userId?: string; members?: string[] };
    if (event.type === "chat.member.left" && data.userId === this.userId) {
      this.conversations.delete(event.conversationId);
    } else if (
      (event.type === "chat.member.joined" && data.userId === this.userId) ||
      (event.type === "chat.conversation.created" && data.members?.includes(this.userId))
    ) {
      this.conversations.add(event.conversationId);
    }
  }

  /** Ends catch-up: writes queued live events the catch-up did not already cover. */
  goLive(): void {
    const queued = this.pending ?? [];
    this.pending = null;
    for (const event of queued) this.deliver(event);
  }

  /** Writes a named event without an id (presence, reset are not positions in the log). */
  send(name: string, data: unknown, id?: string): void {
    this.write(`${id === undefined ? "" : `id: ${id}\n`}event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  close(reason: CloseReason): void {
    if (this.closed) return;
    this.closed = true;
    this.pending = null;
    clearTimeout(this.#expiry);
    // Ends that tell the client something (token-expired, closed) end the response
    // cleanly so that the last event is flushed; others drop the socket at once.
    if (reason === "token_expired" || reason === "replaced") this.#response.end();
    else if (reason !== "client") this.#response.destroy();
    this.#options.onClose(this, reason);
  }
}
