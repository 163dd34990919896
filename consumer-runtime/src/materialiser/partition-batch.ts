/**
 * The materialiser's `eachBatch`: applies one partition batch (apply-isolated.ts: one
 * atomic applyBatch with the offset per attempt, bad events isolated, system failures
 * retried with the partition held), reports it to the status and metrics, and only
 * then resolves and commits the Kafka offset (a hint; the stored offset is the truth).
 * A batch above the stored offset is never applied: the consumer seeks back instead,
 * unless Kafka itself holds nothing in between (see `acceptGap` and `onGap`).
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
  /** The first offset Kafka still holds for the partition (retention moves it up). */
  logStartOffset: (partition: number) => Promise<string>;
  beforeBatch?: (partition: number) => void;
}

/** Returns the `eachBatch` of the materialiser's consumer. */
export function partitionBatchHandler(
  deps: PartitionBatchDeps,
): (payload: EachBatchPayload) => Promise<void> {
  // Per partition, the log start offset Kafka reported when a gap was seen: records
  // below it are gone from the log (retention), so a gap up to it is accepted.
  const logStarts = new Map<number, bigint>();
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
      result = await apply(deps, payload, inFlight, logStarts.get(p) ?? -1n);
    } catch (error) {
      if (!(error instanceof OffsetGapError)) throw error;
      await onGap(deps, error, fetchedOffset(batch), logStarts);
      return;
    } finally {
      deps.status.batchFinished(inFlight, p);
    }
    if (result === null) return;
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
  logStart: bigint,
): Promise<BatchResult | null> {
  const p = batch.partition;
  const labels = { subscription: deps.subscription };
  const context: ApplyContext = {
    topic: batch.topic,
    partition: p,
    schema: deps.schema,
    subscription: deps.subscription,
    // A gap is accepted only where Kafka holds no record in between: the batch was
    // fetched at or below the stored offset (what lies between was control records or
    // aborted ones), or at or below the log start Kafka reported (deleted by retention).
    acceptGap: (_first, stored) => {
      const fetched = BigInt(fetchedOffset(batch) ?? "-1");
      return fetched >= 0n && (fetched <= BigInt(stored ?? "0") || fetched <= logStart);
    },
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

/**
 * The offset kafkajs asked Kafka for when it fetched the batch (its `Batch` keeps it; the
 * type declarations omit it). A batch whose first record lies above the offset it was
 * fetched at is a hole Kafka itself has (control records, aborted transactions,
 * retention), never records this consumer skipped.
 */
function fetchedOffset(batch: EachBatchPayload["batch"]): string | undefined {
  return (batch as { fetchedOffset?: string }).fetchedOffset;
}

/**
 * A batch started above the stored offset. When Kafka no longer holds the records in
 * between (the log start moved past them: retention), they can never be applied: say
 * so loudly and accept the gap from now on (the same position is fetched again, since
 * nothing was resolved). Otherwise the records exist and were not applied: seek back to
 * the stored offset. Either way nothing was written.
 */
async function onGap(
  deps: PartitionBatchDeps,
  gap: OffsetGapError,
  fetched: string | undefined,
  logStarts: Map<number, bigint>,
): Promise<void> {
  const p = gap.partition;
  const logStart = await deps.logStartOffset(p).then(BigInt, (error: unknown) => {
    deps.log?.warn({ err: error, partition: p }, "could not read the partition's log start offset");
    return -1n;
  });
  if (fetched !== undefined && logStart > BigInt(gap.stored) && BigInt(fetched) <= logStart) {
    logStarts.set(p, logStart);
    deps.log?.error(
      { partition: p, stored: gap.stored, logStart: logStart.toString() },
      `records ${gap.stored}..${logStart - 1n} of partition ${p} were deleted from Kafka (retention) before the materialiser applied them; they are lost to the projection, which goes on from ${logStart}`,
    );
    return;
  }
  deps.log?.warn({ partition: p, stored: gap.stored, first: gap.first, fetched }, gap.message);
  deps.seek(p, gap.stored);
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
