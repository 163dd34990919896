/**
 * Rebuilds the projection from the log: replays the topic from the beginning into a
 * fresh schema with the same `applyBatch` as the live materialiser, catches up with
 * the live projection, verifies both are identical, and switches readers in one
 * transaction by moving the tables (`ALTER TABLE … SET SCHEMA`): the live schema gets
 * the rebuilt tables and the fresh schema keeps the old ones. Until that commit the
 * old projection is untouched and readers keep reading it; the live materialiser
 * blocks for the moment of the switch and then continues in the new tables from the
 * same offsets.
 */
import { ChatBusError } from "@chatbus/producer-sdk";
import { type Consumer, Kafka, logLevel } from "kafkajs";
import pg from "pg";
import type { Logger } from "pino";
import { migrate } from "../database/migrate.ts";
import type { ApplyContext } from "./apply-batch.ts";
import { applyIsolated } from "./apply-isolated.ts";
import { materialiserDefaults } from "./options.ts";
import { projectionTables, type VerifyReport, verifyProjections } from "./verify.ts";

/** Progress of a rebuild, reported through `onProgress`. */
export interface RebuildProgress {
  phase: "replay" | "catch-up" | "verify" | "switch" | "done";
  eventsDone: number;
  eventsTotal: number;
  eventsPerSecond: number;
  /** Seconds left at the current rate; null before the rate is known. */
  etaSeconds: number | null;
}

/** Options of `rebuildProjection`. */
export interface RebuildOptions {
  /** DATABASE_URL-style URL; its search_path (or `public`) is the live projection schema. */
  databaseUrl: string;
  brokers?: string[];
  topic?: string;
  /** Name of the fresh schema; `<live>_rebuild_<time>` by default. It must not exist. */
  targetSchema?: string;
  onProgress?: (progress: RebuildProgress) => void;
  logger?: Logger;
  /** How long to wait for the live projection and the rebuilt one to meet (ms). */
  switchTimeoutMs?: number;
  /** Only build and verify; leave readers on the old projection. */
  noSwitch?: boolean;
  /**
   * How long the switch waits for each lock (ms, default 10 s). When a lock is not granted
   * in time (a long reader holds a projection table), the switch is rolled back and tried
   * again until `switchTimeoutMs`; readers are never blocked for longer than this.
   */
  lockTimeoutMs?: number;
}

/** What `rebuildProjection` did. */
export interface RebuildResult {
  /** The live schema (now holding the rebuilt projection unless `noSwitch`). */
  schema: string;
  /** Where the other projection is: the old one after a switch, the rebuilt one with `noSwitch`. */
  otherSchema: string;
  switched: boolean;
  events: number;
  seconds: number;
  verify: VerifyReport;
}

/** The rebuild could not verify or switch; the old projection is untouched. */
export class RebuildError extends ChatBusError<"CHATBUS_REBUILD_FAILED"> {
  constructor(
    message: string,
    readonly report?: VerifyReport,
  ) {
    super("CHATBUS_REBUILD_FAILED", message, { retryable: false });
  }
}

const lesser = (a: bigint, b: bigint) => (a < b ? a : b);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const q = (name: string) => `"${name.replaceAll('"', '""')}"`;

function urlWithSchema(url: string, schema: string): string {
  const u = new URL(url);
  u.searchParams.set("options", `-c search_path=${schema}`);
  return u.toString();
}

async function storedOffsets(pool: pg.Pool | pg.PoolClient, topic: string): Promise<Map<number, bigint>> {
  const { rows } = await pool.query<{ partition: number; next_offset: string }>(
    "SELECT partition, next_offset FROM projection_offsets WHERE topic = $1",
    [topic],
  );
  return new Map(rows.map((r) => [r.partition, BigInt(r.next_offset)]));
}

/**
 * Replays the topic into the fresh schema up to a limit per partition (the log's end at
 * the start, later the live projection's offsets), pausing each partition that reached
 * its limit; reports progress.
 */
class LogReplay {
  phase: RebuildProgress["phase"] = "replay";
  readonly #low: Map<number, bigint>;
  readonly #limit: Map<number, bigint>;
  /** Next offset to apply per partition. */
  readonly applied: Map<number, bigint>;
  readonly #paused = new Set<number>();
  readonly #consumer: Consumer;

  constructor(
    kafka: Kafka,
    ends: { partition: number; low: string; high: string }[],
    readonly target: string,
    readonly options: RebuildOptions & { topic: string; started: number },
  ) {
    this.#low = new Map(ends.map((o) => [o.partition, BigInt(o.low)]));
    this.#limit = new Map(ends.map((o) => [o.partition, BigInt(o.high)]));
    this.applied = new Map(ends.map((o) => [o.partition, BigInt(o.low)]));
    this.#consumer = kafka.consumer({
      groupId: `chatbus-rebuild-${target}`,
      maxBytesPerPartition: materialiserDefaults.maxBytesPerPartition,
      sessionTimeout: 30_000,
    });
  }

  /** Starts consuming into `pool` (the fresh schema's). */
  async start(pool: pg.Pool): Promise<void> {
    const c = this.#consumer;
    const { topic, logger } = this.options;
    await c.connect();
    await c.subscribe({ topic, fromBeginning: true });
    await c.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 4,
      eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
        const l = this.#limit.get(batch.partition) ?? 0n;
        const records = batch.messages.filter((m) => BigInt(m.offset) < l);
        if (records.length > 0) {
          const context: ApplyContext = {
            topic: batch.topic,
            partition: batch.partition,
            schema: this.target,
            subscription: "materialiser",
          };
          const result = await applyIsolated(pool, context, records, {
            running: () => isRunning() && !isStale(),
            heartbeat,
            retryInitialMs: materialiserDefaults.retryInitialMs,
            retryMaxMs: materialiserDefaults.retryMaxMs,
            onFailure: (error, attempt, delayMs) =>
              logger?.warn({ err: error, attempt, delayMs }, "rebuild batch failed; retrying"),
          });
          if (result === null) return;
          const last = records[records.length - 1]!.offset;
          this.applied.set(batch.partition, BigInt(last) + 1n);
          resolveOffset(last);
        }
        if (this.applied.get(batch.partition)! >= l) {
          c.pause([{ topic, partitions: [batch.partition] }]);
          this.#paused.add(batch.partition);
        }
      },
    });
  }

  /** Replays partition `p` further, up to `to` (a paused partition resumes where it stopped). */
  extend(p: number, to: bigint): void {
    this.#limit.set(p, to);
    if (this.#paused.has(p)) {
      this.#paused.delete(p);
      this.#consumer.seek({
        topic: this.options.topic,
        partition: p,
        offset: this.applied.get(p)!.toString(),
      });
      this.#consumer.resume([{ topic: this.options.topic, partitions: [p] }]);
    }
  }

  /** Resolves once every partition reached its limit (partitions empty up to it are done from the start). */
  async waitReached(): Promise<void> {
    while (![...this.#limit].every(([p, l]) => this.applied.get(p)! >= l)) {
      this.progress();
      await sleep(250);
    }
    this.progress();
  }

  /** The stored offset a partition without events in the rebuilt schema would have. */
  low(p: number): bigint {
    return this.#low.get(p)!;
  }

  /** Events applied (the sum of the next offsets). */
  events(): number {
    return Number([...this.applied.values()].reduce((a, b) => a + b, 0n));
  }

  progress(phase?: RebuildProgress["phase"]): void {
    if (phase) this.phase = phase;
    let done = 0n;
    let total = 0n;
    for (const [p, l] of this.#limit) {
      total += l - this.#low.get(p)!;
      done += lesser(this.applied.get(p)!, l) - this.#low.get(p)!;
    }
    const seconds = (Date.now() - this.options.started) / 1000;
    const rate = seconds > 0 ? Number(done) / seconds : 0;
    this.options.onProgress?.({
      phase: this.phase,
      eventsDone: Number(done),
      eventsTotal: Number(total),
      eventsPerSecond: Math.round(rate),
      etaSeconds: rate > 0 ? Math.max(0, Number(total - done) / rate) : null,
    });
  }

  async stop(): Promise<void> {
    await this.#consumer.disconnect();
  }
}

/** Moves the projection's tables: the live schema gets the rebuilt ones, `target` the old ones. */
async function swapTables(client: pg.PoolClient, schema: string, target: string): Promise<void> {
  const swap = `${target}_swap`.slice(0, 63);
  await client.query(`CREATE SCHEMA ${q(swap)}`);
  for (const table of projectionTables) {
    await client.query(`ALTER TABLE ${q(schema)}.${table} SET SCHEMA ${q(swap)}`);
    await client.query(`ALTER TABLE ${q(target)}.${table} SET SCHEMA ${q(schema)}`);
    await client.query(`ALTER TABLE ${q(swap)}.${table} SET SCHEMA ${q(target)}`);
  }
  await client.query(`DROP SCHEMA ${q(swap)}`);
}

/**
 * With the live offsets locked (the live materialiser blocks at its next batch): verifies
 * and, unless `noSwitch`, switches. Returns null when the offsets moved since the
 * catch-up (try again); rolls back and throws when the projections differ.
 */
async function verifyAndSwitch(
  client: pg.PoolClient,
  rebuiltPool: pg.Pool,
  replay: LogReplay,
  schema: string,
  options: RebuildOptions & { topic: string; started: number },
): Promise<RebuildResult | null> {
  const target = replay.target;
  await client.query("BEGIN");
  await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.floor(options.lockTimeoutMs ?? 10_000))}`);
  // Stops the live materialiser at its next transaction (each starts on this table).
  await client.query("LOCK TABLE projection_offsets IN EXCLUSIVE MODE");
  const locked = await storedOffsets(client, options.topic);
  const rebuilt = await storedOffsets(rebuiltPool, options.topic);
  const same = locked.size === rebuilt.size && [...locked].every(([p, o]) => rebuilt.get(p) === o);
  if (!same) {
    await client.query("ROLLBACK");
    return null;
  }
  replay.progress("verify");
  const report = await verifyProjections(client, schema, target);
  if (!report.identical) {
    await client.query("ROLLBACK");
    throw new RebuildError(
      `the rebuilt projection in ${target} differs from the live one in ${schema} (${report.tables
        .filter((t) => t.onlyInA + t.onlyInB > 0)
        .map((t) => `${t.table}: ${t.onlyInA} only live, ${t.onlyInB} only rebuilt`)
        .join("; ")}); readers stay on the old projection.`,
      report,
    );
  }
  const result = (switched: boolean): RebuildResult => ({
    schema,
    otherSchema: target,
    switched,
    events: replay.events(),
    seconds: (Date.now() - options.started) / 1000,
    verify: report,
  });
  if (options.noSwitch) {
    await client.query("ROLLBACK");
    replay.progress("done");
    return result(false);
  }
  replay.progress("switch");
  await swapTables(client, schema, target);
  await client.query("COMMIT");
  replay.progress("done");
  options.logger?.info({ schema, old: target }, "projection rebuilt and switched");
  return result(true);
}

/** Catches up with the live projection, then verifies and switches under its offset lock. */
async function catchUpAndSwitch(
  livePool: pg.Pool,
  rebuiltPool: pg.Pool,
  replay: LogReplay,
  schema: string,
  options: RebuildOptions & { topic: string; started: number },
): Promise<RebuildResult> {
  replay.phase = "catch-up";
  const timeoutMs = options.switchTimeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (Date.now() > deadline)
      throw new RebuildError(
        `the rebuilt projection in ${replay.target} and the live one in ${schema} did not meet within ${timeoutMs} ms (is the live materialiser running and keeping up?); the old projection is untouched.`,
      );
    const live = await storedOffsets(livePool, options.topic);
    let behind = false;
    let ahead = false;
    for (const [p, o] of live) {
      const n = replay.applied.get(p) ?? 0n;
      if (n < o) {
        replay.extend(p, o);
        behind = true;
      } else if (n > o) ahead = true;
    }
    for (const [p, n] of replay.applied) if (n > (live.get(p) ?? replay.low(p))) ahead = true;
    if (behind) {
      await replay.waitReached();
      continue;
    }
    if (ahead) {
      // The live materialiser has not applied what we have; wait for it.
      await sleep(200);
      continue;
    }
    const client = await livePool.connect();
    try {
      const result = await verifyAndSwitch(client, rebuiltPool, replay, schema, options);
      if (result) return result;
    } catch (error) {
      await client.query("ROLLBACK").catch(() => {});
      // A lock not granted in time (55P03: a long reader holds a table the switch must
      // move): nothing changed; try the switch again until the deadline.
      if ((error as { code?: string }).code !== "55P03") throw error;
      options.logger?.warn({ err: error }, "projection switch waited too long for a lock; trying again");
      replay.phase = "catch-up";
      await sleep(200);
    } finally {
      client.release();
    }
  }
}

/** Replays the topic into a fresh schema, verifies it and switches readers to it. */
export async function rebuildProjection(options: RebuildOptions): Promise<RebuildResult> {
  const topic = options.topic ?? materialiserDefaults.topic();
  const brokers = options.brokers ?? materialiserDefaults.brokers();
  const livePool = new pg.Pool({ connectionString: options.databaseUrl, max: 4 });
  const started = Date.now();
  let targetPool: pg.Pool | undefined;
  let replay: LogReplay | undefined;
  try {
    await migrate(livePool);
    const schema = (await livePool.query<{ s: string }>("SELECT current_schema() AS s")).rows[0]!.s;
    const target = options.targetSchema ?? `${schema}_rebuild_${Date.now().toString(36)}`.slice(0, 63);
    await livePool.query(`CREATE SCHEMA ${q(target)}`);
    targetPool = new pg.Pool({ connectionString: urlWithSchema(options.databaseUrl, target), max: 6 });
    await migrate(targetPool);

    const kafka = new Kafka({ clientId: "chatbus-rebuild", brokers, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    const ends = await admin.fetchTopicOffsets(topic).finally(() => admin.disconnect());
    replay = new LogReplay(kafka, ends, target, { ...options, topic, started });
    await replay.start(targetPool);
    await replay.waitReached();
    return await catchUpAndSwitch(livePool, targetPool, replay, schema, { ...options, topic, started });
  } finally {
    await replay?.stop().catch(() => {});
    await targetPool?.end().catch(() => {});
    await livePool.end().catch(() => {});
  }
}
