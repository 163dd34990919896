/**
 * The history cache of one API process (issue 16): the newest page of a conversation
 * (`GET /v1/conversations/:id/messages` without `after` or `before`), which everyone who
 * opens the conversation reads, held per page size so that readers after the first do
 * not query PostgreSQL until the conversation changes. Pages with a cursor are read
 * from the database every time.
 *
 * Never staler than this process's realtime delivery:
 * - A conversation's pages are dropped when the log follower has read a committed range
 *   holding any of its events, before those events are handed to the SSE streams
 *   (every event that changes a page is in `event_log`, in its own conversation: a
 *   message, an edit or recall, a receipt, a member joining or leaving). A client that
 *   got an event over SSE and then reads history gets a page with it.
 * - A database read stores its page only if no change to the conversation was applied
 *   while it ran (it may have read the state before that change); concurrent readers
 *   of a missing page share one read, unless a change arrived after it started.
 * - It is used only while the follower's LISTEN connection is up and caught up: when it
 *   is lost the cache is cleared and bypassed until LISTEN is back and the applied
 *   position is read again, since a commit meanwhile sends no notification we would
 *   hear. A committed range the follower could not read clears the cache.
 *
 * Between a commit and the follower reading it (a few milliseconds) a hit serves the
 * page as it was before the commit, as realtime does; a write acknowledged with 202 is
 * not yet materialised anyway.
 *
 * Bounded by `maxBytes` (`CHATBUS_HISTORY_CACHE_BYTES`), estimated from each page's
 * content; least recently read conversations go first. Cached pages are shared between
 * requests: callers must not modify them.
 */
import type { HistoryPage, LoggedEvent, ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import { Counter, Gauge, type Registry } from "prom-client";
import type { ListenObserver } from "./realtime/log-follower.ts";

/** What the cache needs. */
export interface HistoryCacheOptions {
  /** Where misses (and every page with a cursor) are read. */
  projection: Pick<ProjectionReader, "historyPage">;
  /** Estimated bytes of pages kept at most; 0 turns the cache off. */
  maxBytes: number;
  /** Its metrics register here. */
  registry: Registry;
}

interface Cached {
  page: HistoryPage;
  bytes: number;
}

/** A database read in flight; `current` turns false when the conversation changes meanwhile. */
interface Read {
  page: Promise<HistoryPage>;
  current: boolean;
  startedAt: number;
}

/**
 * A read in flight longer than this is not joined: the API's pool has no statement
 * timeout, and one read that never returns must not hold every later reader of the page.
 */
const joinReadsForMs = 1000;

/** Rough heap bytes of a page: the strings it holds plus a fixed cost per object. */
function pageBytes(page: HistoryPage): number {
  let bytes = 200 + page.positions.length * 120;
  for (const m of page.messages) bytes += 100 + 2 * (m.senderId.length + m.json.length);
  return bytes;
}

/** The history cache; `connected`/`lost`/`applied` are called by the log follower. */
export class HistoryCache implements ListenObserver {
  readonly #projection: HistoryCacheOptions["projection"];
  readonly #max: number;
  /** conversation → page size → page; insertion order is recency order (a hit moves it last). */
  readonly #pages = new Map<string, Map<number, Cached>>();
  /** conversation → page size → the read in flight. */
  readonly #reads = new Map<string, Map<number, Read>>();
  #bytes = 0;
  /** True only while the LISTEN connection is up and caught up (and the cache is on). */
  #live = false;
  readonly #hits: Counter;
  readonly #misses: Counter;
  readonly #evictions: Counter;

  constructor(options: HistoryCacheOptions) {
    this.#projection = options.projection;
    this.#max = options.maxBytes;
    const registers = [options.registry];
    this.#hits = new Counter({
      name: "chatbus_history_cache_hits_total",
      help: "Newest history pages answered from the API process's history cache.",
      registers,
    });
    this.#misses = new Counter({
      name: "chatbus_history_cache_misses_total",
      help: "Newest history pages read from PostgreSQL (not cached, changed, or the cache bypassed while its LISTEN connection is down).",
      registers,
    });
    this.#evictions = new Counter({
      name: "chatbus_history_cache_evictions_total",
      help: "Conversations whose pages were evicted to keep the history cache within CHATBUS_HISTORY_CACHE_BYTES.",
      registers,
    });
    const bytes: Gauge = new Gauge({
      name: "chatbus_history_cache_bytes",
      help: "Estimated bytes of the pages in the history cache; at most CHATBUS_HISTORY_CACHE_BYTES.",
      registers,
      collect: () => bytes.set(this.#bytes),
    });
  }

  /** Estimated bytes held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The page `projection.historyPage` would answer; the newest page from the cache when it can. */
  page(
    conversationId: string,
    options: { limit: number; after?: number; before?: number },
  ): Promise<HistoryPage> {
    if (!this.#live || options.after !== undefined || options.before !== undefined) {
      return this.#projection.historyPage(conversationId, options);
    }
    const { limit } = options;
    const pages = this.#pages.get(conversationId);
    const cached = pages?.get(limit);
    if (pages && cached) {
      this.#hits.inc();
      this.#pages.delete(conversationId); // most recently read last
      this.#pages.set(conversationId, pages);
      return Promise.resolve(cached.page);
    }
    this.#misses.inc();
    const inFlight = this.#reads.get(conversationId)?.get(limit);
    if (inFlight?.current && Date.now() - inFlight.startedAt < joinReadsForMs) return inFlight.page;
    return this.#read(conversationId, limit);
  }

  #read(conversationId: string, limit: number): Promise<HistoryPage> {
    const read: Read = {
      page: this.#projection.historyPage(conversationId, { limit }),
      current: true,
      startedAt: Date.now(),
    };
    const reads = this.#reads.get(conversationId) ?? new Map<number, Read>();
    this.#reads.set(conversationId, reads);
    reads.set(limit, read);
    const settled = () => {
      const now = this.#reads.get(conversationId);
      if (now?.get(limit) !== read) return; // dropped by a change, or a newer read took its place
      now.delete(limit);
      if (now.size === 0) this.#reads.delete(conversationId);
    };
    read.page.then((page) => {
      settled();
      if (read.current && this.#live) this.#store(conversationId, limit, page);
    }, settled);
    return read.page;
  }

  #store(conversationId: string, limit: number, page: HistoryPage): void {
    const bytes = pageBytes(page);
    if (bytes > this.#max) return;
    let pages = this.#pages.get(conversationId);
    if (pages) this.#pages.delete(conversationId);
    else pages = new Map();
    this.#pages.set(conversationId, pages);
    this.#bytes += bytes - (pages.get(limit)?.bytes ?? 0);
    pages.set(limit, { page, bytes });
    while (this.#bytes > this.#max) {
      this.#drop(this.#pages.keys().next().value as string);
      this.#evictions.inc();
    }
  }

  /** LISTEN is up and the applied position read: every later commit reaches `applied`. */
  connected(): void {
    // Reads begun while bypassed were not tracked (`page` reads them directly): none is stored.
    this.#live = this.#max > 0;
  }

  /** LISTEN is lost: commits may go unreported, so clear and bypass until `connected`. */
  lost(): void {
    this.#live = false;
    this.#clear();
  }

  /** Membership changes matter to the membership cache; pages change with `applied`. */
  notified(): void {}

  /** The events of a committed range, before they reach the streams; null: a range could not be read. */
  applied(events: readonly LoggedEvent[] | null): void {
    if (events === null) {
      this.#clear();
      return;
    }
    let previous: string | undefined;
    for (const { conversationId } of events) {
      if (conversationId === previous) continue;
      previous = conversationId;
      this.#drop(conversationId);
      const reads = this.#reads.get(conversationId);
      if (!reads) continue;
      for (const read of reads.values()) read.current = false;
      this.#reads.delete(conversationId);
    }
  }

  #drop(conversationId: string): void {
    const pages = this.#pages.get(conversationId);
    if (!pages) return;
    this.#pages.delete(conversationId);
    for (const { bytes } of pages.values()) this.#bytes -= bytes;
  }

  #clear(): void {
    for (const reads of this.#reads.values()) for (const read of reads.values()) read.current = false;
    this.#reads.clear();
    this.#pages.clear();
    this.#bytes = 0;
  }
}
