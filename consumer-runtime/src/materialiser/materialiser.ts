/**
 * The live materialiser: the built-in subscription `materialiser`, with its own
 * kafkajs consumption loop because it needs more than at-least-once. Fetched batches go
 * onto per-partition lanes (partition-batch.ts) that apply them with `applyBatch` (one
 * transaction with the partition's offset), so a crash at any point either applied a
 * batch with its offset or did neither, and one slow partition does not hold the others.
 *
 * Assignment: no seek. Kafka's committed offset is at most the stored one (it is
 * committed only after the PostgreSQL commit), so consumption restarts at or before
 * the stored offset and `applyBatch` skips what is already applied inside the locked
 * transaction. That check cannot race with a rebalance the way a seek after
 * GROUP_JOIN can.
 *
 * System failures (PostgreSQL down, a lost connection, a deadlock) hold the partition
 * and retry the whole batch with exponential back-off and full jitter, heartbeating
 * meanwhile so the group does not evict us.
 */

import { randomUUID } from "node:crypto";
import { Kafka, logLevel, type Producer } from "kafkajs";
import type pg from "pg";
import type { Logger } from "pino";
import { Counter, Histogram, type Registry } from "prom-client";
import { latencyBuckets, type RuntimeMetrics, runtimeMetrics } from "../runtime/metrics.ts";
import { backoffMs } from "./apply-isolated.ts";
import { configureConnections, sidePool } from "./connections.ts";
import { replayMaterialiserDeadLetters } from "./dead-letter-replay.ts";
import { type MaterialiserState, MaterialiserStatus } from "./materialiser-status.ts";
import { type MaterialiserSettings, materialiserDefaults, validateMaterialiserSettings } from "./options.ts";
import { partitionBatchHandler } from "./partition-batch.ts";

export type { MaterialiserState } from "./materialiser-status.ts";

/** Options of `startMaterialiser`. */
export interface MaterialiserOptions extends MaterialiserSettings {
  /**
   * Pool whose search_path is the projection schema (migrated), for the materialiser
   * alone: its connections keep the statement timeout and generic plans it sets.
   */
  pool: pg.Pool;
  logger?: Logger;
  /** Metrics go here (subscription="materialiser"); none when omitted. */
  registry?: Registry;
  /** Fault injection for tests (a crash, a failing restart); never set in production. */
  faults?: MaterialiserFaults;
}

/** Fault injection points (tests only). */
export interface MaterialiserFaults {
  /** Called before each start of the consumer (1 = the first start); throw to make it fail. */
  beforeStart?: (attempt: number) => void | Promise<void>;
  /** Called at the start of each batch; throw to crash the consumer. */
  beforeBatch?: (partition: number) => void;
}

/** A running materialiser. */
export interface Materialiser {
  /** The status as last published. */
  state(): MaterialiserState;
  /** Leaves the group after the batches in flight finished (or gave up retrying). */
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export { backoffMs } from "./apply-isolated.ts";

/**
 * Runs `start` until it succeeds, with back-off between attempts (a failed restart of
 * the consumer must not leave the process up with no consumer). Resolves true once it
 * ran, false when `running()` turned false first.
 */
export async function restartUntilRunning(
  start: () => Promise<void>,
  options: {
    running: () => boolean;
    initialMs: number;
    maxMs: number;
    onFailure?: (error: unknown, attempt: number, delayMs: number) => void;
  },
): Promise<boolean> {
  for (let attempt = 1; options.running(); attempt++) {
    try {
      await start();
      return true;
    } catch (error) {
      const delay = backoffMs(attempt, options.initialMs, options.maxMs);
      options.onFailure?.(error, attempt, delay);
      await sleep(delay);
    }
  }
  return false;
}

/** `chatbus_materialiser_noops_total{subscription, reason}`: benign repeats applied as no-ops. */
function noopCounter(registry: Registry): Counter<"subscription" | "reason"> {
  const name = "chatbus_materialiser_noops_total";
  const existing = registry.getSingleMetric(name);
  if (existing) return existing as Counter<"subscription" | "reason">;
  return new Counter({
    name,
    help: "Events the materialiser applied as no-ops because they repeat what is already true (reason: direct_exists, already_a_member, already_recalled).",
    labelNames: ["subscription", "reason"],
    registers: [registry],
  });
}

/**
 * `chatbus_materialiser_record_wait_seconds{subscription}`: Kafka record timestamp of the
 * oldest record of each partition batch → the start of its handling.
 */
function recordWaitHistogram(registry: Registry): Histogram<"subscription"> {
  const name = "chatbus_materialiser_record_wait_seconds";
  const existing = registry.getSingleMetric(name);
  if (existing) return existing as Histogram<"subscription">;
  return new Histogram({
    name,
    help: "Time from the Kafka record timestamp (the producer's send) of the oldest record of each batch the materialiser applies to the start of its transaction: producer, broker, fetch and the partition lane's queue, without the write itself.",
    labelNames: ["subscription"],
    buckets: latencyBuckets,
    registers: [registry],
  });
}

/** Polls for dead letters an operator replays and produces them to the topic again (see dead-letter-replay.ts). */
function startReplayPoller(
  pool: pg.Pool,
  producer: Producer,
  options: { subscription: string; topic: string; instanceId: string; intervalMs: number; log?: Logger },
): NodeJS.Timeout {
  const { intervalMs, log, ...replay } = options;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    replayMaterialiserDeadLetters(pool, producer, { ...replay, ...(log ? { logger: log } : {}) })
      .then((n) => n > 0 && log?.info({ count: n }, "replayed dead letters produced to the topic again"))
      .catch((error) => log?.warn({ err: error }, "replaying dead letters failed; trying again"))
      .finally(() => {
        busy = false;
      });
  }, intervalMs);
  timer.unref();
  return timer;
}

/** The first offset Kafka still holds for a partition (asked only when a batch shows a gap). */
async function logStartOffset(kafka: Kafka, topic: string, partition: number): Promise<string> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    return offsets.find((o) => o.partition === partition)?.low ?? "0";
  } finally {
    await admin.disconnect();
  }
}

/** The settings with their defaults. */
function resolveSettings(settings: MaterialiserSettings) {
  const d = materialiserDefaults;
  return {
    topic: settings.topic ?? d.topic(),
    brokers: settings.brokers ?? d.brokers(),
    groupId: settings.groupId ?? d.groupId(),
    subscription: settings.subscription ?? d.subscription,
    instanceId: settings.instanceId ?? `${process.pid}-${randomUUID().slice(0, 8)}`,
    clientId: settings.clientId ?? d.clientId,
    retryInitialMs: settings.retryInitialMs ?? d.retryInitialMs,
    retryMaxMs: settings.retryMaxMs ?? d.retryMaxMs,
    measureLatency: settings.measureLatency ?? d.measureLatency,
    stuckAfterMs: settings.stuckAfterMs ?? d.stuckAfterMs,
    statementTimeoutMs: settings.statementTimeoutMs ?? d.statementTimeoutMs,
    statusIntervalMs: settings.statusIntervalMs ?? d.statusIntervalMs,
    replayIntervalMs: settings.replayIntervalMs ?? d.replayIntervalMs,
    partitionsConsumedConcurrently:
      settings.partitionsConsumedConcurrently ?? d.partitionsConsumedConcurrently,
    transactionsAtOnce: settings.transactionsAtOnce ?? d.transactionsAtOnce,
    maxBytesPerPartition: settings.maxBytesPerPartition ?? d.maxBytesPerPartition,
    sessionTimeoutMs: settings.sessionTimeoutMs ?? d.sessionTimeoutMs,
  };
}

/**
 * Keeps `run` running: starts it and, after every crash of the consumer, disconnects and
 * starts it again with back-off until it runs (one failed restart must not leave the
 * process without a consumer). Resolves once the first start ran.
 */
async function superviseConsumer(
  consumer: ReturnType<Kafka["consumer"]>,
  run: () => Promise<void>,
  options: {
    running: () => boolean;
    faults: MaterialiserFaults | undefined;
    metrics: RuntimeMetrics | undefined;
    labels: { subscription: string };
    log: Logger | undefined;
  },
): Promise<void> {
  const { metrics, labels, log } = options;
  let restarting = false;
  let starts = 0;
  const start = async () => {
    starts++;
    await options.faults?.beforeStart?.(starts);
    await run();
  };
  const restart = async () => {
    restarting = true;
    metrics?.restarts.inc(labels);
    const ran = await restartUntilRunning(
      async () => {
        await consumer.disconnect().catch(() => {});
        await start();
      },
      {
        running: options.running,
        initialMs: 1000,
        maxMs: 30_000,
        onFailure: (error, attempt, delayMs) => {
          metrics?.restarts.inc(labels);
          log?.error({ err: error, attempt, delayMs }, "materialiser restart failed; trying again");
        },
      },
    );
    restarting = false;
    if (ran) log?.warn({ restarts: starts - 1 }, "materialiser consumer restarted");
  };
  consumer.on(consumer.events.CRASH, (event) => {
    log?.error({ err: event.payload.error, restart: event.payload.restart }, "materialiser consumer crashed");
    // Restart ourselves even when kafkajs says it will (`restart: true`): its own restart
    // reuses the cluster's cached metadata and can stay stuck for good after a broker
    // is gone ("Broker N not found in the cached metadata", kafkajs #659/#1545; seen in
    // the failover test). disconnect() cancels kafkajs's pending restart.
    if (options.running() && !restarting) void restart();
  });
  await start();
}

/** Starts the materialiser; resolves once the consumer runs. */
export async function startMaterialiser(options: MaterialiserOptions): Promise<Materialiser> {
  const { pool, logger, registry, faults, ...settings } = options;
  validateMaterialiserSettings(settings);
  const s = resolveSettings(settings);
  const { topic, groupId, subscription, instanceId } = s;
  const metrics: RuntimeMetrics | undefined = registry ? runtimeMetrics(registry) : undefined;
  const labels = { subscription };
  const log = logger?.child({ subscription, component: "materialiser" });

  // An idle connection that dies (PostgreSQL restarted) must not crash the process;
  // the batch that needs a connection next sees the failure and retries.
  const onPoolError = (error: Error) => log?.warn({ err: error }, "PostgreSQL connection lost");
  pool.on("error", onPoolError);
  configureConnections(pool, s.statementTimeoutMs);
  // The status publisher and the replay poller get two connections of their own, so they
  // neither wait behind the partitions' batches nor take their connections.
  const periodic = sidePool(pool, 2);
  periodic.on("error", onPoolError);
  const status = new MaterialiserStatus({
    pool: periodic,
    group: groupId,
    topic,
    subscription,
    instanceId,
    metrics,
    log,
  });
  const { rows } = await pool.query<{ schema: string }>("SELECT current_schema() AS schema");
  const schema = rows[0]!.schema;
  let running = true;

  const kafka = new Kafka({ clientId: s.clientId, brokers: s.brokers, logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({
    groupId,
    maxBytesPerPartition: s.maxBytesPerPartition,
    sessionTimeout: s.sessionTimeoutMs,
    heartbeatInterval: 3000,
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const replayTimer = startReplayPoller(periodic, producer, {
    subscription,
    topic,
    instanceId,
    intervalMs: s.replayIntervalMs,
    ...(log ? { log } : {}),
  });
  const statusTimer = setInterval(() => {
    status.publish().catch((error) => log?.warn({ err: error }, "could not publish materialiser status"));
  }, s.statusIntervalMs);
  statusTimer.unref();

  const batches = partitionBatchHandler({
    pool,
    topic,
    schema,
    subscription,
    status,
    metrics,
    noops: registry ? noopCounter(registry) : undefined,
    recordWait: registry ? recordWaitHistogram(registry) : undefined,
    log,
    measureLatency: s.measureLatency,
    retryInitialMs: s.retryInitialMs,
    retryMaxMs: s.retryMaxMs,
    stuckAfterMs: s.stuckAfterMs,
    concurrency: s.partitionsConsumedConcurrently,
    transactions: s.transactionsAtOnce,
    maxQueuedRecords: materialiserDefaults.maxQueuedRecordsPerPartition,
    maxRecordsPerApply: materialiserDefaults.maxRecordsPerApply,
    running: () => running,
    seek: (partition, offset) => consumer.seek({ topic, partition, offset }),
    logStartOffset: (partition) => logStartOffset(kafka, topic, partition),
    ...(faults?.beforeBatch ? { beforeBatch: faults.beforeBatch } : {}),
  });
  // A new assignment fetches from the committed offset again: what the lanes still
  // queue would come twice (harmlessly skipped, but applied work for nothing).
  consumer.on(consumer.events.GROUP_JOIN, () => batches.dropQueued());
  const commitApplied = async () => {
    const offsets = [...batches.takeApplied()].map(([partition, offset]) => ({ topic, partition, offset }));
    if (offsets.length === 0) return;
    // Only a hint of where to fetch from after a restart; the stored offset is the truth.
    await consumer
      .commitOffsets(offsets)
      .catch((error) => log?.debug({ err: error }, "offset commit failed (harmless)"));
  };
  // Kafka commits are only a hint (the stored offset is the truth): one request per 5 s
  // with the offsets the lanes applied, never a resolved offset that is not yet applied.
  const commitTimer = setInterval(() => void commitApplied(), 5000);
  commitTimer.unref();
  const run = async () => {
    batches.dropQueued();
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      // kafkajs would commit resolved offsets, and the lanes resolve before applying.
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: s.partitionsConsumedConcurrently,
      eachBatch: batches.eachBatch,
    });
  };
  await superviseConsumer(consumer, run, { running: () => running, faults, metrics, labels, log });
  log?.info({ topic, groupId, schema, instanceId }, "materialiser started");
  await status.publish().catch(() => {});

  return {
    state: () => status.state,
    async stop() {
      running = false;
      clearInterval(statusTimer);
      clearInterval(replayTimer);
      clearInterval(commitTimer);
      // The lanes give up at their next attempt (running() is false); what they applied is stored.
      await batches.idle();
      await commitApplied();
      await consumer.disconnect();
      await producer.disconnect();
      pool.off("error", onPoolError);
      await periodic.end();
    },
  };
}
