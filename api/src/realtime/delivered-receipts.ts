/**
 * Delivered receipts, batched: when SSE writes a message to a recipient, the
 * (recipient, conversation) pair remembers the highest sequence delivered; every
 * `flushMs` one `chat.receipt.delivered {userId, upToSeq}` goes out per pair that
 * advanced. A burst of 100 messages to a user costs one record, not 100.
 *
 * Groups with more than `maxMembers` current members get no per-member delivered
 * receipts (docs/decisions.md, "Delivered receipts in large groups"): one message to
 * 15,000 members would otherwise queue 15,000 receipts in the conversation's
 * partition, ahead of its next message. Member counts are read in one query per
 * flush for the conversations not known yet and kept for `sizeTtlMs`; a group
 * known to be large costs `note` one map lookup per delivery.
 */
import type pg from "pg";
import type { Logger } from "pino";
import type { ApiMetrics } from "../metrics.ts";
import type { EventSender } from "../types.ts";

const keyOf = (conversationId: string, userId: string) => `${conversationId}\u0000${userId}`;

/** Collects deliveries and sends them as batched receipts. */
export class DeliveredReceipts {
  readonly #due = new Map<string, { conversationId: string; userId: string; upToSeq: number }>();
  /** userId → conversationId → highest upToSeq sent. */
  readonly #sent = new Map<string, Map<string, number>>();
  readonly #bus: EventSender;
  readonly #logger: Logger;
  readonly #metrics: ApiMetrics;
  readonly #pool: pg.Pool;
  readonly #maxMembers: number;
  readonly #sizeTtlMs: number;
  /** conversationId → whether it has more than `maxMembers` members, and until when that is trusted. */
  readonly #sizes = new Map<string, { large: boolean; until: number }>();
  readonly #timer: NodeJS.Timeout;
  #flushing: Promise<void> = Promise.resolve();

  constructor(options: {
    bus: EventSender;
    logger: Logger;
    metrics: ApiMetrics;
    flushMs: number;
    /** Counts current members of conversations. */
    pool: pg.Pool;
    /** Above this many current members a conversation gets no delivered receipts. */
    maxMembers: number;
    /** How long a member count is trusted, ms (a group crossing the bound is noticed within it). */
    sizeTtlMs: number;
  }) {
    this.#bus = options.bus;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#pool = options.pool;
    this.#maxMembers = options.maxMembers;
    this.#sizeTtlMs = options.sizeTtlMs;
    this.#timer = setInterval(() => void this.flush(), options.flushMs);
    this.#timer.unref();
  }

  /** A message with `seq` of `conversationId` reached `userId`. */
  note(conversationId: string, userId: string, seq: number): void {
    // A stale "large" is noted as usual, so that the next flush reads the count again.
    const size = this.#sizes.get(conversationId);
    if (size?.large && size.until > Date.now()) return;
    const key = keyOf(conversationId, userId);
    if ((this.#sent.get(userId)?.get(conversationId) ?? 0) >= seq) return;
    const due = this.#due.get(key);
    if (!due) this.#due.set(key, { conversationId, userId, upToSeq: seq });
    else if (due.upToSeq < seq) due.upToSeq = seq;
  }

  /** Sends every pending receipt now (also run by the timer and at shutdown). */
  flush(): Promise<void> {
    this.#flushing = this.#flushing.then(() => this.#flushOnce());
    return this.#flushing;
  }

  async #flushOnce(): Promise<void> {
    if (this.#due.size === 0) return;
    const due = [...this.#due.values()];
    this.#due.clear();
    await this.#learnSizes(due.map((r) => r.conversationId));
    const batch = due.filter((r) => !this.#sizes.get(r.conversationId)?.large);
    if (batch.length < due.length) this.#metrics.deliveredReceiptsSkipped.inc(due.length - batch.length);
    await Promise.all(
      batch.map(async (receipt) => {
        try {
          await this.#bus.send(receipt.conversationId, {
            type: "chat.receipt.delivered",
            userId: receipt.userId,
            upToSeq: receipt.upToSeq,
          });
          let sent = this.#sent.get(receipt.userId);
          if (!sent) {
            sent = new Map();
            this.#sent.set(receipt.userId, sent);
          }
          sent.set(receipt.conversationId, Math.max(sent.get(receipt.conversationId) ?? 0, receipt.upToSeq));
          this.#metrics.deliveredReceipts.inc();
        } catch (error) {
          // Not lost for good: the next delivery in this conversation carries a higher upToSeq.
          this.#logger.warn(
            { err: error, conversationId: receipt.conversationId },
            "delivered receipt not sent",
          );
        }
      }),
    );
  }

  /** Reads the member counts of the conversations whose size is unknown or stale. */
  async #learnSizes(conversationIds: string[]): Promise<void> {
    const now = Date.now();
    if (this.#sizes.size > 10_000) {
      // Bounds memory: conversations not delivered to for a TTL are forgotten.
      for (const [id, size] of this.#sizes) if (size.until <= now) this.#sizes.delete(id);
    }
    const stale = [...new Set(conversationIds)].filter((id) => (this.#sizes.get(id)?.until ?? 0) <= now);
    if (stale.length === 0) return;
    try {
      const { rows } = await this.#pool.query<{ conversation_id: string; n: number }>(
        `SELECT conversation_id, count(*)::int AS n FROM members
          WHERE conversation_id = ANY($1) AND left_at IS NULL GROUP BY conversation_id`,
        [stale],
      );
      const counts = new Map(rows.map((r) => [r.conversation_id, r.n]));
      for (const id of stale) {
        this.#sizes.set(id, {
          large: (counts.get(id) ?? 0) > this.#maxMembers,
          until: now + this.#sizeTtlMs,
        });
      }
    } catch (error) {
      // Unknown sizes keep their last answer (or none): receipts are sent rather than lost.
      this.#logger.warn({ err: error }, "member counts for delivered receipts not read");
    }
  }

  /** Forgets what was sent for a user with no open stream here (bounds memory). */
  forgetUser(userId: string): void {
    this.#sent.delete(userId);
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.flush();
  }
}
