/**
 * The log follower: one LISTEN connection per API process on the materialiser's
 * channel; it reads each committed range `{partition, from, to}` once (`eventsInRanges`,
 * one query for every range notified since the last read) and hands the events to
 * `onEvents`, each partition strictly in offset order.
 *
 * Its position is the materialiser's *applied* position (`projection_offsets`), not
 * the highest offset in `event_log`: a committed batch can end in records that never
 * reach the log (dead letters, duplicates), and a notification's `to` counts them.
 * Every process, whenever it started, therefore agrees on the same position for the
 * same committed state, so a stream id issued by one process resumes on any other
 * (issue 18.1: a process that learnt its start from `max(event_log.offset)` called an
 * id from a longer-running process "ahead of this event log").
 *
 * Start-up: LISTEN first, then read the applied position; notifications that arrive
 * in between wait until the position is known (they used to read the partition from
 * offset 0 and could move the cursor backwards). The LISTEN socket has TCP keep-alive
 * so a silently dropped path ends in an error and a reconnect, not a stalled hub.
 *
 * The same connection keeps the API's caches current (`observers`: the membership and
 * history caches): they hear every notification first, every range's events before
 * `onEvents`, and whether LISTEN is up and caught up (a cache is bypassed while it is not).
 */
import type {
  EventCursor,
  EventsNotification,
  LoggedEvent,
  OffsetRange,
  ProjectionReader,
} from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import type { Logger } from "pino";

/**
 * Told of every notification, every committed range's events, and whether LISTEN is up:
 * the membership cache (`membership-cache.ts`) and the history cache (`history-cache.ts`).
 */
export interface ListenObserver {
  /**
   * LISTEN is done on a new connection and the applied position read after it: every
   * commit from now on is notified, and every one before is visible to a new read.
   */
  connected(): void;
  /** The LISTEN connection failed or ended: notifications may be missed until `connected` again. */
  lost(): void;
  /** A commit; `members` as in `EventsNotification` (absent: take every membership as changed). */
  notified(notification: Pick<EventsNotification, "members">): void;
  /** A read's events (of one or more committed ranges), before `onEvents`; null when a read failed. */
  applied(events: readonly LoggedEvent[] | null): void;
}

/** What the follower needs. */
export interface LogFollowerOptions {
  /** Connection string of the projection database (a dedicated client LISTENs). */
  databaseUrl: string;
  /** The materialiser's channel: `eventsChannel(schema)`. */
  channel: string;
  /** The topic whose applied offsets `projection_offsets` holds. */
  topic: string;
  pool: pg.Pool;
  projection: ProjectionReader;
  logger: Logger;
  /** Called with each read's events, in offset order per partition. */
  onEvents: (events: LoggedEvent[]) => void;
  observers: readonly ListenObserver[];
}

/** The applied position of the projection: last applied offset per partition (inclusive). */
export async function appliedPosition(db: pg.Pool | pg.PoolClient, topic: string): Promise<EventCursor> {
  const { rows } = await db.query<{ partition: number; offset: string }>(
    `SELECT partition, (next_offset - 1)::text AS "offset" FROM projection_offsets
      WHERE topic = $1 AND next_offset > 0`,
    [topic],
  );
  return Object.fromEntries(rows.map((r) => [r.partition, r.offset]));
}

/** True when `cursor` names an offset beyond `head` in some partition. */
export function cursorAhead(cursor: EventCursor, head: EventCursor): boolean {
  return Object.entries(cursor).some(([p, o]) => BigInt(o) > BigInt(head[Number(p)] ?? "-1"));
}

/** Follows the materialiser's commits and reads each committed range once. */
export class LogFollower {
  /** Highest offset handed to `onEvents` per partition (inclusive). */
  readonly cursor: EventCursor = {};
  /** Highest notified offset per partition, until a read hands it over. */
  readonly #wanted = new Map<number, string>();
  #reading: Promise<void> | undefined;
  #retry: NodeJS.Timeout | undefined;
  readonly #options: LogFollowerOptions;
  #listener: pg.Client | undefined;
  /** The connection the observer was told is up. */
  #observed: pg.Client | undefined;
  #reconnect: NodeJS.Timeout | undefined;
  /** Notifications that arrived before the start position was known. */
  #early: EventsNotification[] | null = [];
  #stopped = false;

  constructor(options: LogFollowerOptions) {
    this.#options = options;
  }

  /** LISTENs, then learns the applied position. Must resolve before streams open. */
  async start(): Promise<void> {
    await this.#listen();
  }

  /** The applied position as the database has it now (may be ahead of `cursor` by a notification). */
  head(): Promise<EventCursor> {
    return appliedPosition(this.#options.pool, this.#options.topic);
  }

  async #listen(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.#options.databaseUrl,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
    });
    client.on("error", (error) => {
      this.#options.logger.warn({ err: error }, "SSE LISTEN connection failed; reconnecting");
      this.#lost(client);
      this.#scheduleReconnect(client);
    });
    client.on("end", () => {
      this.#lost(client);
      this.#scheduleReconnect(client);
    });
    client.on("notification", (message) => {
      if (!message.payload) return;
      try {
        const n = JSON.parse(message.payload) as EventsNotification;
        // One read covers every partition: a range PostgreSQL cannot take (not a bigint)
        // would fail it, and every partition's delivery with it, on every retry.
        if (!Number.isSafeInteger(n.partition) || n.partition < 0 || !/^\d{1,18}$/.test(String(n.to))) {
          throw new Error("a notification without an integer partition and a bigint offset");
        }
        for (const o of this.#options.observers) o.notified(n);
        if (this.#early) this.#early.push(n);
        else this.#enqueue(n.partition, n.to);
      } catch (error) {
        for (const o of this.#options.observers) o.notified({}); // what changed is unknown: everything may have
        this.#options.logger.warn({ err: error, payload: message.payload }, "unreadable events notification");
      }
    });
    await client.connect();
    await client.query(`LISTEN "${this.#options.channel.replaceAll('"', '""')}"`);
    this.#listener = client;
    // After LISTEN: anything committed later arrives as a notification; the head covers the rest.
    const head = await this.head();
    const first = this.#early;
    if (first) {
      // First start: streams begin at the head; earlier notifications are below or at it
      // unless they raced the query, and then they read only what lies beyond the head.
      Object.assign(this.cursor, head);
      this.#early = null;
      for (const n of first) this.#enqueue(n.partition, n.to);
    } else {
      for (const [p, offset] of Object.entries(head)) this.#enqueue(Number(p), offset); // missed while reconnecting
    }
    // Only now: a commit at or below the head whose notification came early is read by
    // nobody, so a cache must not keep what it read before the head was known.
    if (this.#listener !== client) return; // lost while the head was read; the reconnect tells them
    this.#observed = client;
    for (const o of this.#options.observers) o.connected();
  }

  #lost(client: pg.Client): void {
    if (this.#observed !== client) return; // an older connection ending late (or not yet caught up)
    this.#observed = undefined;
    for (const o of this.#options.observers) o.lost();
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

  /** Wants partition `p` read up to offset `to`: in the read in flight's successor, or now. */
  #enqueue(partition: number, to: string): void {
    const wanted = this.#wanted.get(partition);
    if (wanted === undefined || BigInt(to) > BigInt(wanted)) this.#wanted.set(partition, to);
    this.#read();
  }

  /**
   * Reads every wanted range in one query, unless a read is in flight or waits to be
   * retried: the notifications that arrive meanwhile join the next read. One query per
   * commit at most, however many partitions it moved (it was one per partition and
   * notification: 640 queries/s at 1,000 events/s, six times the materialiser's commits).
   */
  #read(): void {
    if (this.#reading || this.#retry || this.#stopped || this.#wanted.size === 0) return;
    // After a microtask: the other notifications of the same socket read (one commit's
    // partitions) are wanted by then and join this read.
    this.#reading = Promise.resolve()
      .then(() => this.#readRanges(this.#wantedRanges()))
      .finally(() => {
        this.#reading = undefined;
        this.#read();
      });
  }

  /** What is wanted beyond the cursor; forgets what the cursor already covers. */
  #wantedRanges(): OffsetRange[] {
    const ranges: OffsetRange[] = [];
    for (const [partition, to] of this.#wanted) {
      const known = this.cursor[partition];
      if (known !== undefined && BigInt(to) <= BigInt(known)) this.#wanted.delete(partition);
      else ranges.push({ partition, from: known === undefined ? "0" : (BigInt(known) + 1n).toString(), to });
    }
    return ranges;
  }

  async #readRanges(ranges: OffsetRange[]): Promise<void> {
    if (ranges.length === 0) return;
    try {
      const events = await this.#options.projection.eventsInRanges(ranges);
      for (const o of this.#options.observers) o.applied(events);
      this.#options.onEvents(events);
      for (const r of ranges) {
        this.cursor[r.partition] = r.to;
        if (this.#wanted.get(r.partition) === r.to) this.#wanted.delete(r.partition);
      }
    } catch (error) {
      for (const o of this.#options.observers) o.applied(null); // what changed is unknown
      // The position did not move: the retry (with what was notified meanwhile) reads the same ranges again.
      this.#options.logger.warn({ err: error, ranges }, "could not read the event log; retrying in 1 s");
      this.#retry = setTimeout(() => {
        this.#retry = undefined;
        this.#read();
      }, 1000).unref();
    }
  }

  /** Stops listening after the ranges being read are handed over. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#reconnect);
    clearTimeout(this.#retry);
    await this.#reading;
    const listener = this.#listener;
    this.#listener = undefined;
    if (listener) this.#lost(listener);
    await listener?.end().catch(() => {});
  }
}
