/**
 * The realtime hub of one API process, composed of three parts: the log follower
 * (LISTEN, reads each committed range once, `log-follower.ts`), the stream index
 * (which stream follows which conversation, `stream-index.ts`) and presence (shared by
 * every process through PostgreSQL, `presence.ts`). The hub opens streams and batches
 * delivered receipts.
 *
 * Stream ids are per-partition offset vectors (`encodeEventCursor`) of the shared
 * topic. A conversation lives in one partition and each partition is applied in
 * order, so "every event with offset > cursor[p] in each partition p" is exactly
 * what a client has not seen, on whichever process it reconnects. Opening a stream
 * takes ONE snapshot of the projection: the applied position and the user's
 * conversations at that position. A new stream starts there; a resumed one reads the
 * log from its id (`eventsAfter`, which follows the user's membership spans). Both
 * then read the log up to whatever the hub has dispatched meanwhile, while live
 * events wait in the stream's queue, and the queue drains, skipping what the log
 * already wrote. Membership events on the way move the stream in and out of rooms,
 * so a removal that races the open is never missed (review M3).
 *
 * The same catch-up serves a client that fell behind: when its unread bytes pass
 * `sse.maxBufferedBytes` the stream stops taking live events and `#catchUp` writes
 * from the log, one page each time the client has read half its bound, until a page
 * reaches the applied position; then it is live again. Nothing is skipped and
 * nothing piles up in memory. A client that reads nothing for `sse.stalledClientMs`
 * is disconnected (`slow_client`; it resumes with Last-Event-ID), and one that falls
 * more than `sse.resumeMaxEvents` behind gets `reset`, as a resume would.
 */
import type { ServerResponse } from "node:http";
import {
  decodeEventCursor,
  type EventCursor,
  encodeEventCursor,
  type LoggedEvent,
  type ProjectionReader,
} from "@chatbus/consumer-runtime/materialiser";
import type pg from "pg";
import type { Logger } from "pino";
import type { ApiConfig } from "../config.ts";
import type { ApiMetrics } from "../metrics.ts";
import type { EventSender } from "../types.ts";
import { DeliveredReceipts } from "./delivered-receipts.ts";
import { appliedPosition, cursorAhead, type ListenObserver, LogFollower } from "./log-follower.ts";
import { Presence } from "./presence.ts";
import { type CloseReason, SseStream } from "./stream.ts";
import { membershipChange, StreamIndex } from "./stream-index.ts";

export type { PresenceEvent } from "./presence.ts";

/** What the hub needs. */
export interface EventHubOptions {
  /** Connection string of the projection database (dedicated clients LISTEN). */
  databaseUrl: string;
  /** The materialiser's channel: `eventsChannel(schema)`. */
  channel: string;
  /** The topic the projection follows (its applied offsets are stream positions). */
  topic: string;
  /** Runs the position and membership queries. */
  pool: pg.Pool;
  projection: ProjectionReader;
  bus: EventSender;
  logger: Logger;
  metrics: ApiMetrics;
  sse: ApiConfig["sse"];
  /** Told of the LISTEN connection's notifications, ranges and state: the membership and history caches. */
  listenObservers: readonly ListenObserver[];
}

/** How a stream is opened. */
export interface OpenOptions {
  /** Position to resume after (`Last-Event-ID`); undefined for "from now". */
  lastEventId?: string | undefined;
  /** Expiry of the token that opened it, ms since the epoch. */
  expiresAt?: number | undefined;
}

const catchUpPage = 1000;

/** The applied position and the user's conversations at that position, read in one snapshot. */
async function snapshot(
  pool: pg.Pool,
  topic: string,
  userId: string,
  limit: number,
): Promise<{ position: EventCursor; conversations: string[] }> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    const position = await appliedPosition(client, topic);
    // Ids only (not the inbox's last messages), most recent first, bounded (review M4).
    const { rows } = await client.query<{ conversation_id: string }>(
      `SELECT m.conversation_id FROM members m JOIN conversations c ON c.conversation_id = m.conversation_id
        WHERE m.user_id = $1 AND m.left_at IS NULL
        ORDER BY c.last_activity_at DESC, c.conversation_id LIMIT $2`,
      [userId, limit],
    );
    await client.query("COMMIT");
    return { position, conversations: rows.map((r) => r.conversation_id) };
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}

/** Fans materialised events out to SSE streams; shares presence; batches delivered receipts. */
export class EventHub {
  readonly #options: EventHubOptions;
  readonly #receipts: DeliveredReceipts;
  readonly #index: StreamIndex;
  readonly #follower: LogFollower;
  readonly #presence: Presence;
  #heartbeat: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: EventHubOptions) {
    this.#options = options;
    this.#receipts = new DeliveredReceipts({
      bus: options.bus,
      logger: options.logger,
      metrics: options.metrics,
      flushMs: options.sse.deliveredFlushMs,
      pool: options.pool,
      maxMembers: options.sse.deliveredReceiptsMaxMembers,
      sizeTtlMs: options.sse.deliveredMemberCountTtlMs,
    });
    this.#index = new StreamIndex({ roomBroadcastMaxStreams: options.sse.roomBroadcastMaxStreams });
    this.#follower = new LogFollower({
      ...options,
      observers: options.listenObservers,
      onEvents: (events) => {
        for (const event of events) this.#index.dispatch(event);
      },
    });
    this.#presence = new Presence({
      databaseUrl: options.databaseUrl,
      channel: options.channel,
      pool: options.pool,
      index: this.#index,
      logger: options.logger,
      graceMs: options.sse.presenceGraceMs,
      processTimeoutMs: options.sse.presenceProcessTimeoutMs,
      roomBroadcastMaxStreams: options.sse.roomBroadcastMaxStreams,
    });
  }

  /** Highest offset dispatched per partition. */
  get cursor(): EventCursor {
    return this.#follower.cursor;
  }

  /** Open streams on this process. */
  get streamCount(): number {
    return this.#index.streamCount;
  }

  /** LISTENs, learns the applied position, joins presence. Must resolve before streams open. */
  async start(): Promise<void> {
    await this.#follower.start();
    await this.#presence.start();
    this.#heartbeat = setInterval(() => {
      for (const s of this.#index.all()) s.write(": heartbeat\n\n");
    }, this.#options.sse.heartbeatMs);
    this.#heartbeat.unref();
  }

  #delivered = (stream: SseStream, event: LoggedEvent): void => {
    const { metrics } = this.#options;
    metrics.sseDelivered.inc();
    metrics.sseDeliveryLatency.observe(Math.max(0, (Date.now() - event.materialisedAt.getTime()) / 1000));
    const change = membershipChange(event);
    if (change?.users.includes(stream.userId)) {
      this.#index.follow(stream, event.conversationId, change.follow);
    }
    const senderId = (event.payload as { senderId?: string }).senderId;
    if (event.type === "chat.message.sent" && event.seq !== null && senderId !== stream.userId) {
      this.#receipts.note(event.conversationId, stream.userId, event.seq);
    }
  };

  #closed = (stream: SseStream, reason: CloseReason): void => {
    const last = this.#index.remove(stream);
    this.#options.metrics.sseStreams.dec();
    if (reason !== "client") this.#options.metrics.sseDisconnects.inc({ reason });
    if (last && !this.#stopped) {
      // Offline only after the grace period, and only if no process holds a stream of the user.
      this.#presence.closed(stream.userId, () => this.#receipts.forgetUser(stream.userId));
    }
  };

  /** Over the per-user bound, the user's oldest streams here end with `event: closed`. */
  #enforceStreamsPerUser(userId: string): void {
    const streams = this.#index.ofUser(userId);
    const excess = streams.length - this.#options.sse.streamsPerUser;
    for (const old of streams.slice(0, Math.max(0, excess))) {
      old.send("closed", {
        reason: `more than ${this.#options.sse.streamsPerUser} streams of this user are open; this, the oldest, was closed. Do not reconnect it.`,
      });
      old.close("replaced");
    }
  }

  /**
   * Opens a stream for `userId` on `response` (headers already written), resuming
   * after `lastEventId` when given: exactly the events the client missed, once,
   * in per-partition (hence per-conversation) order; or a `reset` event when the id
   * cannot be resumed from (malformed, ahead of the projection, or too far behind).
   */
  async open(userId: string, response: ServerResponse, options: OpenOptions = {}): Promise<SseStream> {
    const { lastEventId, expiresAt } = options;
    const stream = new SseStream({
      userId,
      response,
      cursor: {},
      maxBufferedBytes: this.#options.sse.maxBufferedBytes,
      expiresAt,
      onDelivered: this.#delivered,
      onBehind: this.#behind,
      onClose: this.#closed,
    });
    this.#options.metrics.sseStreams.inc();
    const first = !this.#index.hasUser(userId);
    this.#index.add(stream);
    this.#enforceStreamsPerUser(userId);
    if (first) void this.#presence.opened(userId);
    try {
      await this.#start(stream, lastEventId);
      if (stream.closed) return stream;
      await this.#catchUp(stream);
      if (stream.closed) return stream;
      await this.#presence.greet(stream);
    } catch (error) {
      this.#options.logger.warn({ err: error, userId }, "SSE stream could not start");
      stream.close("error");
    }
    return stream;
  }

  /** Positions a new stream and subscribes it to the user's conversations at that position. */
  async #start(stream: SseStream, lastEventId: string | undefined): Promise<void> {
    const { pool, topic, sse } = this.#options;
    const { position, conversations } = await snapshot(
      pool,
      topic,
      stream.userId,
      sse.streamConversationsMax,
    );
    if (stream.closed) return;
    for (const conversationId of conversations) this.#index.follow(stream, conversationId, true);
    const from: EventCursor | null = lastEventId === undefined ? position : decodeEventCursor(lastEventId);
    if (from === null) {
      this.#reset(stream, position, "the Last-Event-ID is not a chatbus stream position");
    } else if (cursorAhead(from, position)) {
      this.#reset(
        stream,
        position,
        "the Last-Event-ID is ahead of this event log (was the projection rebuilt?)",
      );
    } else {
      Object.assign(stream.cursor, from);
    }
  }

  /** A live stream's client fell behind: catch it up from the log, in the background. */
  #behind = (stream: SseStream): void => {
    this.#options.metrics.sseCatchUps.inc();
    this.#catchUp(stream).catch((error: unknown) => {
      this.#options.logger.warn({ err: error, userId: stream.userId }, "SSE stream could not catch up");
      stream.close("error");
    });
  };

  /**
   * Writes from the log what the stream has not seen, as fast as its client reads
   * (waiting whenever the client is `full`), then goes live. Live events that arrive
   * while a page is read and written without a wait are queued in `pending`; after a
   * wait they are dropped, for the next read returns them: each was committed before
   * that read began. Memory: one page, plus the queue of one read.
   */
  async #catchUp(stream: SseStream): Promise<void> {
    const { sse } = this.#options;
    let read = 0;
    for (;;) {
      if (!(await this.#drained(stream))) return;
      stream.pending = [];
      const page = await this.#options.projection.eventsAfter(stream.cursor, stream.userId, catchUpPage);
      if (stream.closed) return;
      read += page.events.length;
      if (read > sse.resumeMaxEvents) {
        read = 0;
        await this.#resetToNow(stream, `more than ${sse.resumeMaxEvents} events were missed; reload history`);
        if (stream.closed) return;
        continue;
      }
      for (const event of page.events) {
        if (stream.full) {
          stream.pending = null; // the wait may be long: the next read covers what arrives
          if (!(await this.#drained(stream))) return;
        }
        if (
          this.#index.quietReceipt(event) &&
          (event.payload as { userId?: string }).userId !== stream.userId
        )
          continue;
        stream.deliver(event);
      }
      // A short page reached the applied position: the queue holds the rest, if whole.
      if (page.events.length < catchUpPage && stream.pending !== null) {
        stream.goLive();
        return;
      }
    }
  }

  /** Waits until the stream's client has read down to half its bound; false (closed) if it stalled. */
  async #drained(stream: SseStream): Promise<boolean> {
    if (await stream.drained(this.#options.sse.stalledClientMs)) return true;
    stream.close("slow_client");
    return false;
  }

  /** Too far behind: moves the stream to the applied position now, with its rooms there, and says so. */
  async #resetToNow(stream: SseStream, reason: string): Promise<void> {
    const { pool, topic, sse } = this.#options;
    const { position, conversations } = await snapshot(
      pool,
      topic,
      stream.userId,
      sse.streamConversationsMax,
    );
    if (stream.closed) return;
    this.#reset(stream, position, reason);
    // Membership events already written may predate the snapshot's: follow its rooms again.
    for (const conversationId of [...stream.conversations]) this.#index.follow(stream, conversationId, false);
    for (const conversationId of conversations) this.#index.follow(stream, conversationId, true);
  }

  /** Moves the stream to `position` and tells the client to reload history. */
  #reset(stream: SseStream, position: EventCursor, reason: string): void {
    for (const p of Object.keys(stream.cursor)) delete stream.cursor[Number(p)];
    Object.assign(stream.cursor, position);
    stream.send("reset", { reason }, encodeEventCursor(stream.cursor));
  }

  /** Closes every stream (clients reconnect elsewhere and resume), flushes receipts, stops listening. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#heartbeat);
    await this.#presence.stop();
    for (const stream of this.#index.all()) stream.close("shutdown");
    await this.#follower.stop();
    await this.#receipts.stop();
  }
}
