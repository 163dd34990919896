/**
 * The live materialiser: the built-in subscription `materialiser`, with its own
 * kafkajs consumption loop because it needs more than at-least-once. Each partition
 * batch goes through `applyBatch` (one transaction with the partition's offset), so a
 * crash at any point either applied a batch with its offset or did neither.
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
import { Kafka, type KafkaMessage, logLevel } from "kafkajs";
import type pg from "pg";
import type { Logger } from "pino";
import { Counter, type Registry } from "prom-client";
import { type RuntimeMetrics, runtimeMetrics } from "../runtime/metrics.ts";
import { markSkipApplied, pendingSkips, type SkipRequest } from "../status/skips.ts";
import type { StuckRecord } from "../status/store.ts";
import { type ApplyContext, type BatchResult, OffsetGapError } from "./apply-batch.ts";
import { type ApplyHooks, applyIsolated, backoffMs } from "./apply-isolated.ts";
import { configureConnections } from "./connections.ts";
import { replayMaterialiserDeadLetters } from "./dead-letter-replay.ts";
import { type MaterialiserSettings, materialiserDefaults, validateMaterialiserSettings } from "./options.ts";

/** Options of `startMaterialiser`. */
export interface MaterialiserOptions extends MaterialiserSettings {
  /** Pool whose search_path is the projection schema (migrated). */
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
 * Applies a partition batch with per-event isolation (see apply-isolated.ts), retrying
 * system failures until it succeeds or `running()` turns false (then returns null:
 * nothing was applied by this call that is not stored with its offset, so the next
 * owner of the partition continues correctly).
 */
export async function applyWithRetry(
  pool: pg.Pool,
  context: ApplyContext,
  records: KafkaMessage[],
  hooks: ApplyHooks,
): Promise<BatchResult | null> {
  return applyIsolated(pool, context, records, hooks);
}

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

/** Starts the materialiser; resolves once the consumer runs. */
export async function startMaterialiser(options: MaterialiserOptions): Promise<Materialiser> {
  const { pool, logger, registry, faults, ...settings } = options;
  validateMaterialiserSettings(settings);
  const d = materialiserDefaults;
  const topic = settings.topic ?? d.topic();
  const brokers = settings.brokers ?? d.brokers();
  const groupId = settings.groupId ?? d.groupId();
  const subscription = settings.subscription ?? d.subscription;
  const instanceId = settings.instanceId ?? `${process.pid}-${randomUUID().slice(0, 8)}`;
  const retryInitialMs = settings.retryInitialMs ?? d.retryInitialMs;
  const retryMaxMs = settings.retryMaxMs ?? d.retryMaxMs;
  const measureLatency = settings.measureLatency ?? d.measureLatency;
  const stuckAfterMs = settings.stuckAfterMs ?? d.stuckAfterMs;
  const metrics: RuntimeMetrics | undefined = registry ? runtimeMetrics(registry) : undefined;
  const noops = registry ? noopCounter(registry) : undefined;
  const labels = { subscription };
  const log = logger?.child({ subscription, component: "materialiser" });

  // An idle connection that dies (PostgreSQL restarted) must not crash the process;
  // the batch that needs a connection next sees the failure and retries.
  const onPoolError = (error: Error) => log?.warn({ err: error }, "PostgreSQL connection lost");
  pool.on("error", onPoolError);
  configureConnections(pool, settings.statementTimeoutMs ?? d.statementTimeoutMs);
  // The breaker is closed from the start (so that /metrics shows it before the first batch).
  metrics?.breakerState.set(labels, 0);
  const { rows } = await pool.query<{ schema: string }>("SELECT current_schema() AS schema");
  const schema = rows[0]!.schema;

  const state: MaterialiserState = {
    group: groupId,
    topic,
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
  const partitions = new Map<number, PartitionState>();
  const stuck = new Map<number, StuckRecord>();
  const batchesStarted = new Set<number>();
  // Pending operator skips of this subscription, refreshed with each status publish.
  let skips: SkipRequest[] = [];
  // Partitions just sought back to their stored offset after a gap (see acceptGap).
  const soughtTo = new Map<number, string>();
  let failingBatches = 0;
  let running = true;

  const kafka = new Kafka({
    clientId: settings.clientId ?? d.clientId,
    brokers,
    logLevel: logLevel.NOTHING,
  });
  const consumer = kafka.consumer({
    groupId,
    maxBytesPerPartition: settings.maxBytesPerPartition ?? d.maxBytesPerPartition,
    sessionTimeout: settings.sessionTimeoutMs ?? d.sessionTimeoutMs,
    heartbeatInterval: 3000,
  });
  consumer.on(consumer.events.CRASH, (event) => {
    log?.error({ err: event.payload.error, restart: event.payload.restart }, "materialiser consumer crashed");
    // Restart ourselves even when kafkajs says it will (`restart: true`): its own restart
    // reuses the cluster's cached metadata and can stay stuck for good after a broker
    // is gone ("Broker N not found in the cached metadata", kafkajs #659/#1545; seen in
    // the failover test). disconnect() cancels kafkajs's pending restart.
    if (running && !restarting) void restart();
  });
  let restarting = false;
  let starts = 0;
  const start = async () => {
    starts++;
    await faults?.beforeStart?.(starts);
    await run();
  };
  const restart = async () => {
    // Start the consumer again, with back-off, until it runs (one failed restart must
    // not leave the process without a consumer).
    restarting = true;
    metrics?.restarts.inc(labels);
    const ran = await restartUntilRunning(
      async () => {
        await consumer.disconnect().catch(() => {});
        await start();
      },
      {
        running: () => running,
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

  // "open" while any partition batch is failing with system failures (the partition is held).
  const setBreaker = () => {
    const next = failingBatches > 0 ? "open" : "closed";
    if (next !== state.breaker) {
      metrics?.breakerTransitions.inc({ ...labels, to: next });
      log?.warn({ breaker: next }, `materialiser ${next === "open" ? "holds: PostgreSQL fails" : "resumed"}`);
    }
    state.breaker = next;
    metrics?.breakerState.set(labels, next === "open" ? 2 : 0);
  };
  const publish = async () => {
    state.partitions = [...partitions.values()].sort((a, b) => a.partition - b.partition);
    state.stuck = [...stuck.values()].sort((a, b) => a.partition - b.partition);
    const oldest = Math.min(...batchesStarted);
    state.oldestInFlightMs = batchesStarted.size > 0 ? Date.now() - oldest : null;
    skips = await pendingSkips(pool, subscription).then(
      (all) => all.filter((s) => s.topic === topic),
      () => skips,
    );
    // Requests for records this instance has already passed (applied, or skipped just
    // before a crash) are answered: applied, with the dead letter if there is one.
    for (const request of skips) {
      const owned = partitions.get(request.partition);
      if (!owned || BigInt(request.offset) >= BigInt(owned.committedOffset)) continue;
      const id = await deadLetterId(pool, subscription, topic, request.partition, request.offset);
      await markSkipApplied(pool, request.id, instanceId, id);
      skips = skips.filter((s) => s.id !== request.id);
    }
    await pool.query(
      `INSERT INTO subscription_status (subscription, instance_id, state, last_seen_at) VALUES ($1, $2, $3, now())
       ON CONFLICT (subscription, instance_id) DO UPDATE SET state = excluded.state, last_seen_at = now()`,
      [subscription, instanceId, JSON.stringify(state)],
    );
  };
  // Dead letters an operator replays are produced to the topic again (see dead-letter-replay.ts).
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  let replayBusy = false;
  const replayTimer = setInterval(() => {
    if (replayBusy) return;
    replayBusy = true;
    replayMaterialiserDeadLetters(pool, producer, {
      subscription,
      topic,
      instanceId,
      ...(log ? { logger: log } : {}),
    })
      .then((n) => n > 0 && log?.info({ count: n }, "replayed dead letters produced to the topic again"))
      .catch((error) => log?.warn({ err: error }, "replaying dead letters failed; trying again"))
      .finally(() => {
        replayBusy = false;
      });
  }, settings.replayIntervalMs ?? d.replayIntervalMs);
  replayTimer.unref();
  const statusTimer = setInterval(() => {
    publish().catch((error) => log?.warn({ err: error }, "could not publish materialiser status"));
  }, settings.statusIntervalMs ?? d.statusIntervalMs);
  statusTimer.unref();

  const run = async () => {
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      autoCommit: true,
      // Kafka commits are only a hint (the stored offset is the truth): at most one per
      // 5 s instead of one request per batch, which would add a broker round trip to each.
      autoCommitInterval: 5000,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently:
        settings.partitionsConsumedConcurrently ?? d.partitionsConsumedConcurrently,
      eachBatch: async ({
        batch,
        resolveOffset,
        heartbeat,
        commitOffsetsIfNecessary,
        isRunning,
        isStale,
      }) => {
        if (batch.messages.length === 0) return;
        faults?.beforeBatch?.(batch.partition);
        const p = batch.partition;
        const context: ApplyContext = {
          topic: batch.topic,
          partition: p,
          schema,
          subscription,
          // A gap is accepted only right after seeking back to the stored offset: Kafka
          // then has nothing to deliver in between (transaction markers, retention).
          acceptGap: (_first, stored) => soughtTo.get(p) === (stored ?? "0"),
        };
        state.inFlight += batch.messages.length;
        metrics?.inFlight.inc(labels, batch.messages.length);
        const started = process.hrtime.bigint();
        const startedAt = Date.now();
        batchesStarted.add(startedAt);
        let failing = false;
        let result: BatchResult | null;
        try {
          result = await applyWithRetry(pool, context, batch.messages, {
            running: () => running && isRunning() && !isStale(),
            heartbeat,
            retryInitialMs,
            retryMaxMs,
            stuckAfterMs,
            onFailure: (error, attempt, delayMs) => {
              if (!failing) failingBatches++;
              failing = true;
              setBreaker();
              state.failed += batch.messages.length;
              metrics?.failed.inc({ ...labels, failure_class: "system" }, batch.messages.length);
              metrics?.retried.inc({ ...labels, failure_class: "system" }, batch.messages.length);
              log?.warn(
                { err: error, partition: p, attempt, delayMs },
                "materialiser batch failed; retrying with the partition held",
              );
            },
            onStuck: (record) => {
              if (record === null) stuck.delete(p);
              else {
                if (!stuck.has(p))
                  log?.error({ stuck: record }, "materialiser record stuck; an operator can skip it");
                stuck.set(p, record);
              }
            },
            skipRequest: (offset) => skips.find((s) => s.partition === p && s.offset === offset),
            onSkipped: async (request) => {
              skips = skips.filter((s) => s.id !== request.id);
              const id = await deadLetterId(pool, subscription, topic, p, request.offset);
              await markSkipApplied(pool, request.id, instanceId, id);
              log?.warn({ request, deadLetterId: id }, "operator skip applied: the record is a dead letter");
            },
            onDataDeadLetter: (offset, failure) =>
              log?.warn(
                { partition: p, offset, sqlState: failure.sqlState, error: failure.message },
                "the database refused an event's data: dead-lettered (class data)",
              ),
          });
        } catch (error) {
          if (!(error instanceof OffsetGapError)) throw error;
          // Never apply across a gap: seek back to the stored offset; the records in
          // between come again (or Kafka has none, and the next batch is accepted).
          log?.warn({ partition: p, stored: error.stored, first: error.first }, error.message);
          soughtTo.set(p, error.stored);
          consumer.seek({ topic, partition: p, offset: error.stored });
          return;
        } finally {
          // A stuck record is only shown while its batch is being retried here (not after
          // the partition was revoked or the materialiser stopped).
          stuck.delete(p);
          batchesStarted.delete(startedAt);
          if (failing) failingBatches--;
          setBreaker();
          state.inFlight -= batch.messages.length;
          metrics?.inFlight.dec(labels, batch.messages.length);
        }
        if (result === null) return;
        soughtTo.delete(p);
        const now = Date.now();
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        metrics?.handlerDuration.observe({ ...labels, type: "batch" }, seconds);
        for (const [type, n] of Object.entries(result.applied)) {
          metrics?.consumed.inc({ ...labels, type }, n);
          metrics?.handled.inc({ ...labels, type }, n);
        }
        if (measureLatency && metrics)
          for (const t of result.eventTimes)
            metrics.endToEndLatency.observe(labels, (now - t.getTime()) / 1000);
        for (const [cls, n] of Object.entries(result.deadLettered)) {
          if (n > 0) metrics?.deadLettered.inc({ ...labels, failure_class: cls }, n);
          state.deadLettered += n;
        }
        for (const [reason, n] of Object.entries(result.noops)) noops?.inc({ ...labels, reason }, n);
        state.processed += result.handled;
        const last = batch.lastOffset();
        const next = (BigInt(last) + 1n).toString();
        const lag = Math.max(0, Number(BigInt(batch.highWatermark) - BigInt(next)));
        partitions.set(batch.partition, {
          partition: batch.partition,
          committedOffset: next,
          highWatermark: batch.highWatermark,
          lag,
          paused: false,
        });
        metrics?.lag.set({ ...labels, partition: String(batch.partition) }, lag);
        resolveOffset(last);
        // Only a hint of where to fetch from after a restart; the stored offset is the truth.
        await commitOffsetsIfNecessary().catch((error) =>
          log?.debug({ err: error, partition: batch.partition }, "offset commit failed (harmless)"),
        );
      },
    });
  };
  await start();
  log?.info({ topic, groupId, schema, instanceId }, "materialiser started");
  await publish().catch(() => {});

  return {
    state: () => state,
    async stop() {
      running = false;
      clearInterval(statusTimer);
      clearInterval(replayTimer);
      await consumer.disconnect();
      await producer.disconnect();
      pool.off("error", onPoolError);
    },
  };
}
