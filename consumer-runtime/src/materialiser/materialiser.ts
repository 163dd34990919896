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
import type { Registry } from "prom-client";
import { type RuntimeMetrics, runtimeMetrics } from "../runtime/metrics.ts";
import { type ApplyContext, applyBatch, type BatchResult } from "./apply-batch.ts";
import { replayMaterialiserDeadLetters } from "./dead-letter-replay.ts";
import { type MaterialiserSettings, materialiserDefaults, validateMaterialiserSettings } from "./options.ts";

/** Options of `startMaterialiser`. */
export interface MaterialiserOptions extends MaterialiserSettings {
  /** Pool whose search_path is the projection schema (migrated). */
  pool: pg.Pool;
  logger?: Logger;
  /** Metrics go here (subscription="materialiser"); none when omitted. */
  registry?: Registry;
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
}

/** A running materialiser. */
export interface Materialiser {
  /** The status as last published. */
  state(): MaterialiserState;
  /** Leaves the group after the batches in flight finished (or gave up retrying). */
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Back-off for attempt n (1-based): full jitter over min(max, initial·2^(n-1)). */
export function backoffMs(attempt: number, initialMs: number, maxMs: number): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt - 1, 30));
  return Math.max(1, Math.round(Math.random() * ceiling));
}

/**
 * Applies a partition batch, retrying system failures until it succeeds or `running()`
 * turns false (then returns null: nothing was applied by this call that is not stored
 * with its offset, so the next owner of the partition continues correctly).
 */
export async function applyWithRetry(
  pool: pg.Pool,
  context: ApplyContext,
  records: KafkaMessage[],
  hooks: {
    running: () => boolean;
    heartbeat: () => Promise<void>;
    onFailure: (error: unknown, attempt: number, delayMs: number) => void;
    retryInitialMs: number;
    retryMaxMs: number;
  },
): Promise<BatchResult | null> {
  for (let attempt = 1; ; attempt++) {
    if (!hooks.running()) return null;
    let client: pg.PoolClient | undefined;
    try {
      client = await pool.connect();
      const result = await applyBatch(client, context, records);
      client.release();
      return result;
    } catch (error) {
      // A connection that failed mid-transaction is not reused.
      client?.release(true);
      const delay = backoffMs(attempt, hooks.retryInitialMs, hooks.retryMaxMs);
      hooks.onFailure(error, attempt, delay);
      const until = Date.now() + delay;
      while (Date.now() < until && hooks.running()) {
        await hooks.heartbeat().catch(() => {});
        await sleep(Math.min(1000, until - Date.now()));
      }
    }
  }
}

/** Starts the materialiser; resolves once the consumer runs. */
export async function startMaterialiser(options: MaterialiserOptions): Promise<Materialiser> {
  const { pool, logger, registry, ...settings } = options;
  validateMaterialiserSettings(settings);
  const d = materialiserDefaults;
  const topic = settings.topic ?? d.topic();
  const brokers = settings.brokers ?? d.brokers();
  const groupId = settings.groupId ?? d.groupId;
  const subscription = settings.subscription ?? d.subscription;
  const instanceId = settings.instanceId ?? `${process.pid}-${randomUUID().slice(0, 8)}`;
  const retryInitialMs = settings.retryInitialMs ?? d.retryInitialMs;
  const retryMaxMs = settings.retryMaxMs ?? d.retryMaxMs;
  const measureLatency = settings.measureLatency ?? d.measureLatency;
  const metrics: RuntimeMetrics | undefined = registry ? runtimeMetrics(registry) : undefined;
  const labels = { subscription };
  const log = logger?.child({ subscription, component: "materialiser" });

  // An idle connection that dies (PostgreSQL restarted) must not crash the process;
  // the batch that needs a connection next sees the failure and retries.
  const onPoolError = (error: Error) => log?.warn({ err: error }, "PostgreSQL connection lost");
  pool.on("error", onPoolError);
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
  };
  const partitions = new Map<number, PartitionState>();
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
    if (event.payload.restart) metrics?.restarts.inc(labels);
    else if (running) void restart();
  });
  const restart = async () => {
    // kafkajs gave up (non-retriable crash): start the consumer again after a pause.
    metrics?.restarts.inc(labels);
    await sleep(1000);
    if (running) await run().catch((error) => log?.error({ err: error }, "materialiser restart failed"));
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
        const context: ApplyContext = {
          topic: batch.topic,
          partition: batch.partition,
          schema,
          subscription,
        };
        state.inFlight += batch.messages.length;
        metrics?.inFlight.inc(labels, batch.messages.length);
        const started = process.hrtime.bigint();
        let failing = false;
        let result: BatchResult | null;
        try {
          result = await applyWithRetry(pool, context, batch.messages, {
            running: () => running && isRunning() && !isStale(),
            heartbeat,
            retryInitialMs,
            retryMaxMs,
            onFailure: (error, attempt, delayMs) => {
              if (!failing) failingBatches++;
              failing = true;
              setBreaker();
              state.failed += batch.messages.length;
              metrics?.failed.inc({ ...labels, failure_class: "system" }, batch.messages.length);
              metrics?.retried.inc({ ...labels, failure_class: "system" }, batch.messages.length);
              log?.warn(
                { err: error, partition: batch.partition, attempt, delayMs },
                "materialiser batch failed; retrying with the partition held",
              );
            },
          });
        } finally {
          if (failing) failingBatches--;
          setBreaker();
          state.inFlight -= batch.messages.length;
          metrics?.inFlight.dec(labels, batch.messages.length);
        }
        if (result === null) return;
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
        for (const cls of ["poison", "business"] as const) {
          const n = result.deadLettered[cls];
          if (n > 0) metrics?.deadLettered.inc({ ...labels, failure_class: cls }, n);
        }
        state.processed += result.handled;
        state.deadLettered += result.deadLettered.poison + result.deadLettered.business;
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
  await run();
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
