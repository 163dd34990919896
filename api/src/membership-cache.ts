/**
 * The membership cache of one API process (issue 16): who is a current member of which
 * conversation, and each conversation's kind, so that a send (and every other
 * member-only route) does not ask PostgreSQL twice before it reaches Kafka.
 *
 * Correctness never depends on the cache being warm or even on: a miss reads the
 * projection as before, and the cache holds only what can be invalidated.
 * - It holds positive answers only ("is a member") and kinds (which never change).
 *   A user who is not a member is asked about in the database every time, so a member
 *   who was just added is accepted as soon as the join is materialised.
 * - It is kept current by the materialiser's NOTIFY, received on the log follower's
 *   LISTEN connection (no second LISTEN): each notification names the conversations
 *   whose membership its batch changed, and their entries are dropped; a notification
 *   without the list (too many, or an older materialiser) drops every entry. A removed
 *   member is refused as soon as the notification arrives (milliseconds after the
 *   commit).
 * - It is used only while that LISTEN connection is up: when it is lost the cache is
 *   cleared and bypassed (every lookup reads the database) until LISTEN is back, since
 *   a removal committed meanwhile sends no notification we would hear.
 * - A lookup that raced an invalidation is answered but not stored: every
 *   invalidation moves an epoch, and a database answer is stored only if the epoch
 *   did not move while it was read (it may predate the commit that invalidated it).
 *
 * Bounded: at most `maxEntries` entries, one per conversation plus one per member
 * known, least recently used conversations evicted first (`CHATBUS_MEMBERSHIP_CACHE_SIZE`).
 */
import type {
  ConversationView,
  EventsNotification,
  ProjectionReader,
} from "@chatbus/consumer-runtime/materialiser";
import { Counter, Gauge, type Registry } from "prom-client";
import type { ListenObserver } from "./realtime/log-follower.ts";

/** A conversation's kind (`direct` or `group`); it never changes. */
export type ConversationKind = ConversationView["kind"];

/** What routes ask of membership; the cache answers it, and so would the projection reader. */
export interface Membership {
  /** True when the user is a current member of the conversation. */
  isMember(conversationId: string, userId: string): Promise<boolean>;
  /** The conversation's kind when the user is a current member of it; null otherwise (or no such conversation). */
  memberOf(conversationId: string, userId: string): Promise<ConversationKind | null>;
}

/** What the cache needs. */
export interface MembershipCacheOptions {
  /** Where misses are read. */
  projection: Pick<ProjectionReader, "isMember" | "conversation">;
  /** Entries kept at most (a conversation and each of its members known are one each); 0 turns the cache off. */
  maxEntries: number;
  /** Its metrics register here. */
  registry: Registry;
}

interface Entry {
  /** Undefined until a lookup that needed it read it. */
  kind: ConversationKind | undefined;
  /** Current members known; a user not in it is read from the database. */
  members: Set<string>;
}

/** The membership cache; `connected`/`lost`/`notified` are called by the LISTEN connection's owner. */
export class MembershipCache implements Membership, ListenObserver {
  readonly #projection: MembershipCacheOptions["projection"];
  readonly #max: number;
  /** Insertion order is recency order: a hit moves its conversation to the end. */
  readonly #entries = new Map<string, Entry>();
  #size = 0;
  /** True only while the LISTEN connection is up (and the cache is on). */
  #live = false;
  /** Moves on every invalidation; a lookup stores its answer only if it did not move meanwhile. */
  #epoch = 0;
  readonly #hits: Counter;
  readonly #misses: Counter;
  readonly #evictions: Counter;
  readonly #invalidations: Counter;

  constructor(options: MembershipCacheOptions) {
    this.#projection = options.projection;
    this.#max = options.maxEntries;
    const registers = [options.registry];
    this.#hits = new Counter({
      name: "chatbus_membership_cache_hits_total",
      help: "Membership lookups answered from the API process's membership cache.",
      registers,
    });
    this.#misses = new Counter({
      name: "chatbus_membership_cache_misses_total",
      help: "Membership lookups read from PostgreSQL (not cached, or the cache bypassed while its LISTEN connection is down).",
      registers,
    });
    this.#evictions = new Counter({
      name: "chatbus_membership_cache_evictions_total",
      help: "Conversations evicted from the membership cache to keep it within CHATBUS_MEMBERSHIP_CACHE_SIZE.",
      registers,
    });
    this.#invalidations = new Counter({
      name: "chatbus_membership_cache_invalidations_total",
      help: "Membership cache invalidations: a conversation's membership changed, or the whole cache was cleared.",
      registers,
    });
    const entries: Gauge = new Gauge({
      name: "chatbus_membership_cache_entries",
      help: "Entries in the membership cache (conversations plus members known); at most CHATBUS_MEMBERSHIP_CACHE_SIZE.",
      registers,
      collect: () => entries.set(this.#size),
    });
    const live: Gauge = new Gauge({
      name: "chatbus_membership_cache_live",
      help: "1 while the membership cache is used (its LISTEN connection is up), 0 while it is bypassed.",
      registers,
      collect: () => live.set(this.#live ? 1 : 0),
    });
  }

  /** Entries held (conversations plus members known). */
  get size(): number {
    return this.#size;
  }

  async isMember(conversationId: string, userId: string): Promise<boolean> {
    const entry = this.#live ? this.#entries.get(conversationId) : undefined;
    if (entry?.members.has(userId)) {
      this.#hit(conversationId, entry);
      return true;
    }
    this.#misses.inc();
    const epoch = this.#epoch;
    const member = await this.#projection.isMember(conversationId, userId);
    if (member) this.#remember(epoch, conversationId, undefined, userId);
    return member;
  }

  async memberOf(conversationId: string, userId: string): Promise<ConversationKind | null> {
    const entry = this.#live ? this.#entries.get(conversationId) : undefined;
    const known = entry?.members.has(userId) ?? false;
    if (known && entry?.kind !== undefined) {
      this.#hit(conversationId, entry);
      return entry.kind;
    }
    this.#misses.inc();
    const epoch = this.#epoch;
    // Whatever the entry lacks, read in parallel (both on a cold entry, as before the cache).
    const [member, kind] = await Promise.all([
      known || this.#projection.isMember(conversationId, userId),
      entry?.kind ?? this.#projection.conversation(conversationId).then((c) => c?.kind),
    ]);
    if (!member || kind === undefined) return null;
    this.#remember(epoch, conversationId, kind, userId);
    return kind;
  }

  /** The LISTEN connection is up (LISTEN done): from now on every commit is notified. */
  connected(): void {
    // A lookup read before LISTEN may have missed a commit nobody will notify: do not store it.
    this.#epoch++;
    this.#live = this.#max > 0;
  }

  /** The LISTEN connection is lost: notifications may be missed, so clear and bypass until `connected`. */
  lost(): void {
    this.#live = false;
    this.#clear();
  }

  /** Membership changes arrive with the notification, before the follower reads the range. */
  applied(): void {}

  /** A committed batch: drop the conversations whose membership it changed (all of them when it does not say). */
  notified(notification: Pick<EventsNotification, "members">): void {
    const { members } = notification;
    if (members === undefined) {
      this.#clear();
      return;
    }
    if (members.length === 0) return;
    this.#epoch++;
    for (const conversationId of members) {
      this.#invalidations.inc();
      this.#drop(conversationId);
    }
  }

  #hit(conversationId: string, entry: Entry): void {
    this.#hits.inc();
    // Most recently used last: Map keeps insertion order.
    this.#entries.delete(conversationId);
    this.#entries.set(conversationId, entry);
  }

  #remember(epoch: number, conversationId: string, kind: ConversationKind | undefined, userId: string): void {
    if (!this.#live || epoch !== this.#epoch) return;
    let entry = this.#entries.get(conversationId);
    if (entry) {
      this.#entries.delete(conversationId);
    } else {
      entry = { kind: undefined, members: new Set() };
      this.#size += 1;
    }
    this.#entries.set(conversationId, entry);
    if (kind !== undefined) entry.kind = kind;
    if (!entry.members.has(userId)) {
      entry.members.add(userId);
      this.#size += 1;
    }
    while (this.#size > this.#max) {
      const oldest = this.#entries.keys().next().value as string;
      this.#drop(oldest);
      this.#evictions.inc();
    }
  }

  #drop(conversationId: string): void {
    const entry = this.#entries.get(conversationId);
    if (!entry) return;
    this.#entries.delete(conversationId);
    this.#size -= 1 + entry.members.size;
  }

  #clear(): void {
    this.#epoch++;
    this.#invalidations.inc();
    this.#entries.clear();
    this.#size = 0;
  }
}
