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
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";
import type { Logger } from "pino";
import { migrate } from "../database/migrate.ts";
import type { ApplyContext } from "./apply-batch.ts";
import { applyWithRetry } from "./materialiser.ts";
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

/** Replays the topic into a fresh schema, verifies it and switches readers to it. */
export async function rebuildProjection(options: RebuildOptions): Promise<RebuildResult> {
  const topic = options.topic ?? materialiserDefaults.topic();
  const brokers = options.brokers ?? materialiserDefaults.brokers();
  const livePool = new pg.Pool({ connectionString: options.databaseUrl, max: 4 });
  const started = Date.now();
  let targetPool: pg.Pool | undefined;
  let consumer: ReturnType<Kafka["consumer"]> | undefined;
  try {
    await migrate(livePool);
    const schema = (await livePool.query<{ s: string }>("SELECT current_schema() AS s")).rows[0]!.s;
    const target = options.targetSchema ?? `${schema}_rebuild_${Date.now().toString(36)}`.slice(0, 63);
    await livePool.query(`CREATE SCHEMA ${q(target)}`);
    targetPool = new pg.Pool({ connectionString: urlWithSchema(options.databaseUrl, target), max: 6 });
    await migrate(targetPool);
    const pool = targetPool;

    const kafka = new Kafka({ clientId: "chatbus-rebuild", brokers, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    const ends = await admin.fetchTopicOffsets(topic).finally(() => admin.disconnect());
    const low = new Map(ends.map((o) => [o.partition, BigInt(o.low)]));
    const limit = new Map(ends.map((o) => [o.partition, BigInt(o.high)]));
    const applied = new Map(ends.map((o) => [o.partition, BigInt(o.low)]));
    const paused = new Set<number>();

    let phase: RebuildProgress["phase"] = "replay";
    const progress = () => {
      let done = 0n;
      let total = 0n;
      for (const [p, l] of limit) {
        total += l - low.get(p)!;
        done += lesser(applied.get(p)!, l) - low.get(p)!;
      }
      const seconds = (Date.now() - started) / 1000;
      const rate = seconds > 0 ? Number(done) / seconds : 0;
      options.onProgress?.({
        phase,
        eventsDone: Number(done),
        eventsTotal: Number(total),
        eventsPerSecond: Math.round(rate),
        etaSeconds: rate > 0 ? Math.max(0, Number(total - done) / rate) : null,
      });
    };
    const reached = () => [...limit].every(([p, l]) => applied.get(p)! >= l);

    consumer = kafka.consumer({
      groupId: `chatbus-rebuild-${target}`,
      maxBytesPerPartition: materialiserDefaults.maxBytesPerPartition,
      sessionTimeout: 30_000,
    });
    const c = consumer;
    await c.connect();
    await c.subscribe({ topic, fromBeginning: true });
    await c.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 4,
      eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
        const l = limit.get(batch.partition) ?? 0n;
        const records = batch.messages.filter((m) => BigInt(m.offset) < l);
        if (records.length > 0) {
          const context: ApplyContext = {
            topic: batch.topic,
            partition: batch.partition,
            schema: target,
            subscription: "materialiser",
          };
          const result = await applyWithRetry(pool, context, records, {
            running: () => isRunning() && !isStale(),
            heartbeat,
            retryInitialMs: materialiserDefaults.retryInitialMs,
            retryMaxMs: materialiserDefaults.retryMaxMs,
            onFailure: (error, attempt, delayMs) =>
              options.logger?.warn({ err: error, attempt, delayMs }, "rebuild batch failed; retrying"),
          });
          if (result === null) return;
          const last = records[records.length - 1]!.offset;
          applied.set(batch.partition, BigInt(last) + 1n);
          resolveOffset(last);
        }
        if (applied.get(batch.partition)! >= l) {
          c.pause([{ topic, partitions: [batch.partition] }]);
          paused.add(batch.partition);
        }
      },
    });
    // Partitions that are empty up to their limit are done from the start.
    const extend = (p: number, to: bigint) => {
      limit.set(p, to);
      if (paused.has(p)) {
        paused.delete(p);
        c.seek({ topic, partition: p, offset: applied.get(p)!.toString() });
        c.resume([{ topic, partitions: [p] }]);
      }
    };

    const waitReached = async () => {
      while (!reached()) {
        progress();
        await sleep(250);
      }
      progress();
    };
    await waitReached();

    // Catch up with the live projection, then switch under its offset lock.
    phase = "catch-up";
    const deadline = Date.now() + (options.switchTimeoutMs ?? 60_000);
    for (;;) {
      if (Date.now() > deadline)
        throw new RebuildError(
          `the rebuilt projection in ${target} and the live one in ${schema} did not meet within ${options.switchTimeoutMs ?? 60_000} ms (is the live materialiser running and keeping up?); the old projection is untouched.`,
        );
      const live = await storedOffsets(livePool, topic);
      let behind = false;
      let ahead = false;
      for (const [p, o] of live) {
        const n = applied.get(p) ?? 0n;
        if (n < o) {
          extend(p, o);
          behind = true;
        } else if (n > o) ahead = true;
      }
      for (const [p, n] of applied) if (n > (live.get(p) ?? low.get(p)!)) ahead = true;
      if (behind) {
        await waitReached();
        continue;
      }
      if (ahead) {
        // The live materialiser has not applied what we have; wait for it.
        await sleep(200);
        continue;
      }
      const client = await livePool.connect();
      try {
        await client.query("BEGIN");
        await client.query(
          `SET LOCAL lock_timeout = ${Math.max(1, Math.floor(options.lockTimeoutMs ?? 10_000))}`,
        );
        // Stops the live materialiser at its next transaction (each starts on this table).
        await client.query("LOCK TABLE projection_offsets IN EXCLUSIVE MODE");
        const locked = await storedOffsets(client, topic);
        const rebuilt = await storedOffsets(pool, topic);
        const same = locked.size === rebuilt.size && [...locked].every(([p, o]) => rebuilt.get(p) === o);
        if (!same) {
          await client.query("ROLLBACK");
          continue;
        }
        phase = "verify";
        progress();
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
        if (options.noSwitch) {
          await client.query("ROLLBACK");
          phase = "done";
          progress();
          return {
            schema,
            otherSchema: target,
            switched: false,
            events: Number([...applied.values()].reduce((a, b) => a + b, 0n)),
            seconds: (Date.now() - started) / 1000,
            verify: report,
          };
        }
        phase = "switch";
        progress();
        const swap = `${target}_swap`.slice(0, 63);
        await client.query(`CREATE SCHEMA ${q(swap)}`);
        for (const table of projectionTables) {
          await client.query(`ALTER TABLE ${q(schema)}.${table} SET SCHEMA ${q(swap)}`);
          await client.query(`ALTER TABLE ${q(target)}.${table} SET SCHEMA ${q(schema)}`);
          await client.query(`ALTER TABLE ${q(swap)}.${table} SET SCHEMA ${q(target)}`);
        }
        await client.query(`DROP SCHEMA ${q(swap)}`);
        await client.query("COMMIT");
        phase = "done";
        progress();
        options.logger?.info({ schema, old: target }, "projection rebuilt and switched");
        return {
          schema,
          otherSchema: target,
          switched: true,
          events: Number([...applied.values()].reduce((a, b) => a + b, 0n)),
          seconds: (Date.now() - started) / 1000,
          verify: report,
        };
      } catch (error) {
        await client.query("ROLLBACK").catch(() => {});
        // A lock not granted in time (55P03: a long reader holds a table the switch must
        // move): nothing changed; try the switch again until the deadline.
        if ((error as { code?: string }).code === "55P03") {
          options.logger?.warn({ err: error }, "projection switch waited too long for a lock; trying again");
          phase = "catch-up";
          await sleep(200);
          continue;
        }
        throw error;
      } finally {
        client.release();
      }
    }
  } finally {
    await consumer?.disconnect().catch(() => {});
    await targetPool?.end().catch(() => {});
    await livePool.end().catch(() => {});
  }
}
