/**
 * The status publisher: every `statusIntervalMs` this instance writes its state to
 * `subscription_status` (partitions with committed offset, high watermark, lag and
 * pause; in-flight and oldest in-flight age; stuck records; counts), updates the lag
 * and dead-letter gauges, and applies pending operator skips to the records it holds.
 */

import { describeError } from "@chatbus/producer-sdk";
import type { Admin } from "kafkajs";
import type pg from "pg";
import type { Logger } from "pino";
import { countWaitingDeadLetters } from "../dead-letters/store.ts";
import { pendingSkips } from "../status/skips.ts";
import {
  type PartitionStatus,
  publishSubscriptionStatus,
  type StuckRecord,
  type SubscriptionState,
} from "../status/store.ts";
import type { Assignment } from "./assignment.ts";
import type { BreakerState } from "./circuit-breaker.ts";
import type { RuntimeMetrics } from "./metrics.ts";
import { type Item, totalAttempts } from "./types.ts";

/** What the publisher needs from its runtime. */
export interface StatusPublisherOptions {
  subscription: string;
  topic: string;
  instanceId: string;
  /** A record failing with system failures this long (ms) is reported stuck. */
  stuckAfterMs: number;
  logger: Logger;
  metrics: RuntimeMetrics;
  assignment: Assignment;
  pool: () => pg.Pool;
  admin: () => Admin;
  breakerState: () => BreakerState;
  /** Events that started running and are not finished. */
  held: ReadonlySet<Item>;
  counts: { readonly processed: number; readonly failed: number; readonly deadLettered: number };
  /** True once the runtime stopped: nothing is published any more. */
  stopped: () => boolean;
}

/** Publishes one instance's status and applies operator skips. */
export class StatusPublisher {
  #o: StatusPublisherOptions;
  #busy = false;
  #lastPartitionStatus = new Map<number, PartitionStatus>();
  readonly #startedAt = new Date().toISOString();

  constructor(options: StatusPublisherOptions) {
    this.#o = options;
  }

  /** Forgets what it knew of partitions no longer owned (after an assignment). */
  forgetUnassigned(): void {
    const owned = this.#o.assignment.partitions;
    for (const p of this.#lastPartitionStatus.keys()) if (!owned.has(p)) this.#lastPartitionStatus.delete(p);
  }

  /** One round: Kafka offsets, the status row, operator skips, the dead-letter gauge. One round at a time. */
  async publish(): Promise<void> {
    const { subscription, instanceId, logger, metrics } = this.#o;
    if (this.#busy || this.#o.stopped()) return;
    this.#busy = true;
    try {
      await this.#readOffsets();
      const current = this.state();
      metrics.inFlight.set({ subscription }, current.inFlight);
      metrics.oldestInFlight.set({ subscription }, (current.oldestInFlightMs ?? 0) / 1000);
      await publishSubscriptionStatus(this.#o.pool(), subscription, instanceId, current);
      await this.#applyOperatorSkips();
      const waiting = await countWaitingDeadLetters(this.#o.pool());
      metrics.deadLettersWaiting.set({ subscription }, waiting[subscription] ?? 0);
    } catch (error) {
      logger.warn({ err: error }, "publishing the subscription status failed; trying again");
    } finally {
      this.#busy = false;
    }
  }

  async #readOffsets(): Promise<void> {
    const { subscription, topic, assignment, metrics } = this.#o;
    try {
      const admin = this.#o.admin();
      const [committed, ends] = await Promise.all([
        admin.fetchOffsets({ groupId: subscription, topics: [topic] }),
        admin.fetchTopicOffsets(topic),
      ]);
      const committedBy = new Map(
        (committed[0]?.partitions ?? []).map((p) => [p.partition, p.offset] as const),
      );
      for (const end of ends) {
        if (!assignment.partitions.has(end.partition)) continue;
        const committedOffset = committedBy.get(end.partition) ?? "-1";
        const base = BigInt(committedOffset) < 0n ? BigInt(end.low) : BigInt(committedOffset);
        const lag = Number(BigInt(end.high) - base);
        metrics.lag.set({ subscription, partition: String(end.partition) }, lag);
        this.#lastPartitionStatus.set(end.partition, {
          partition: end.partition,
          committedOffset,
          highWatermark: end.high,
          lag,
          paused: assignment.isPaused(end.partition),
        });
      }
    } catch (error) {
      this.#o.logger.debug({ err: error }, "reading Kafka offsets for the status failed");
    }
  }

  /** The state this instance publishes to `subscription_status`. */
  state(): SubscriptionState {
    const { assignment, counts, stuckAfterMs } = this.#o;
    const partitions = [...assignment.partitions]
      .sort((a, b) => a - b)
      .map(
        (partition) =>
          ({
            ...(this.#lastPartitionStatus.get(partition) ?? {
              partition,
              committedOffset: "-1",
              highWatermark: "0",
              lag: 0,
            }),
            paused: assignment.isPaused(partition),
          }) as PartitionStatus,
      );
    const now = Date.now();
    let oldest: number | null = null;
    const stuck: StuckRecord[] = [];
    for (const item of this.#o.held) {
      if (item.startedAt !== null && (oldest === null || item.startedAt < oldest)) oldest = item.startedAt;
      if (item.systemSince && now - item.systemSince.getTime() >= stuckAfterMs) stuck.push(stuckRecord(item));
    }
    stuck.sort((a, b) => a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset)));
    return {
      group: this.#o.subscription,
      topic: this.#o.topic,
      breaker: this.#o.breakerState(),
      inFlight: assignment.inFlight(),
      oldestInFlightMs: oldest === null ? null : now - oldest,
      stuck,
      processed: counts.processed,
      failed: counts.failed,
      deadLettered: counts.deadLettered,
      startedAt: this.#startedAt,
      partitions,
    };
  }

  /**
   * Applies pending operator skips of this subscription to records this instance
   * holds in retry: the record is woken and, at its next run, becomes an `operator`
   * dead letter (the event runner marks the request applied). Requests for partitions
   * this instance does not own, or records it does not hold, are left for the owner.
   */
  async #applyOperatorSkips(): Promise<void> {
    const { topic, assignment, held } = this.#o;
    const requests = await pendingSkips(this.#o.pool(), this.#o.subscription);
    for (const request of requests) {
      if (request.topic !== topic || !assignment.partitions.has(request.partition)) continue;
      for (const item of held) {
        if (item.work.partition !== request.partition || item.message.offset !== request.offset) continue;
        if (item.skip || (item.systemSince === null && item.businessFailures === null)) continue;
        item.skip = request;
        item.wake?.();
      }
    }
  }
}

function stuckRecord(item: Item): StuckRecord {
  const event = item.decoded.ok ? item.decoded.event : null;
  const attempts = totalAttempts(item);
  return {
    partition: item.work.partition,
    offset: item.message.offset,
    eventType: event?.type ?? null,
    conversationId: event?.conversationId ?? null,
    error: item.lastError === undefined ? "" : describeError(item.lastError),
    attempts,
    since: (item.systemSince ?? new Date()).toISOString(),
  };
}
