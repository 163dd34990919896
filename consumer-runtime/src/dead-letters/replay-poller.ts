/**
 * The runtime's replay poller: claims `replaying` dead letters of the partitions this
 * instance owns and hands each to the runtime, which runs it in its conversation's
 * queue: never at the same time as a live event of that conversation (R2). Claims
 * are renewed while held and given back when their queue is dropped (a rebalance, a
 * restart, a stop), so that the partition's next owner need not wait for them to
 * expire. The SQL is in store.ts (the materialiser replays through it too).
 */
import type { Logger } from "pino";
import {
  claimReplays,
  type Queryable,
  type ReplayClaim,
  releaseReplayClaims,
  renewReplayClaims,
} from "./store.ts";

/** How long a claim lasts without renewal (ms); renewed every third of it. */
export const replayClaimTtlMs = 5 * 60_000; // 5 min

/** What the poller needs from its runtime. */
export interface ReplayPollerOptions {
  pool: () => Queryable;
  subscription: string;
  topic: string;
  instanceId: string;
  logger: Logger;
  /** The partitions this instance owns now. */
  partitions: () => ReadonlySet<number>;
  /** False while the runtime must not take new replays (stopping, fencing, breaker not closed). */
  canPoll: () => boolean;
  /** Queues a claimed dead letter; false when it cannot (its partition is gone): the claim is released. */
  enqueue: (claim: ReplayClaim) => boolean;
}

/** Claims, renews and releases the dead letters this instance replays. */
export class ReplayPoller {
  #options: ReplayPollerOptions;
  /** Dead letters this instance holds (claimed, queued or running), by id. */
  #held = new Set<string>();
  #busy = false;

  constructor(options: ReplayPollerOptions) {
    this.#options = options;
  }

  /** Claims what is waiting for the owned partitions and queues it. One poll at a time. */
  async poll(): Promise<void> {
    const o = this.#options;
    if (this.#busy || !o.canPoll() || o.partitions().size === 0) return;
    this.#busy = true;
    try {
      const rows = await claimReplays(o.pool(), {
        subscription: o.subscription,
        instanceId: o.instanceId,
        claimTtlMs: replayClaimTtlMs,
        topic: o.topic,
        partitions: [...o.partitions()],
        exclude: [...this.#held],
      });
      for (const row of rows) {
        this.#held.add(row.id);
        if (!o.enqueue(row)) {
          this.#held.delete(row.id);
          void this.#release([row.id]);
        }
      }
    } catch (error) {
      o.logger.warn({ err: error }, "polling dead letters to replay failed; trying again");
    } finally {
      this.#busy = false;
    }
  }

  /** Renews this instance's claims, so that a long replay is never claimed twice. */
  async renew(): Promise<void> {
    if (this.#held.size === 0) return;
    const o = this.#options;
    await renewReplayClaims(o.pool(), [...this.#held], o.instanceId).catch((error) =>
      o.logger.warn({ err: error }, "renewing dead-letter claims failed; trying again"),
    );
  }

  /** The replay of `id` is over (its outcome written, or given up with its queue). */
  finished(id: string): void {
    this.#held.delete(id);
  }

  /** Gives every claim back (their queues were dropped): the partition's owner claims them again. */
  releaseAll(): Promise<void> {
    const ids = [...this.#held];
    this.#held.clear();
    return this.#release(ids);
  }

  async #release(ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    const o = this.#options;
    await releaseReplayClaims(o.pool(), ids, o.instanceId).catch((error) =>
      o.logger.warn({ err: error }, "releasing dead-letter claims failed; they expire"),
    );
  }
}
