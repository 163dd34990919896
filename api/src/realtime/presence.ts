/**
 * Presence across API processes, kept in PostgreSQL (issue 18.2; no new server):
 *
 * - `presence_streams` has a row while a process holds at least one open stream of
 *   a user; `api_processes` has each process's heartbeat, so the rows of a process
 *   that was killed stop counting once its heartbeat is older than the timeout.
 * - `presence` is the last announced state. A transition is ONE statement that
 *   updates it only if it really changes and selects `pg_notify` from the update:
 *   two processes racing to announce the same transition serialise on the row and
 *   only one announces. Every process LISTENs on the presence channel and writes the
 *   announcement to its own streams of the user's fellow members.
 * - Offline waits for the grace period after the last stream closed anywhere
 *   (`last_closed_at`): the process that closed it re-checks when its grace timer
 *   fires, and every process sweeps now and then for users whose streams lived on a
 *   process that died.
 */
import { randomUUID } from "node:crypto";
import pg from "pg";
import type { Logger } from "pino";
import type { SseStream } from "./stream.ts";
import type { StreamIndex } from "./stream-index.ts";

/** Presence as SSE clients see it. */
export interface PresenceEvent {
  userId: string;
  status: "online" | "offline";
  at: string;
}

/** What presence needs. */
export interface PresenceOptions {
  databaseUrl: string;
  /** The materialiser's events channel; presence uses `<channel>_presence`. */
  channel: string;
  pool: pg.Pool;
  index: StreamIndex;
  logger: Logger;
  /** Delay before announcing offline, ms. */
  graceMs: number;
  /** A process whose heartbeat is older than this no longer keeps its users online, ms. */
  processTimeoutMs: number;
  /** Rooms with more members than this get no presence (one write per stream per change). */
  roomBroadcastMaxStreams: number;
}

const memberConversationsLimit = 1000;

/** One process's part of the shared presence. */
export class Presence {
  /** This process's id in `api_processes`. */
  readonly processId = randomUUID();
  readonly #options: PresenceOptions;
  readonly #channel: string;
  readonly #graceTimers = new Map<string, NodeJS.Timeout>();
  #listener: pg.Client | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #reconnect: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Last status each stream was told per user: the greeting and an announcement can race. */
  readonly #told = new WeakMap<SseStream, Map<string, PresenceEvent["status"]>>();
  /** Writes in flight, awaited by `stop()`. */
  readonly #pending = new Set<Promise<unknown>>();

  constructor(options: PresenceOptions) {
    this.#options = options;
    this.#channel = `${options.channel}_presence`;
  }

  async start(): Promise<void> {
    await this.#register();
    await this.#listen();
    this.#heartbeat = setInterval(() => void this.#beat(), Math.max(200, this.#options.processTimeoutMs / 3));
    this.#heartbeat.unref();
  }

  async #listen(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.#options.databaseUrl,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    const retry = () => {
      if (this.#stopped || this.#listener !== client || this.#reconnect) return;
      this.#listener = undefined;
      client.end().catch(() => {});
      this.#reconnect = setTimeout(() => {
        this.#reconnect = undefined;
        this.#listen().catch((error) => this.#options.logger.warn({ err: error }, "presence LISTEN failed"));
      }, 1000);
    };
    client.on("error", (error) => {
      this.#options.logger.warn({ err: error }, "presence LISTEN connection failed; reconnecting");
      retry();
    });
    client.on("end", retry);
    client.on("notification", (message) => {
      if (!message.payload) return;
      try {
        void this.#deliver(JSON.parse(message.payload) as PresenceEvent);
      } catch (error) {
        this.#options.logger.warn({ err: error }, "unreadable presence notification");
      }
    });
    await client.connect();
    await client.query(`LISTEN "${this.#channel.replaceAll('"', '""')}"`);
    this.#listener = client;
  }

  #track<T>(promise: Promise<T>): Promise<T> {
    this.#pending.add(promise);
    void promise.finally(() => this.#pending.delete(promise)).catch(() => {});
    return promise;
  }

  /** Inserts or refreshes this process's row (another process may have swept it after a long pause). */
  async #register(): Promise<void> {
    const { rows } = await this.#options.pool.query<{ inserted: boolean }>(
      `INSERT INTO api_processes (process_id) VALUES ($1)
       ON CONFLICT (process_id) DO UPDATE SET heartbeat_at = now() RETURNING (xmax = 0) AS inserted`,
      [this.processId],
    );
    const users = this.#options.index.users();
    if (rows[0]?.inserted && users.length > 0) {
      // Swept while paused (its stream rows went with it): this process's users count again.
      await this.#options.pool.query(
        `INSERT INTO presence_streams (user_id, process_id)
         SELECT u, $2 FROM unnest($1::text[]) AS u ON CONFLICT DO NOTHING`,
        [users, this.processId],
      );
    }
  }

  /** Heartbeat, then sweep users whose streams were on a process that is gone. */
  async #beat(): Promise<void> {
    const { pool, processTimeoutMs, graceMs } = this.#options;
    try {
      await this.#register();
      await pool.query(
        "DELETE FROM api_processes WHERE heartbeat_at < now() - make_interval(secs => $1::double precision / 1000)",
        [processTimeoutMs * 2],
      );
      await pool.query(
        `WITH t AS (
           UPDATE presence p SET online = false, changed_at = now()
            WHERE p.online
              AND (p.last_closed_at IS NULL OR p.last_closed_at < now() - make_interval(secs => $1::double precision / 1000))
              AND NOT EXISTS (${liveStreams("p.user_id")})
            RETURNING p.user_id, p.changed_at)
         SELECT pg_notify($3, json_build_object('userId', user_id, 'status', 'offline', 'at', changed_at)::text) FROM t`,
        [graceMs, processTimeoutMs, this.#channel],
      );
    } catch (error) {
      this.#options.logger.warn({ err: error }, "presence heartbeat failed");
    }
  }

  /** The user's first stream on this process opened: online everywhere if they were not. */
  opened(userId: string): Promise<void> {
    const timer = this.#graceTimers.get(userId);
    if (timer) {
      clearTimeout(timer);
      this.#graceTimers.delete(userId);
    }
    return this.#track(
      this.#options.pool
        .query(
          `WITH s AS (
             INSERT INTO presence_streams (user_id, process_id) VALUES ($1, $2) ON CONFLICT DO NOTHING),
           t AS (
             INSERT INTO presence AS p (user_id, online, changed_at) VALUES ($1, true, now())
             ON CONFLICT (user_id) DO UPDATE SET online = true, changed_at = now() WHERE NOT p.online
             RETURNING p.user_id, p.changed_at)
           SELECT pg_notify($3, json_build_object('userId', user_id, 'status', 'online', 'at', changed_at)::text) FROM t`,
          [userId, this.processId, this.#channel],
        )
        .then(() => undefined),
    ).catch((error) => this.#options.logger.warn({ err: error, userId }, "could not record presence"));
  }

  /** The user's last stream on this process closed: offline after the grace, unless a stream opened anywhere. */
  closed(userId: string, onOffline: () => void): void {
    if (this.#stopped) return;
    const { pool, graceMs, processTimeoutMs } = this.#options;
    const closing = this.#track(
      pool.query(
        `WITH d AS (DELETE FROM presence_streams WHERE user_id = $1 AND process_id = $2)
         UPDATE presence SET last_closed_at = now() WHERE user_id = $1`,
        [userId, this.processId],
      ),
    ).catch((error) => this.#options.logger.warn({ err: error, userId }, "could not record presence"));
    const timer = setTimeout(() => {
      this.#graceTimers.delete(userId);
      if (this.#options.index.hasUser(userId)) return;
      onOffline();
      void this.#track(
        closing.then(() =>
          pool.query(
            `WITH t AS (
               UPDATE presence p SET online = false, changed_at = now()
                WHERE p.user_id = $1 AND p.online AND NOT EXISTS (${liveStreams("p.user_id")})
                RETURNING p.user_id, p.changed_at)
             SELECT pg_notify($3, json_build_object('userId', user_id, 'status', 'offline', 'at', changed_at)::text) FROM t`,
            [userId, processTimeoutMs, this.#channel],
          ),
        ),
      ).catch((error) => this.#options.logger.warn({ err: error, userId }, "could not announce offline"));
    }, graceMs);
    timer.unref();
    this.#graceTimers.set(userId, timer);
  }

  /** Writes an announcement to this process's streams of the user's fellow members (not the user's own). */
  async #deliver(presence: PresenceEvent): Promise<void> {
    const { index, pool } = this.#options;
    if (index.streamCount === 0) return;
    let conversations: string[];
    try {
      const { rows } = await pool.query<{ conversation_id: string }>(
        "SELECT conversation_id FROM members WHERE user_id = $1 AND left_at IS NULL LIMIT $2",
        [presence.userId, memberConversationsLimit],
      );
      conversations = rows.map((r) => r.conversation_id);
    } catch (error) {
      this.#options.logger.warn({ err: error }, "could not deliver presence");
      return;
    }
    const reached = new Set<SseStream>();
    for (const conversationId of conversations) {
      // Large rooms get no presence: every join would cost one write per open stream.
      for (const stream of index.smallRoom(conversationId) ?? []) {
        if (stream.userId === presence.userId || reached.has(stream)) continue;
        reached.add(stream);
        this.#tell(stream, presence);
      }
    }
  }

  /** Tells a new stream which of its contacts are online now (later changes arrive as events). */
  async greet(stream: SseStream): Promise<void> {
    const { index, pool, roomBroadcastMaxStreams } = this.#options;
    const rooms = [...stream.conversations].filter((c) => index.smallRoom(c) !== undefined);
    if (rooms.length === 0) return;
    const { rows } = await pool.query<{ user_id: string; changed_at: Date }>(
      `SELECT DISTINCT p.user_id, p.changed_at FROM members m
         JOIN presence p ON p.user_id = m.user_id AND p.online
        WHERE m.conversation_id = ANY($1::text[]) AND m.left_at IS NULL AND m.user_id <> $2
        LIMIT $3`,
      [rooms, stream.userId, roomBroadcastMaxStreams * 5],
    );
    for (const row of rows) {
      this.#tell(stream, { userId: row.user_id, status: "online", at: row.changed_at.toISOString() });
    }
  }

  /** Sends a presence event unless the stream was already told this status of this user. */
  #tell(stream: SseStream, presence: PresenceEvent): void {
    let told = this.#told.get(stream);
    if (!told) {
      told = new Map();
      this.#told.set(stream, told);
    }
    if (told.get(presence.userId) === presence.status) return;
    told.set(presence.userId, presence.status);
    stream.send("presence", presence);
  }

  /** Stops announcing; this process's streams stop counting at once (no wait for the timeout). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#heartbeat);
    clearTimeout(this.#reconnect);
    for (const timer of this.#graceTimers.values()) clearTimeout(timer);
    await Promise.allSettled([...this.#pending]);
    await this.#options.pool
      .query("DELETE FROM api_processes WHERE process_id = $1", [this.processId])
      .catch((error) =>
        this.#options.logger.warn({ err: error }, "could not remove this process's presence"),
      );
    const listener = this.#listener;
    this.#listener = undefined;
    await listener?.end().catch(() => {});
  }
}

/** Live stream rows of a user: on a process whose heartbeat is within the timeout ($2, ms). */
function liveStreams(user: string): string {
  return `SELECT 1 FROM presence_streams s JOIN api_processes a ON a.process_id = s.process_id
           WHERE s.user_id = ${user}
             AND a.heartbeat_at > now() - make_interval(secs => $2::double precision / 1000)`;
}
