/**
 * Per-conversation token buckets for `chat.message.sent`. A bucket holds
 * `rate * burstSeconds` tokens and refills at `rate` per second; a message takes one.
 * `normal` needs a whole token; `low` needs a token *above* the reserve, so it is
 * shed while normal messages still pass; `high` always passes (taking a token when
 * there is one, so it still counts against the budget, but never going into debt).
 */
import type { ConversationKind, Priority } from "./events.ts";

export interface RateLimiterOptions {
  directPerSecond: number;
  groupPerSecond: number;
  burstSeconds: number;
  /** Share (0..0.9) of the bucket that low-priority messages may not use. */
  lowPriorityReserve: number;
  /** Buckets kept at most; least recently used ones are dropped first (a full bucket is the same as none). */
  maxConversations: number;
}

/** The verdict on one message. */
export type RateDecision = { allowed: true } | { allowed: false; retryAfterMs: number };

interface Bucket {
  tokens: number;
  /** When `tokens` was computed, in ms of the injected clock. */
  at: number;
  rate: number;
  capacity: number;
}

/** Token buckets keyed by conversation id, with bounded memory. */
export class RateLimiter {
  readonly #options: RateLimiterOptions;
  readonly #now: () => number;
  /** Map order is recency order: a touched bucket is re-inserted at the end. */
  readonly #buckets = new Map<string, Bucket>();

  constructor(options: RateLimiterOptions, now: () => number = () => performance.now()) {
    this.#options = options;
    this.#now = now;
  }

  /** Buckets currently held (for tests and metrics). */
  get size(): number {
    return this.#buckets.size;
  }

  /** Takes a token for one message of `conversationId` if its priority may have one. */
  take(conversationId: string, kind: ConversationKind, priority: Priority): RateDecision {
    const bucket = this.#bucket(conversationId, kind);
    const reserve = priority === "low" ? bucket.capacity * this.#options.lowPriorityReserve : 0;
    const needed = 1 + reserve;
    if (priority === "high" || bucket.tokens >= needed) {
      bucket.tokens = Math.max(0, bucket.tokens - 1);
      return { allowed: true };
    }
    return { allowed: false, retryAfterMs: Math.ceil(((needed - bucket.tokens) / bucket.rate) * 1000) };
  }

  /** Gives back a token taken by `take` for a message that was not sent after all. */
  refund(conversationId: string): void {
    const bucket = this.#buckets.get(conversationId);
    if (bucket) bucket.tokens = Math.min(bucket.capacity, bucket.tokens + 1);
  }

  #bucket(conversationId: string, kind: ConversationKind): Bucket {
    const now = this.#now();
    const rate = kind === "group" ? this.#options.groupPerSecond : this.#options.directPerSecond;
    const capacity = Math.max(1, rate * this.#options.burstSeconds);
    let bucket = this.#buckets.get(conversationId);
    if (bucket) {
      this.#buckets.delete(conversationId);
      bucket.tokens = Math.min(capacity, bucket.tokens + ((now - bucket.at) / 1000) * rate);
      bucket.at = now;
      // The kind may be learnt after the first message: adopt the new rate.
      bucket.rate = rate;
      bucket.capacity = capacity;
    } else {
      bucket = { tokens: capacity, at: now, rate, capacity };
      if (this.#buckets.size >= this.#options.maxConversations) this.#evict(now);
    }
    this.#buckets.set(conversationId, bucket);
    return bucket;
  }

  /**
   * Drops buckets that refilled (forgetting them changes nothing), then the least
   * recently used, down to 90% of the bound so that the scan is paid rarely.
   */
  #evict(now: number): void {
    for (const [id, b] of this.#buckets) {
      if (b.tokens + ((now - b.at) / 1000) * b.rate >= b.capacity) this.#buckets.delete(id);
    }
    const target = Math.floor(this.#options.maxConversations * 0.9);
    while (this.#buckets.size > target) {
      const oldest = this.#buckets.keys().next().value;
      if (oldest === undefined) break;
      this.#buckets.delete(oldest);
    }
  }
}
