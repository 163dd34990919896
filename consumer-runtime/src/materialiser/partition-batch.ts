/**
 * The materialiser's `eachBatch`: applies one partition batch (apply-isolated.ts: one
 * atomic applyBatch with the offset per attempt, bad events isolated, system failures
 * retried with the partition held), reports it to the status and metrics, and only
 * then resolves and commits the Kafka offset (a hint; the stored offset is the truth).
 * A batch above the stored offset is never applied: the consumer seeks back instead.
 */
import type { EachBatchPayload } from "kafkajs";
import type pg from "pg";
import type { Logger } from "pino";
import type { Counter, Histogram } from "prom-client";
import type { RuntimeMetrics } from "../runtime/metrics.ts";
import { type ApplyContext, type BatchResult, OffsetGapError } from "./apply-batch.ts";
import { applyIsolated } from "./apply-isolated.ts";
import type { BatchInFlight, MaterialiserStatus } from "./materialiser-status.ts";

/** What the batch handler needs from the running materialiser. */
export interface PartitionBatchDeps {
  pool: pg.Pool;
  topic: string;
  schema: string;
  subscription: string;
  status: MaterialiserStatus;
  metrics: RuntimeMetrics | undefined;
  noops: Counter<"subscription" | "reason"> | undefined;
  /** `chatbus_materialiser_record_wait_seconds` (absent without a registry). */
  recordWait: Histogram<"subscription"> | undefined;
  log: Logger | undefined;
  measureLatency: boolean;
  retryInitialMs: number;
  retryMaxMs: number;
  stuckAfterMs: number;
  /** False once the materialiser stops. */
  running: () => boolean;
  /** Seeks the consumer (after a gap). */
  seek: (partition: number, offset: string) => void;
  beforeBatch?: (partition: number) => void;
}

/** Returns the `eachBatch` of the materialiser's consumer. */
export function partitionBatchHandler(
  deps: PartitionBatchDeps,
): (payload: EachBatchPayload) => Promise<void> {
  // Partitions just sought back to their stored offset after a gap (see acceptGap).
  const soughtTo = new Map<number, string>();
  return async (payload) => {
    const { batch } = payload;
    if (batch.messages.length === 0) return;
    deps.beforeBatch?.(batch.partition);
    const p = batch.partition;
    // Where a record's time goes before its transaction (producer, broker, fetch, the
    // other partitions' batches of the previous fetch): the batch's oldest record, by its
    // Kafka timestamp.
    deps.recordWait?.observe(
      { subscription: deps.subscription },
      Math.max(0, Date.now() - Number(batch.messages[0]!.timestamp)) / 1000,
    );
    const inFlight = deps.status.batchStarted(batch.messages.length);
    const started = process.hrtime.bigint();
    let result: BatchResult | null;
    try {
      result = await apply(deps, payload, inFlight, soughtTo);
    } catch (error) {
      if (!(error instanceof OffsetGapError)) throw error;
      // Never apply across a gap: seek back to the stored offset; the records in
      // between come again (or Kafka has none, and the next batch is accepted).
      deps.log?.warn({ partition: p, stored: error.stored, first: error.first }, error.message);
      soughtTo.set(p, error.stored);
      deps.seek(p, error.stored);
      return;
    } finally {
      deps.status.batchFinished(inFlight, p);
    }
    if (result === null) return;
    soughtTo.delete(p);
    const last = batch.lastOffset();
    record(deps, result, Number(process.hrtime.bigint() - started) / 1e9, {
      partition: p,
      lastOffset: last,
      highWatermark: batch.highWatermark,
    });
    payload.resolveOffset(last);
    // Only a hint of where to fetch from after a restart; the stored offset is the truth.
    await payload
      .commitOffsetsIfNecessary()
      .catch((error) => deps.log?.debug({ err: error, partition: p }, "offset commit failed (harmless)"));
  };
}

/** Applies the batch, retrying system failures while the partition is ours (null: given up). */
function apply(
  deps: PartitionBatchDeps,
  { batch, heartbeat, isRunning, isStale }: EachBatchPayload,
  inFlight: BatchInFlight,
  soughtTo: Map<number, string>,
): Promise<BatchResult | null> {
  const p = batch.partition;
  const labels = { subscription: deps.subscription };
  const context: ApplyContext = {
    topic: batch.topic,
    partition: p,
    schema: deps.schema,
    subscription: deps.subscription,
    // A gap is accepted only right after seeking back to the stored offset: Kafka
    // then has nothing to deliver in between (transaction markers, retention).
    acceptGap: (_first, stored) => soughtTo.get(p) === (stored ?? "0"),
  };
  return applyIsolated(deps.pool, context, batch.messages, {
    running: () => deps.running() && isRunning() && !isStale(),
    heartbeat,
    retryInitialMs: deps.retryInitialMs,
    retryMaxMs: deps.retryMaxMs,
    stuckAfterMs: deps.stuckAfterMs,
    onFailure: (error, attempt, delayMs) => {
      deps.status.batchFailed(inFlight);
      deps.metrics?.failed.inc({ ...labels, failure_class: "system" }, batch.messages.length);
      deps.metrics?.retried.inc({ ...labels, failure_class: "system" }, batch.messages.length);
      deps.log?.warn(
        { err: error, partition: p, attempt, delayMs },
        "materialiser batch failed; retrying with the partition held",
      );
    },
    onStuck: (stuck) => deps.status.setStuck(p, stuck),
    skipRequest: (offset) => deps.status.skipRequest(p, offset),
    onSkipped: async (request) => {
      const id = await deps.status.skipApplied(request);
      deps.log?.warn({ request, deadLetterId: id }, "operator skip applied: the record is a dead letter");
    },
    onDataDeadLetter: (offset, failure) =>
      deps.log?.warn(
        { partition: p, offset, sqlState: failure.sqlState, error: failure.message },
        "the database refused an event's data: dead-lettered (class data)",
      ),
  });
}

/** Reports an applied batch to the status and the metrics. */
function record(
  deps: PartitionBatchDeps,
  result: BatchResult,
  seconds: number,
  position: { partition: number; lastOffset: string; highWatermark: string },
): void {
  const { metrics } = deps;
  const labels = { subscription: deps.subscription };
  const now = Date.now();
  metrics?.handlerDuration.observe({ ...labels, type: "batch" }, seconds);
  for (const [type, n] of Object.entries(result.applied)) {
    metrics?.consumed.inc({ ...labels, type }, n);
    metrics?.handled.inc({ ...labels, type }, n);
  }
  if (deps.measureLatency && metrics)
    for (const t of result.eventTimes) metrics.endToEndLatency.observe(labels, (now - t.getTime()) / 1000);
  for (const [cls, n] of Object.entries(result.deadLettered))
    if (n > 0) metrics?.deadLettered.inc({ ...labels, failure_class: cls }, n);
  for (const [reason, n] of Object.entries(result.noops)) deps.noops?.inc({ ...labels, reason }, n);
  const lag = deps.status.batchApplied(result, position);
  metrics?.lag.set({ ...labels, partition: String(position.partition) }, lag);
}
