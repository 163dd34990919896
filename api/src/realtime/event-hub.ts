/**
 * The realtime hub: one LISTEN connection per API process on the materialiser's
 * channel; for each committed range `{partition, from, to}` it reads the events once
 * (`eventsInRange`) and fans them out to the open streams of the conversations'
 * members. Each partition is read and dispatched strictly in offset order.
 *
 * Stream ids are per-partition offset vectors (`encodeEventCursor`). A conversation
 * lives in one partition and each partition is applied in order, so "every event
 * with offset > cursor[p] in each partition p" is exactly what a client has not
 * seen, whatever order different partitions commit in. Resume (`Last-Event-ID`)
 * reads that from the event log (`eventsAfter`) while live events wait in the
 * stream's queue, then the queue drains, skipping what the catch-up already wrote.
 */
import type { ServerResponse } from "node:http";
import {
  decodeEventCursor,
  type EventCursor,
  type EventsNotification,
  encodeEventCursor,
  type LoggedEvent,
  type ProjectionReader,
} from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import type { Logger } from "pino";
import type { ApiConfig } from "../config.ts";
import type { ApiMetrics } from "../metrics.ts";
import type { EventSender } from "../types.ts";
import { DeliveredReceipts } from "./delivered-receipts.ts";
import { type CloseReason, SseStream } from "./stream.ts";

/** What the hub needs. */
export interface EventHubOptions {
  /** Connection string of the projection database (a dedicated client LISTENs). */
  databaseUrl: string;
  /** The materialiser's channel: `eventsChannel(schema)`. */
  channel: string;
  /** Runs the head-of-log query. */
  pool: pg.Pool;
  projection: ProjectionReader;
  bus: EventSender;
  logger: Logger;
  metrics: ApiMetrics;
  sse: ApiConfig["sse"];
}

/** Last offset per partition in the event log: a loose index scan over its primary key. */
const headQuery = `
  WITH RECURSIVE parts AS (
    (SELECT partition FROM event_log ORDER BY partition LIMIT 1)
    UNION ALL
    SELECT (SELECT e.partition FROM event_log e WHERE e.partition > parts.partition ORDER BY e.partition LIMIT 1)
      FROM parts WHERE parts.partition IS NOT NULL)
  SELECT partition, (SELECT max(e."offset") FROM event_log e WHERE e.partition = parts.partition)::text AS "offset"
    FROM parts WHERE partition IS NOT NULL`;

const catchUpPage = 1000;

/** Presence as SSE clients see it. */
export interface PresenceEvent {
  userId: string;
  status: "online" | "offline";
  at: string;
}

/** Fans materialised events out to SSE streams; tracks presence; batches delivered receipts. */
export class EventHub {
  /** Highest offset dispatched per partition. */
  readonly cursor: EventCursor = {};
  readonly #byConversation = new Map<string, Set<SseStream>>();
  readonly #byUser = new Map<string, Set<SseStream>>();
  readonly #offlineTimers = new Map<string, NodeJS.Timeout>();
  readonly #chains = new Map<number, Promise<void>>();
  readonly #options: EventHubOptions;
  readonly #receipts: DeliveredReceipts;
  #listener: pg.Client | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #stopped = false;
  #started = false;
  #reconnect: NodeJS.Timeout | undefined;

  constructor(options: EventHubOptions) {
    this.#options = options;
    this.#receipts = new DeliveredReceipts({
      bus: options.bus,
      logger: options.logger,
      metrics: options.metrics,
      flushMs: options.sse.deliveredFlushMs,
    });
  }

  /** Open streams on this process. */
  get streamCount(): number {
    let n = 0;
    for (const set of this.#byUser.values()) n += set.size;
    return n;
  }

  /** True when `userId` has at least one open stream here (or is within the offline grace). */
  isOnline(userId: string): boolean {
    return this.#byUser.has(userId) || this.#offlineTimers.has(userId);
  }

  /** LISTENs, then learns the head of the log. Must resolve before streams open. */
  async start(): Promise<void> {
    await this.#listen();
    this.#heartbeat = setInterval(() => {
      for (const set of this.#byUser.values()) for (const s of set) s.write(": heartbeat\n\n");
    }, this.#options.sse.heartbeatMs);
    this.#heartbeat.unref();
  }

  async #listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.#options.databaseUrl });
    client.on("error", (error) => {
      this.#options.logger.warn({ err: error }, "SSE LISTEN connection failed; reconnecting");
      this.#scheduleReconnect(client);
    });
    client.on("end", () => this.#scheduleReconnect(client));
    client.on("notification", (message) => {
      if (!message.payload) return;
      try {
        const n = JSON.parse(message.payload) as EventsNotification;
        this.#enqueue(n.partition, n.to);
      } catch (error) {
        this.#options.logger.warn({ err: error, payload: message.payload }, "unreadable events notification");
      }
    });
    await client.connect();
    await client.query(`LISTEN "${this.#options.channel.replaceAll('"', '""')}"`);
    this.#listener = client;
    // After LISTEN: anything committed later arrives as a notification; the head covers the rest.
    const head = await this.#head();
    for (const [p, offset] of Object.entries(head)) {
      const partition = Number(p);
      const known = this.cursor[partition];
      if (!this.#started) this.cursor[partition] = offset;
      else if (known === undefined || BigInt(offset) > BigInt(known)) this.#enqueue(partition, offset); // missed while reconnecting
    }
    this.#started = true;
  }

  async #head(): Promise<EventCursor> {
    const { rows } = await this.#options.pool.query<{ partition: number; offset: string }>(headQuery);
    return Object.fromEntries(rows.map((r) => [r.partition, r.offset]));
  }

  #scheduleReconnect(client: pg.Client): void {
    if (this.#stopped || this.#listener !== client || this.#reconnect) return;
    this.#listener = undefined;
    client.end().catch(() => {});
    this.#reconnect = setTimeout(() => {
      this.#reconnect = undefined;
      this.#listen().catch((error) => {
        this.#options.logger.warn({ err: error }, "SSE LISTEN reconnect failed; retrying");
        const placeholder = new pg.Client();
        this.#listener = placeholder;
        this.#scheduleReconnect(placeholder);
      });
    }, 1000);
  }

  /** Reads and dispatches partition `p` up to offset `to`, after whatever is queued for it. */
  #enqueue(partition: number, to: string): void {
    const previous = this.#chains.get(partition) ?? Promise.resolve();
    const next = previous.then(async () => {
      const known = this.cursor[partition];
      if (known !== undefined && BigInt(to) <= BigInt(known)) return;
      const from = known === undefined ? "0" : (BigInt(known) + 1n).toString();
      try {
        const events = await this.#options.projection.eventsInRange(partition, from, to);
        for (const event of events) this.#dispatch(event);
        this.cursor[partition] = to;
      } catch (error) {
        // The hub's position did not move: a retry (or the next notification) reads the same range again.
        this.#options.logger.warn({ err: error, partition }, "could not read the event log; retrying in 1 s");
        if (!this.#stopped) setTimeout(() => this.#enqueue(partition, to), 1000).unref();
      }
    });
    this.#chains.set(partition, next);
  }

  #subscribe(stream: SseStream, conversationId: string, follow: boolean): void {
    if (follow) {
      stream.conversations.add(conversationId);
      let set = this.#byConversation.get(conversationId);
      if (!set) {
        set = new Set();
        this.#byConversation.set(conversationId, set);
      }
      set.add(stream);
    } else {
      stream.conversations.delete(conversationId);
      const set = this.#byConversation.get(conversationId);
      set?.delete(stream);
      if (set?.size === 0) this.#byConversation.delete(conversationId);
    }
  }

  /** Membership carried by an event: who starts or stops following its conversation. */
  #membership(event: LoggedEvent): { users: string[]; follow: boolean } | undefined {
    const data = event.payload as { userId?: string; members?: string[] };
    if (event.type === "chat.conversation.created") return { users: data.members ?? [], follow: true };
    if (event.type === "chat.member.joined" && data.userId) return { users: [data.userId], follow: true };
    if (event.type === "chat.member.left" && data.userId) return { users: [data.userId], follow: false };
    return undefined;
  }

  /**
   * In a big room (more open streams than `roomBroadcastMaxStreams`) a receipt goes
   * only to its own user's streams (their other devices): everyone's delivered
   * receipts to everyone would cost streams² writes per message. Senders there read
   * delivery counts from history instead.
   */
  #quietReceipt(event: LoggedEvent): boolean {
    if (event.type !== "chat.receipt.delivered" && event.type !== "chat.receipt.read") return false;
    const room = this.#byConversation.get(event.conversationId);
    return (room?.size ?? 0) > this.#options.sse.roomBroadcastMaxStreams;
  }

  #dispatch(event: LoggedEvent): void {
    if (this.#quietReceipt(event)) {
      const owner = (event.payload as { userId?: string }).userId;
      for (const stream of this.#byUser.get(owner ?? "") ?? []) {
        if (stream.conversations.has(event.conversationId)) stream.offer(event);
      }
      return;
    }
    const targets = new Set(this.#byConversation.get(event.conversationId));
    const change = this.#membership(event);
    if (change) {
      for (const user of change.users) {
        for (const stream of this.#byUser.get(user) ?? []) {
          targets.add(stream);
          if (change.follow) this.#subscribe(stream, event.conversationId, true);
        }
      }
    }
    for (const stream of targets) stream.offer(event);
    if (change && !change.follow) {
      for (const user of change.users) {
        for (const stream of this.#byUser.get(user) ?? [])
          this.#subscribe(stream, event.conversationId, false);
      }
    }
  }

  #delivered = (stream: SseStream, event: LoggedEvent): void => {
    const { metrics } = this.#options;
    metrics.sseDelivered.inc();
    metrics.sseDeliveryLatency.observe(Math.max(0, (Date.now() - event.materialisedAt.getTime()) / 1000));
    const change = this.#membership(event);
    if (change?.users.includes(stream.userId)) {
      this.#subscribe(stream, event.conversationId, change.follow);
    }
    const senderId = (event.payload as { senderId?: string }).senderId;
    if (event.type === "chat.message.sent" && event.seq !== null && senderId !== stream.userId) {
      this.#receipts.note(event.conversationId, stream.userId, event.seq);
    }
  };

  #closed = (stream: SseStream, reason: CloseReason): void => {
    const conversations = [...stream.conversations];
    for (const conversationId of [...stream.conversations]) this.#subscribe(stream, conversationId, false);
    const set = this.#byUser.get(stream.userId);
    set?.delete(stream);
    this.#options.metrics.sseStreams.dec();
    if (reason !== "client") this.#options.metrics.sseDisconnects.inc({ reason });
    if (set?.size === 0) {
      this.#byUser.delete(stream.userId);
      if (this.#stopped) return;
      // Offline only after the grace period: a quick reconnect does not flap.
      const timer = setTimeout(() => {
        this.#offlineTimers.delete(stream.userId);
        if (!this.#byUser.has(stream.userId)) {
          this.#receipts.forgetUser(stream.userId);
          void this.#announce(stream.userId, "offline", conversations);
        }
      }, this.#options.sse.presenceGraceMs);
      timer.unref();
      this.#offlineTimers.set(stream.userId, timer);
    }
  };

  /** Sends presence to the open streams of the members of the user's conversations (not the user's own). */
  async #announce(userId: string, status: PresenceEvent["status"], known: string[]): Promise<void> {
    let conversations = known;
    if (conversations.length === 0) {
      try {
        conversations = (await this.#options.projection.inbox(userId, { limit: 1000 })).map(
          (e) => e.conversation.id,
        );
      } catch {
        return;
      }
    }
    const presence: PresenceEvent = { userId, status, at: new Date().toISOString() };
    const reached = new Set<SseStream>();
    for (const conversationId of conversations) {
      const streams = this.#byConversation.get(conversationId);
      // Large rooms get no presence: every join would cost one write per open stream.
      if (!streams || streams.size > this.#options.sse.roomBroadcastMaxStreams) continue;
      for (const stream of streams) {
        if (stream.userId === userId || reached.has(stream)) continue;
        reached.add(stream);
        stream.send("presence", presence);
      }
    }
  }

  /**
   * Opens a stream for `userId` on `response` (headers already written), resuming
   * after `lastEventId` when given: exactly the events the client missed, once,
   * in per-partition (hence per-conversation) order; or a `reset` event when the id
   * cannot be resumed from (malformed, from another log, or too far behind).
   */
  async open(userId: string, response: ServerResponse, lastEventId: string | undefined): Promise<SseStream> {
    const { sse, projection, metrics } = this.#options;
    let cursor: EventCursor | null =
      lastEventId === undefined ? { ...this.cursor } : decodeEventCursor(lastEventId);
    let resetReason: string | undefined;
    if (cursor === null) resetReason = "the Last-Event-ID is not a chatbus stream position";
    else {
      const ahead = (head: EventCursor) =>
        Object.entries(cursor!).some(([p, o]) => BigInt(o) > BigInt(head[Number(p)] ?? "-1"));
      // This hub may lag the log by a notification: ask the log itself before resetting.
      if (ahead(this.cursor) && ahead(await this.#head())) {
        resetReason = "the Last-Event-ID is ahead of this event log (was the projection rebuilt?)";
      }
    }
    if (resetReason) cursor = { ...this.cursor };
    const stream = new SseStream({
      userId,
      response,
      cursor: cursor!,
      maxBufferedBytes: sse.maxBufferedBytes,
      onDelivered: this.#delivered,
      onClose: this.#closed,
    });
    metrics.sseStreams.inc();
    const wasOnline = this.isOnline(userId);
    const pendingOffline = this.#offlineTimers.get(userId);
    if (pendingOffline) {
      clearTimeout(pendingOffline);
      this.#offlineTimers.delete(userId);
    }
    let users = this.#byUser.get(userId);
    if (!users) {
      users = new Set();
      this.#byUser.set(userId, users);
    }
    users.add(stream);
    try {
      const inbox = await projection.inbox(userId, { limit: 1000 });
      if (stream.closed) return stream;
      for (const entry of inbox) this.#subscribe(stream, entry.conversation.id, true);
      if (lastEventId === undefined || resetReason) {
        // A stream from "now": its position is the hub's, taken after subscribing, so
        // every later event reaches it through the hub and the log need not be read.
        Object.assign(stream.cursor, this.cursor);
        if (resetReason) this.#sendReset(stream, resetReason);
        stream.goLive();
        return this.#opened(stream, wasOnline);
      }
      // Live events now queue in stream.pending; the log supplies everything before them.
      let caughtUp = 0;
      for (;;) {
        const page = await projection.eventsAfter(stream.cursor, userId, catchUpPage);
        if (stream.closed) return stream;
        caughtUp += page.events.length;
        if (caughtUp > sse.resumeMaxEvents) {
          for (const p of Object.keys(this.cursor)) stream.cursor[Number(p)] = this.cursor[Number(p)]!;
          stream.pending = [];
          this.#sendReset(stream, `more than ${sse.resumeMaxEvents} events were missed; reload history`);
          break;
        }
        for (const event of page.events) {
          if (this.#quietReceipt(event) && (event.payload as { userId?: string }).userId !== userId) continue;
          stream.deliver(event);
        }
        if (page.events.length < catchUpPage) break;
      }
      stream.goLive();
    } catch (error) {
      this.#options.logger.warn({ err: error, userId }, "SSE stream could not start");
      stream.close("error");
      return stream;
    }
    return this.#opened(stream, wasOnline);
  }

  #opened(stream: SseStream, wasOnline: boolean): SseStream {
    if (!wasOnline) void this.#announce(stream.userId, "online", [...stream.conversations]);
    // The user sees who of their contacts is online now (later changes arrive as events).
    for (const other of this.#contactsOnline(stream)) {
      stream.send("presence", { userId: other, status: "online", at: new Date().toISOString() });
    }
    return stream;
  }

  #contactsOnline(stream: SseStream): Set<string> {
    const online = new Set<string>();
    for (const conversationId of stream.conversations) {
      const streams = this.#byConversation.get(conversationId);
      if (!streams || streams.size > this.#options.sse.roomBroadcastMaxStreams) continue;
      for (const other of streams) {
        if (other.userId !== stream.userId) online.add(other.userId);
      }
    }
    return online;
  }

  #sendReset(stream: SseStream, reason: string): void {
    stream.send("reset", { reason }, encodeEventCursor(stream.cursor));
  }

  /** Closes every stream (clients reconnect elsewhere and resume), flushes receipts, stops listening. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#heartbeat);
    clearTimeout(this.#reconnect);
    for (const timer of this.#offlineTimers.values()) clearTimeout(timer);
    for (const set of [...this.#byUser.values()]) for (const stream of [...set]) stream.close("shutdown");
    await Promise.allSettled([...this.#chains.values()]);
    await this.#receipts.stop();
    const listener = this.#listener;
    this.#listener = undefined;
    await listener?.end().catch(() => {});
  }
}
