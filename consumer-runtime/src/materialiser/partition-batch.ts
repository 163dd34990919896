/**
 * The materialiser's `eachBatch`, pipelined per partition. kafkajs's fetcher hands the
 * batches of one fetch to `eachBatch` and fetches again only after EVERY batch of that
 * fetch finished (fetcher.js awaits workerQueue.push of all of them), so with one
 * broker a single slow partition transaction held every other partition's records
 * (issue 12: p99 ~450 ms before the write transaction started). Here `eachBatch` only
 * queues the records on their partition's lane and resolves the offset so that kafkajs
 * fetches on; each lane applies its queue in order on its own (apply-isolated.ts: one
 * atomic applyBatch with the offset per attempt), consecutive queued batches as one.
 *
 * The guarantees stay with the stored offset: a lane applies its partition in log order,
 * and a batch above the stored offset is never applied: the consumer seeks back instead,
 * unless Kafka itself holds nothing in between (see `acceptGap` and `onGap`). Records
 * queued but not applied when a lane gives up are dropped, and either kafkajs delivers
 * them again (a rejoin fetches from the committed offset, which is only committed from
 * applied offsets, see `takeApplied`) or the next batch starts above the stored offset
 * and is refused, which seeks back.
 */
import type { EachBatchPayload, KafkaMessage } from "kafkajs";
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
  /** Partition batches applied at once (one connection each). */
  concurrency: number;
  /** A lane holding more records than this makes `eachBatch` wait (back-pressure). */
  maxQueuedRecords: number;
  /** At most this many queued records are applied in one transaction. */
  maxRecordsPerApply: number;
  /** False once the materialiser stops. */
  running: () => boolean;
  /** Seeks the consumer (after a gap). */
  seek: (partition: number, offset: string) => void;
  /** The first offset Kafka still holds for the partition (retention moves it up). */
  logStartOffset: (partition: number) => Promise<string>;
  beforeBatch?: (partition: number) => void;
}

/** The handler and what the materialiser asks of its lanes. */
export interface PartitionBatches {
  eachBatch: (payload: EachBatchPayload) => Promise<void>;
  /** Drops every queued record not yet being applied and starts a new run (a restart or rejoin fetches them again). */
  dropQueued: () => void;
  /** Resolves once no lane is applying. */
  idle: () => Promise<void>;
  /** Next offsets applied since the last call, per partition (for the Kafka commit hint). */
  takeApplied: () => Map<number, string>;
}

/** A fetched batch (or consecutive batches) waiting on its lane. */
interface Queued {
  records: KafkaMessage[];
  highWatermark: string;
  payload: EachBatchPayload;
  /** The offset kafkajs fetched the first of these batches at (see `fetchedOffset`). */
  fetchedOffset: string | undefined;
  /** Which run of the consumer fetched it (a restart or a rejoin starts a new one). */
  generation: number;
}

/** One partition's queue and its drain loop. */
interface Lane {
  partition: number;
  queue: Queued[];
  queuedRecords: number;
  draining: Promise<void> | null;
  /** The log start offset Kafka reported at a gap: records below it are gone (retention), so a gap up to it is accepted. */
  logStart: bigint;
}

/** What applying one queued run came to. */
type Outcome = "applied" | "drop" | "again";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** A counting semaphore: at most `limit` applies hold a connection at once. */
function slots(limit: number) {
  let free = limit;
  const waiting: (() => void)[] = [];
  return {
    async acquire(): Promise<void> {
      if (free > 0) {
        free--;
        return;
      }
      await new Promise<void>((resolve) => waiting.push(resolve));
    },
    release(): void {
      const next = waiting.shift();
      if (next) next();
      else free++;
    },
  };
}

/** Takes the head of the lane and the batches that continue it (consecutive offsets), up to `max` records. */
function takeConsecutive(lane: Lane, max: number): Queued {
  const head = lane.queue.shift()!;
  let records = head.records;
  let last = head;
  while (lane.queue.length > 0) {
    const next = lane.queue[0]!;
    const expected = BigInt(records[records.length - 1]!.offset) + 1n;
    if (next.generation !== head.generation) break;
    if (BigInt(next.records[0]!.offset) !== expected || records.length + next.records.length > max) break;
    lane.queue.shift();
    records = records.concat(next.records);
    last = next;
  }
  // The newest payload: its heartbeat and liveness are the current ones.
  return { ...head, records, highWatermark: last.highWatermark, payload: last.payload };
}

/** Returns the materialiser's pipelined `eachBatch` and its lanes. */
export function partitionBatchHandler(deps: PartitionBatchDeps): PartitionBatches {
  const lanes = new Map<number, Lane>();
  const applied = new Map<number, string>();
  const connections = slots(deps.concurrency);
  // An unexpected failure of a lane crashes the consumer at the next eachBatch (as it
  // would have inside eachBatch), so that the supervisor restarts it.
  let failure: unknown = null;

  // A restart or a rejoin fetches from the committed offset again: what was queued
  // before is dropped then, and a lane that gives up on a batch drops only the batches
  // of that batch's run, never those a newer run fetched (kafkajs has moved past them
  // and would not deliver them again: they would wait for the next gap to be fetched).
  let generation = 0;
  // Queued records are in flight too (fetched, not finished): `chatbus_events_in_flight`
  // counts them besides the batches being applied (MaterialiserStatus).
  const labels = { subscription: deps.subscription };
  const setQueued = (lane: Lane, records: number) => {
    const change = records - lane.queuedRecords;
    if (change > 0) deps.metrics?.inFlight.inc(labels, change);
    else if (change < 0) deps.metrics?.inFlight.dec(labels, -change);
    lane.queuedRecords = records;
  };
  const clear = (lane: Lane, upTo = Number.POSITIVE_INFINITY) => {
    lane.queue = lane.queue.filter((q) => q.generation > upTo);
    setQueued(
      lane,
      lane.queue.reduce((n, q) => n + q.records.length, 0),
    );
  };

  /** Applies one queued run of records. */
  const applyQueued = async (lane: Lane, item: Queued): Promise<Outcome> => {
    const p = lane.partition;
    await connections.acquire();
    // Where a record's time goes before its transaction (producer, broker, fetch, the
    // lane's queue): the oldest record, by its Kafka timestamp.
    deps.recordWait?.observe(
      { subscription: deps.subscription },
      Math.max(0, Date.now() - Number(item.records[0]!.timestamp)) / 1000,
    );
    const inFlight = deps.status.batchStarted(item.records.length);
    const started = process.hrtime.bigint();
    let result: BatchResult | null = null;
    let gap: OffsetGapError | null = null;
    try {
      result = await apply(deps, p, item, lane.logStart, inFlight);
    } catch (error) {
      if (!(error instanceof OffsetGapError)) throw error;
      gap = error;
    } finally {
      connections.release();
      deps.status.batchFinished(inFlight, p);
    }
    if (gap) return (await onGap(deps, gap, item.fetchedOffset, lane)) ? "again" : "drop";
    if (result === null) return "drop";
    const last = item.records[item.records.length - 1]!.offset;
    record(deps, result, Number(process.hrtime.bigint() - started) / 1e9, {
      partition: p,
      lastOffset: last,
      highWatermark: item.highWatermark,
    });
    applied.set(p, (BigInt(last) + 1n).toString());
    return "applied";
  };

  const drain = async (lane: Lane) => {
    while (lane.queue.length > 0) {
      const item = takeConsecutive(lane, deps.maxRecordsPerApply);
      setQueued(lane, lane.queuedRecords - item.records.length);
      try {
        let outcome = await applyQueued(lane, item);
        // A gap Kafka itself has (retention) is accepted from now on: apply the same records again.
        if (outcome === "again") outcome = await applyQueued(lane, item);
        if (outcome !== "applied") clear(lane, item.generation);
      } catch (error) {
        clear(lane, item.generation);
        failure ??= error;
        deps.log?.error({ err: error, partition: lane.partition }, "materialiser lane failed");
      }
    }
  };

  const eachBatch = async (payload: EachBatchPayload) => {
    if (failure !== null) {
      const error = failure;
      failure = null;
      throw error;
    }
    const { batch } = payload;
    if (batch.messages.length === 0) return;
    deps.beforeBatch?.(batch.partition);
    const p = batch.partition;
    let lane = lanes.get(p);
    if (!lane) {
      lane = { partition: p, queue: [], queuedRecords: 0, draining: null, logStart: -1n };
      lanes.set(p, lane);
    }
    lane.queue.push({
      records: batch.messages,
      highWatermark: batch.highWatermark,
      payload,
      fetchedOffset: fetchedOffset(batch),
      generation,
    });
    setQueued(lane, lane.queuedRecords + batch.messages.length);
    // kafkajs fetches from the resolved offset: resolving now lets it fetch on while the
    // lane applies. Kafka's committed offset comes from applied offsets only (takeApplied).
    payload.resolveOffset(batch.lastOffset());
    if (!lane.draining) {
      const current = lane;
      current.draining = drain(current).finally(() => {
        current.draining = null;
      });
    }
    // Back-pressure: a lane that cannot keep up (or retries a system failure) holds the
    // fetch loop, as every batch did before, instead of queueing without bound.
    while (lane.queuedRecords > deps.maxQueuedRecords && lane.draining && payload.isRunning()) {
      await Promise.race([lane.draining, sleep(250)]);
      await payload.heartbeat().catch(() => {});
    }
  };

  return {
    eachBatch,
    dropQueued: () => {
      generation++;
      for (const lane of lanes.values()) clear(lane);
    },
    idle: async () => {
      await Promise.all([...lanes.values()].map((lane) => lane.draining));
    },
    takeApplied: () => {
      const taken = new Map(applied);
      applied.clear();
      return taken;
    },
  };
}

/** Applies the records, retrying system failures while the partition is ours (null: given up). */
function apply(
  deps: PartitionBatchDeps,
  p: number,
  { records, payload, fetchedOffset: fetched }: Queued,
  logStart: bigint,
  inFlight: BatchInFlight,
): Promise<BatchResult | null> {
  const { heartbeat, isRunning, isStale } = payload;
  const labels = { subscription: deps.subscription };
  const context: ApplyContext = {
    topic: deps.topic,
    partition: p,
    schema: deps.schema,
    subscription: deps.subscription,
    // A gap is accepted only where Kafka holds no record in between: the batch was
    // fetched at or below the stored offset (what lies between was control records or
    // aborted ones), or at or below the log start Kafka reported (deleted by retention).
    acceptGap: (_first, stored) => {
      const at = BigInt(fetched ?? "-1");
      return at >= 0n && (at <= BigInt(stored ?? "0") || at <= logStart);
    },
  };
  return applyIsolated(deps.pool, context, records, {
    running: () => deps.running() && isRunning() && !isStale(),
    heartbeat,
    retryInitialMs: deps.retryInitialMs,
    retryMaxMs: deps.retryMaxMs,
    stuckAfterMs: deps.stuckAfterMs,
    onFailure: (error, attempt, delayMs) => {
      deps.status.batchFailed(inFlight);
      deps.metrics?.failed.inc({ ...labels, failure_class: "system" }, records.length);
      deps.metrics?.retried.inc({ ...labels, failure_class: "system" }, records.length);
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
 * so loudly, accept the gap from now on and return true (the lane applies the same
 * records again). Otherwise the records exist and were not applied: seek back to the
 * stored offset and return false. Either way nothing was written.
 */
async function onGap(
  deps: PartitionBatchDeps,
  gap: OffsetGapError,
  fetched: string | undefined,
  lane: Lane,
): Promise<boolean> {
  const p = gap.partition;
  const logStart = await deps.logStartOffset(p).then(BigInt, (error: unknown) => {
    deps.log?.warn({ err: error, partition: p }, "could not read the partition's log start offset");
    return -1n;
  });
  if (fetched !== undefined && logStart > BigInt(gap.stored) && BigInt(fetched) <= logStart) {
    lane.logStart = logStart;
    deps.log?.error(
      { partition: p, stored: gap.stored, logStart: logStart.toString() },
      `records ${gap.stored}..${logStart - 1n} of partition ${p} were deleted from Kafka (retention) before the materialiser applied them; they are lost to the projection, which goes on from ${logStart}`,
    );
    return true;
  }
  deps.log?.warn({ partition: p, stored: gap.stored, first: gap.first, fetched }, gap.message);
  deps.seek(p, gap.stored);
  return false;
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
