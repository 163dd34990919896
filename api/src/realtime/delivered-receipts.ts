/**
 * Delivered receipts, batched: when SSE writes a message to a recipient, the
 * (recipient, conversation) pair remembers the highest sequence delivered; every
 * `flushMs` one `chat.receipt.delivered {userId, upToSeq}` goes out per pair that
 * advanced. A burst of 100 messages to a user costs one record, not 100.
 */
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
  readonly #timer: NodeJS.Timeout;
  #flushing: Promise<void> = Promise.resolve();

  constructor(options: { bus: EventSender; logger: Logger; metrics: ApiMetrics; flushMs: number }) {
    this.#bus = options.bus;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#timer = setInterval(() => void this.flush(), options.flushMs);
    this.#timer.unref();
  }

  /** A message with `seq` of `conversationId` reached `userId`. */
  note(conversationId: string, userId: string, seq: number): void {
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
    const batch = [...this.#due.entries()];
    this.#due.clear();
    await Promise.all(
      batch.map(async ([, receipt]) => {
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

  /** Forgets what was sent for a user with no open stream here (bounds memory). */
  forgetUser(userId: string): void {
    this.#sent.delete(userId);
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.flush();
  }
}
