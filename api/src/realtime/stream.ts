/**
 * One SSE connection: its position (a per-partition offset vector), the
 * conversations it follows, and back-pressure. The socket's unsent bytes are
 * bounded without dropping anything: when a client reads slower than events arrive
 * and its unread bytes pass `maxBufferedBytes`, the stream stops writing live events
 * and falls behind (`catchingUp`); the hub then writes the rest from the event log,
 * a page at a time as the client reads, and the stream goes live again. Memory per
 * stream is the socket bound plus one frame; the position alone says what is owed.
 * (Until issue 18's follow-up such a client was disconnected, and at 8,000 events/s
 * a client that merely paused lost the stream after ~4,000 frames.)
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
  /** A live stream's unread bytes passed the bound: the hub catches it up from the log. */
  onBehind: (stream: SseStream) => void;
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
  /**
   * True while the hub writes from the log (at open, and after the client fell
   * behind) instead of live events; `goLive` ends it.
   */
  catchingUp = true;
  /**
   * While catching up: live events that wait for the log read in flight (in hub
   * order), or null when they are dropped because the next log read covers them.
   */
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
    // A ServerResponse's writableLength already includes its socket's (Node's
    // _http_outgoing.js); adding the socket's again counted those bytes twice.
    return this.#response.writableLength;
  }

  /** True when the client has more unread bytes than the bound: write no more events now. */
  get full(): boolean {
    return this.buffered > this.#maxBufferedBytes;
  }

  /**
   * Resolves true once the client has read down to half the bound, false when it
   * read nothing for `stalledMs` (or the stream closed). Polled: `drain` fires only
   * after a write that returned false, and the socket's own buffer counts too.
   */
  async drained(stalledMs: number, pollMs = 25): Promise<boolean> {
    let last = this.buffered;
    let progressAt = Date.now();
    while (!this.closed && this.buffered > this.#maxBufferedBytes / 2) {
      await new Promise((resolve) => setTimeout(resolve, pollMs));
      const now = this.buffered;
      if (now < last) progressAt = Date.now();
      last = now;
      if (Date.now() - progressAt > stalledMs) return false;
    }
    return !this.closed;
  }

  /** Writes raw SSE text; a live stream whose unread bytes pass the bound falls behind. */
  write(text: string): void {
    if (this.closed) return;
    this.#response.write(text);
    if (this.full && !this.catchingUp) {
      this.catchingUp = true;
      this.pending = null; // everything from here on is read from the log
      this.#options.onBehind(this);
    }
  }

  /** Hub entry point: write when live; while catching up, queue or drop (the log has it). */
  offer(event: LoggedEvent): void {
    if (this.closed) return;
    if (!this.catchingUp) {
      this.deliver(event);
      return;
    }
    if (this.pending === null) return;
    this.pending.push(event);
    // A queue this long means the log read is slow: drop it, the next read covers it.
    if (this.pending.length > 50_000) this.pending = null;
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

  /**
   * Ends catch-up: writes queued live events the catch-up did not already cover.
   * Only when the queue is whole (`pending` not null) and the client not full.
   * If the client falls behind again while the queue drains, the rest is left to
   * the log (`onBehind` was called).
   */
  goLive(): void {
    const queued = this.pending ?? [];
    this.pending = null;
    this.catchingUp = false;
    for (const event of queued) {
      if (this.catchingUp) return;
      this.deliver(event);
    }
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
