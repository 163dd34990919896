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
 * A lane that gets a connection also takes the queued heads of the lanes that are
 * free (not applying) into the same transaction (`applyPartitions`): at a low rate
 * every partition has a record or two per fetch, and a transaction per partition cost
 * far more than the records (issue 12). Only the happy path is shared: when a shared
 * transaction fails for any reason, nothing was written and each of its partitions'
 * records go back to the head of their lane, marked `solo`, and are applied on their
 * own, where a bad record is isolated and a system failure retried per partition.
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
import { type ApplyContext, applyPartitions, type BatchResult, OffsetGapError } from "./apply-batch.ts";
import { applyIsolated } from "./apply-isolated.ts";
import { withBatchConnection } from "./connections.ts";
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
  /** Partition batches applied at once (one connection each), a partition retrying a failure included. */
  concurrency: number;
  /** Transactions on the happy path at once; a lane retrying a failure gives its turn up. */
  transactions: number;
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
  /** A shared transaction failed with these records: they are applied on their own. */
  solo: boolean;
}

/** One partition's queue and its drain loop. */
interface Lane {
  partition: number;
  queue: Queued[];
  queuedRecords: number;
  draining: Promise<void> | null;
  /** The lane's own loop is applying a batch of it. */
  active: boolean;
  /** Another lane's shared transaction holds this lane's head; resolves when it is done. */
  held: Promise<void> | null;
  /** The log start offset Kafka reported at a gap: records below it are gone (retention), so a gap up to it is accepted. */
  logStart: bigint;
}

/** What applying one queued run came to. */
type Outcome = "applied" | "drop" | "again";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/**
 * A transaction still running after this gives its turn up (it keeps its connection):
 * one that waits on a lock or a slow disk must not hold the other partitions' turns
 * until the statement timeout.
 */
const slowTransactionMs = 1000;
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

/** Calls `release` the first time it is called. */
function once(release: () => void): () => void {
  let released = false;
  return () => {
    if (released) return;
    released = true;
    release();
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
  return new PartitionLanes(deps);
}

/** The partitions' lanes: what each queued, what was applied, and who holds a connection. */
class PartitionLanes implements PartitionBatches {
  readonly #deps: PartitionBatchDeps;
  readonly #lanes = new Map<number, Lane>();
  readonly #applied = new Map<number, string>();
  readonly #connections: ReturnType<typeof slots>;
  /**
   * Turns on the happy path: fewer than the connections, so that the lanes queue while
   * a transaction runs and the next one takes them all (issue 12: on two cores, two
   * turns cut the p99 at 1,000 events/s by 10–25 % against twelve). A lane whose
   * batch fails gives its turn up before it retries, so a partition in trouble holds
   * one connection and never the others' turns.
   */
  readonly #turns: ReturnType<typeof slots>;
  readonly #labels: { subscription: string };
  // An unexpected failure of a lane crashes the consumer at the next eachBatch (as it
  // would have inside eachBatch), so that the supervisor restarts it.
  #failure: unknown = null;
  // A restart or a rejoin fetches from the committed offset again: what was queued
  // before is dropped then, and a lane that gives up on a batch drops only the batches
  // of that batch's run, never those a newer run fetched (kafkajs has moved past them
  // and would not deliver them again: they would wait for the next gap to be fetched).
  #generation = 0;

  constructor(deps: PartitionBatchDeps) {
    this.#deps = deps;
    this.#connections = slots(deps.concurrency);
    this.#turns = slots(Math.min(deps.transactions, deps.concurrency));
    this.#labels = { subscription: deps.subscription };
  }

  eachBatch = async (payload: EachBatchPayload): Promise<void> => {
    if (this.#failure !== null) {
      const error = this.#failure;
      this.#failure = null;
      throw error;
    }
    const { batch } = payload;
    if (batch.messages.length === 0) return;
    this.#deps.beforeBatch?.(batch.partition);
    const lane = this.#lane(batch.partition);
    lane.queue.push({
      records: batch.messages,
      highWatermark: batch.highWatermark,
      payload,
      fetchedOffset: fetchedOffset(batch),
      generation: this.#generation,
      solo: false,
    });
    this.#setQueued(lane, lane.queuedRecords + batch.messages.length);
    // kafkajs fetches from the resolved offset: resolving now lets it fetch on while the
    // lane applies. Kafka's committed offset comes from applied offsets only (takeApplied).
    payload.resolveOffset(batch.lastOffset());
    this.#kick(lane);
    // Back-pressure: a lane that cannot keep up (or retries a system failure) holds the
    // fetch loop, as every batch did before, instead of queueing without bound.
    while (lane.queuedRecords > this.#deps.maxQueuedRecords && lane.draining && payload.isRunning()) {
      await Promise.race([lane.draining, sleep(250)]);
      await payload.heartbeat().catch(() => {});
    }
  };

  dropQueued(): void {
    this.#generation++;
    for (const lane of this.#lanes.values()) this.#clear(lane);
  }

  async idle(): Promise<void> {
    await Promise.all([...this.#lanes.values()].map((lane) => lane.draining));
  }

  takeApplied(): Map<number, string> {
    const taken = new Map(this.#applied);
    this.#applied.clear();
    return taken;
  }

  #lane(partition: number): Lane {
    let lane = this.#lanes.get(partition);
    if (!lane) {
      lane = {
        partition,
        queue: [],
        queuedRecords: 0,
        draining: null,
        active: false,
        held: null,
        logStart: -1n,
      };
      this.#lanes.set(partition, lane);
    }
    return lane;
  }

  // Queued records are in flight too (fetched, not finished): `chatbus_events_in_flight`
  // counts them besides the batches being applied (MaterialiserStatus).
  #setQueued(lane: Lane, records: number): void {
    const change = records - lane.queuedRecords;
    if (change > 0) this.#deps.metrics?.inFlight.inc(this.#labels, change);
    else if (change < 0) this.#deps.metrics?.inFlight.dec(this.#labels, -change);
    lane.queuedRecords = records;
  }

  #clear(lane: Lane, upTo = Number.POSITIVE_INFINITY): void {
    lane.queue = lane.queue.filter((q) => q.generation > upTo);
    this.#setQueued(
      lane,
      lane.queue.reduce((n, q) => n + q.records.length, 0),
    );
  }

  /** Starts the lane's loop unless it runs. */
  #kick(lane: Lane): void {
    if (lane.draining) return;
    lane.draining = this.#drain(lane).finally(() => {
      lane.draining = null;
    });
  }

  async #drain(lane: Lane): Promise<void> {
    // Let the rest of the fetch reach its lanes first, so that one transaction takes them.
    await new Promise(setImmediate);
    while (lane.queue.length > 0) {
      if (lane.held) {
        await lane.held;
        continue;
      }
      await this.#turns.acquire();
      await this.#connections.acquire();
      const turn = once(() => this.#turns.release());
      if (lane.held || lane.queue.length === 0) {
        this.#connections.release();
        turn();
        continue;
      }
      lane.active = true;
      const item = takeConsecutive(lane, this.#deps.maxRecordsPerApply);
      this.#setQueued(lane, lane.queuedRecords - item.records.length);
      const slow = setTimeout(turn, slowTransactionMs);
      try {
        const group = this.#gather(lane, item);
        if (group.length > 1) await this.#applyShared(group, turn);
        else await this.#applySolo(lane, item, turn);
      } catch (error) {
        this.#failure ??= error;
        this.#deps.log?.error({ err: error, partition: lane.partition }, "materialiser lane failed");
      } finally {
        clearTimeout(slow);
        lane.active = false;
      }
    }
  }

  /** The leader's run and the queued heads of the free lanes, up to `maxRecordsPerApply` records. */
  #gather(leader: Lane, item: Queued): Shared[] {
    const group: Shared[] = [{ lane: leader, item }];
    if (item.solo) return group;
    const max = this.#deps.maxRecordsPerApply;
    let total = item.records.length;
    for (const peer of this.#lanes.values()) {
      if (peer === leader || peer.active || peer.held || peer.queue.length === 0) continue;
      const head = peer.queue[0]!;
      if (head.solo || head.generation !== this.#generation || total + head.records.length > max) continue;
      if (!head.payload.isRunning() || head.payload.isStale()) continue;
      const taken = takeConsecutive(peer, max - total);
      this.#setQueued(peer, peer.queuedRecords - taken.records.length);
      total += taken.records.length;
      group.push({ lane: peer, item: taken });
    }
    return group;
  }

  /**
   * Applies several lanes' runs in one transaction (a connection slot and a turn are
   * held). What it did not apply goes back to its lane, to be applied on its own.
   */
  async #applyShared(group: Shared[], turn: () => void): Promise<void> {
    const peers = group.slice(1);
    const done: (() => void)[] = [];
    for (const { lane } of peers) lane.held = new Promise<void>((resolve) => done.push(resolve));
    try {
      const results = await applyTogether(this.#deps, group);
      for (const { lane, item } of group) {
        const outcome = results?.results.get(lane.partition);
        if (outcome)
          this.#applied.set(lane.partition, reportApplied(this.#deps, lane, item, outcome, results!.seconds));
        else if (item.generation === this.#generation) {
          lane.queue.unshift({ ...item, solo: true });
          this.#setQueued(lane, lane.queuedRecords + item.records.length);
        }
      }
    } finally {
      this.#connections.release();
      turn();
      for (const { lane } of peers) lane.held = null;
      for (const resolve of done) resolve();
      for (const { lane } of peers) this.#kick(lane);
    }
  }

  /** Applies a lane's run on its own (a connection slot and a turn are held). */
  async #applySolo(lane: Lane, item: Queued, turn: () => void): Promise<void> {
    try {
      let outcome = await this.#applyQueued(lane, item, turn);
      // A gap Kafka itself has (retention) is accepted from now on: apply the same records again.
      if (outcome === "again") {
        await this.#connections.acquire();
        outcome = await this.#applyQueued(lane, item, () => {});
      }
      if (outcome !== "applied") this.#clear(lane, item.generation);
    } catch (error) {
      this.#clear(lane, item.generation);
      this.#failure ??= error;
      this.#deps.log?.error({ err: error, partition: lane.partition }, "materialiser lane failed");
    }
  }

  /** Applies one queued run of records on its own; releases the connection slot and the turn it holds. */
  async #applyQueued(lane: Lane, item: Queued, turn: () => void): Promise<Outcome> {
    const deps = this.#deps;
    const p = lane.partition;
    observeRecordWait(deps, item);
    const inFlight = deps.status.batchStarted(item.records.length);
    const started = process.hrtime.bigint();
    let result: BatchResult | null = null;
    let gap: OffsetGapError | null = null;
    try {
      result = await apply(deps, p, item, lane.logStart, inFlight, turn);
    } catch (error) {
      if (!(error instanceof OffsetGapError)) throw error;
      gap = error;
    } finally {
      this.#connections.release();
      turn();
      deps.status.batchFinished(inFlight, p);
    }
    if (gap) return (await onGap(deps, gap, item.fetchedOffset, lane)) ? "again" : "drop";
    if (result === null) return "drop";
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    this.#applied.set(p, reportApplied(deps, lane, item, result, seconds));
    return "applied";
  }
}

/**
 * Where a record's time goes before its transaction (producer, broker, fetch, the lane's
 * queue): the oldest record, by its Kafka timestamp.
 */
function observeRecordWait(deps: PartitionBatchDeps, item: Queued): void {
  deps.recordWait?.observe(
    { subscription: deps.subscription },
    Math.max(0, Date.now() - Number(item.records[0]!.timestamp)) / 1000,
  );
}

/** Reports an applied run; returns the partition's next offset (for the Kafka commit hint). */
function reportApplied(
  deps: PartitionBatchDeps,
  lane: Lane,
  item: Queued,
  result: BatchResult,
  seconds: number,
): string {
  const last = item.records[item.records.length - 1]!.offset;
  record(deps, result, seconds, {
    partition: lane.partition,
    lastOffset: last,
    highWatermark: item.highWatermark,
  });
  return (BigInt(last) + 1n).toString();
}

/** A lane's run in a transaction shared with other lanes. */
interface Shared {
  lane: Lane;
  item: Queued;
}

/** How the partition's records are applied, with its rule for gaps. */
function contextOf(
  deps: PartitionBatchDeps,
  partition: number,
  fetched: string | undefined,
  logStart: bigint,
): ApplyContext {
  return {
    topic: deps.topic,
    partition,
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
}

/**
 * One attempt at the group's runs in one transaction: the results of the partitions it
 * applied, or null when it failed (nothing was written; the failure is met again, and
 * handled, when each partition is applied on its own).
 */
async function applyTogether(
  deps: PartitionBatchDeps,
  group: Shared[],
): Promise<{ results: Map<number, BatchResult>; seconds: number } | null> {
  const started = process.hrtime.bigint();
  const inFlight = group.map(({ item }) => {
    observeRecordWait(deps, item);
    return deps.status.batchStarted(item.records.length);
  });
  try {
    const parts = group.map(({ lane, item }) => ({
      context: contextOf(deps, lane.partition, item.fetchedOffset, lane.logStart),
      records: item.records,
    }));
    const results = await withBatchConnection(deps.pool, (client) => applyPartitions(client, parts));
    return { results, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
  } catch (error) {
    deps.log?.debug(
      { err: error, partitions: group.map(({ lane }) => lane.partition) },
      "a shared transaction failed: its partitions are applied one by one",
    );
    return null;
  } finally {
    group.forEach(({ lane }, i) => {
      deps.status.batchFinished(inFlight[i]!, lane.partition);
    });
  }
}

/** Applies the records, retrying system failures while the partition is ours (null: given up). */
function apply(
  deps: PartitionBatchDeps,
  p: number,
  { records, payload, fetchedOffset: fetched }: Queued,
  logStart: bigint,
  inFlight: BatchInFlight,
  /** Gives the lane's turn up: called at the first system failure, before the retries. */
  giveTurnUp: () => void,
): Promise<BatchResult | null> {
  const { heartbeat, isRunning, isStale } = payload;
  const labels = { subscription: deps.subscription };
  const context = contextOf(deps, p, fetched, logStart);
  return applyIsolated(deps.pool, context, records, {
    running: () => deps.running() && isRunning() && !isStale(),
    heartbeat,
    retryInitialMs: deps.retryInitialMs,
    retryMaxMs: deps.retryMaxMs,
    stuckAfterMs: deps.stuckAfterMs,
    onFailure: (error, attempt, delayMs) => {
      giveTurnUp();
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
