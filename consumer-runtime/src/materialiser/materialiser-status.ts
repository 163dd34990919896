/**
 * What a running materialiser shows: partitions applied, batches in flight, the breaker
 * (open while any partition batch fails with system failures), records stuck, and the
 * pending operator skips of its subscription. `publish` upserts it into
 * subscription_status and answers skip requests for records this instance has passed.
 * One owner for this state, so that the consumer loop only reports events to it.
 */
import type pg from "pg";
import type { Logger } from "pino";
import type { RuntimeMetrics } from "../runtime/metrics.ts";
import { markSkipApplied, pendingSkips, type SkipRequest } from "../status/skips.ts";
import type { StuckRecord } from "../status/store.ts";
import type { BatchResult } from "./apply-batch.ts";

interface PartitionState {
  partition: number;
  committedOffset: string;
  highWatermark: string;
  lag: number;
  paused: boolean;
}

/** The `state` published to subscription_status. */
export interface MaterialiserState {
  group: string;
  topic: string;
  breaker: "closed" | "open" | "halfOpen";
  inFlight: number;
  processed: number;
  failed: number;
  deadLettered: number;
  startedAt: string;
  partitions: PartitionState[];
  /** Age in ms of the oldest batch being applied (null when none). */
  oldestInFlightMs: number | null;
  /** Records retried for system failures for longer than `stuckAfterMs`. */
  stuck: StuckRecord[];
}

/** Who the status belongs to and where it is reported. */
export interface StatusOwner {
  pool: pg.Pool;
  group: string;
  topic: string;
  subscription: string;
  instanceId: string;
  metrics: RuntimeMetrics | undefined;
  log: Logger | undefined;
}

/** A partition batch being applied (from `batchStarted` to `batchFinished`). */
export interface BatchInFlight {
  readonly size: number;
  readonly startedAt: number;
  /** Counted in the breaker (it has failed with a system failure). */
  failing: boolean;
}

/** The id of the dead letter stored for a record (null when none). */
async function deadLetterId(
  pool: pg.Pool,
  subscription: string,
  topic: string,
  partition: number,
  offset: string,
): Promise<string | null> {
  const { rows } = await pool.query<{ id: string }>(
    `SELECT id::text AS id FROM dead_letters WHERE subscription = $1 AND topic = $2 AND partition = $3 AND "offset" = $4`,
    [subscription, topic, partition, offset],
  );
  return rows[0]?.id ?? null;
}

/** The status of one materialiser instance. */
export class MaterialiserStatus {
  readonly state: MaterialiserState;
  readonly #owner: StatusOwner;
  readonly #labels: { subscription: string };
  readonly #partitions = new Map<number, PartitionState>();
  readonly #stuck = new Map<number, StuckRecord>();
  readonly #inFlight = new Set<BatchInFlight>();
  // Pending operator skips of this subscription, refreshed with each publish.
  #skips: SkipRequest[] = [];
  #failingBatches = 0;

  constructor(owner: StatusOwner) {
    this.#owner = owner;
    this.#labels = { subscription: owner.subscription };
    this.state = {
      group: owner.group,
      topic: owner.topic,
      breaker: "closed",
      inFlight: 0,
      processed: 0,
      failed: 0,
      deadLettered: 0,
      startedAt: new Date().toISOString(),
      partitions: [],
      oldestInFlightMs: null,
      stuck: [],
    };
    // The breaker is closed from the start (so that /metrics shows it before the first batch).
    owner.metrics?.breakerState.set(this.#labels, 0);
  }

  batchStarted(size: number): BatchInFlight {
    const batch: BatchInFlight = { size, startedAt: Date.now(), failing: false };
    this.#inFlight.add(batch);
    this.state.inFlight += size;
    this.#owner.metrics?.inFlight.inc(this.#labels, size);
    return batch;
  }

  /** The batch failed with a system failure (its partition is held and retried). */
  batchFailed(batch: BatchInFlight): void {
    if (!batch.failing) this.#failingBatches++;
    batch.failing = true;
    this.#setBreaker();
    this.state.failed += batch.size;
  }

  /** The batch is done (applied, given up, or a gap); a stuck record of its partition is no longer shown. */
  batchFinished(batch: BatchInFlight, partition: number): void {
    // A stuck record is only shown while its batch is being retried (not after the
    // partition was revoked or the materialiser stopped).
    this.#stuck.delete(partition);
    this.#inFlight.delete(batch);
    if (batch.failing) this.#failingBatches--;
    this.#setBreaker();
    this.state.inFlight -= batch.size;
    this.#owner.metrics?.inFlight.dec(this.#labels, batch.size);
  }

  /** The head record of the partition's batch became stuck (a record) or is no longer (null). */
  setStuck(partition: number, record: StuckRecord | null): void {
    if (record === null) {
      this.#stuck.delete(partition);
      return;
    }
    if (!this.#stuck.has(partition))
      this.#owner.log?.error({ stuck: record }, "materialiser record stuck; an operator can skip it");
    this.#stuck.set(partition, record);
  }

  /** A batch was applied up to `lastOffset`. */
  batchApplied(
    result: BatchResult,
    batch: { partition: number; lastOffset: string; highWatermark: string },
  ): number {
    for (const n of Object.values(result.deadLettered)) this.state.deadLettered += n;
    this.state.processed += result.handled;
    const next = (BigInt(batch.lastOffset) + 1n).toString();
    const lag = Math.max(0, Number(BigInt(batch.highWatermark) - BigInt(next)));
    this.#partitions.set(batch.partition, {
      partition: batch.partition,
      committedOffset: next,
      highWatermark: batch.highWatermark,
      lag,
      paused: false,
    });
    return lag;
  }

  /** A pending operator skip of this record, if any. */
  skipRequest(partition: number, offset: string): SkipRequest | undefined {
    return this.#skips.find((s) => s.partition === partition && s.offset === offset);
  }

  /** The skip was written as a dead letter: mark the request applied, with the dead letter's id. */
  async skipApplied(request: SkipRequest): Promise<string | null> {
    this.#skips = this.#skips.filter((s) => s.id !== request.id);
    const { pool, subscription, topic, instanceId } = this.#owner;
    const id = await deadLetterId(pool, subscription, topic, request.partition, request.offset);
    await markSkipApplied(pool, request.id, instanceId, id);
    return id;
  }

  /** Refreshes the pending skips, answers those already passed and upserts the state. */
  async publish(): Promise<void> {
    const { pool, subscription, topic, instanceId } = this.#owner;
    this.state.partitions = [...this.#partitions.values()].sort((a, b) => a.partition - b.partition);
    this.state.stuck = [...this.#stuck.values()].sort((a, b) => a.partition - b.partition);
    const oldest = Math.min(...[...this.#inFlight].map((b) => b.startedAt));
    this.state.oldestInFlightMs = this.#inFlight.size > 0 ? Date.now() - oldest : null;
    this.#skips = await pendingSkips(pool, subscription).then(
      (all) => all.filter((s) => s.topic === topic),
      () => this.#skips,
    );
    // Requests for records this instance has already passed (applied, or skipped just
    // before a crash) are answered: applied, with the dead letter if there is one.
    for (const request of this.#skips) {
      const owned = this.#partitions.get(request.partition);
      if (!owned || BigInt(request.offset) >= BigInt(owned.committedOffset)) continue;
      await this.skipApplied(request);
    }
    await pool.query(
      `INSERT INTO subscription_status (subscription, instance_id, state, last_seen_at) VALUES ($1, $2, $3, now())
       ON CONFLICT (subscription, instance_id) DO UPDATE SET state = excluded.state, last_seen_at = now()`,
      [subscription, instanceId, JSON.stringify(this.state)],
    );
  }

  // "open" while any partition batch is failing with system failures (the partition is held).
  #setBreaker(): void {
    const next = this.#failingBatches > 0 ? "open" : "closed";
    const { metrics, log } = this.#owner;
    if (next !== this.state.breaker) {
      metrics?.breakerTransitions.inc({ ...this.#labels, to: next });
      log?.warn({ breaker: next }, `materialiser ${next === "open" ? "holds: PostgreSQL fails" : "resumed"}`);
    }
    this.state.breaker = next;
    metrics?.breakerState.set(this.#labels, next === "open" ? 2 : 0);
  }
}
