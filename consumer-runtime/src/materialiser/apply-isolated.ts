/**
 * Applies a partition batch so that one bad event never stops the partition:
 *
 * - a `data` failure (the database refused an event's data) bisects the batch: each half
 *   is applied on its own, recursively, until the failing record is alone; it becomes a
 *   dead letter of class `data` (SQLSTATE as the error code, the database's message) and
 *   the rest is applied. One bad record in a batch of n costs about 2·log2(n) extra
 *   attempts; every attempt is one atomic applyBatch with the offset, so halves that
 *   succeeded are stored and never applied twice;
 * - serialization failures, deadlocks and a moved offset are retried in place;
 * - a gap (the batch starts above the stored offset) is thrown to the caller, which seeks;
 * - system failures are retried with back-off and full jitter, holding the partition.
 *   After `stuckAfterMs` the head record is retried alone and published as stuck, and an
 *   operator's skip request for it turns it into an `operator` dead letter.
 */
import type { KafkaMessage } from "kafkajs";
import type pg from "pg";
import type { SkipRequest } from "../status/skips.ts";
import type { StuckRecord } from "../status/store.ts";
import { type ApplyContext, applyBatch, type BatchResult, type DeadLetterAll } from "./apply-batch.ts";
import { withBatchConnection } from "./connections.ts";
import { type ClassifiedFailure, classifyFailure } from "./failure-class.ts";

/** What the caller learns and decides while a batch is applied. */
export interface ApplyHooks {
  /** False once the partition is revoked or the materialiser stops: give up (returns null). */
  running: () => boolean;
  heartbeat: () => Promise<void>;
  /** A system failure; the same records are tried again after `delayMs`. */
  onFailure: (error: unknown, attempt: number, delayMs: number) => void;
  retryInitialMs: number;
  retryMaxMs: number;
  /** After failing this long (system failures) the head record is stuck; default 60 s. */
  stuckAfterMs?: number;
  /** The head record became stuck (a record) or is no longer (null). */
  onStuck?: (stuck: StuckRecord | null) => void;
  /** A pending operator skip request for this offset of the partition, if any. */
  skipRequest?: (offset: string) => SkipRequest | undefined;
  /** The skip was written as a dead letter (mark the request applied). */
  onSkipped?: (request: SkipRequest) => Promise<void>;
  /** A record became a `data` dead letter. */
  onDataDeadLetter?: (offset: string, failure: ClassifiedFailure) => void;
  /** Called before each applyBatch (tests count statements with it). */
  onAttempt?: (records: KafkaMessage[]) => void;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Back-off for attempt n (1-based): full jitter over min(max, initial·2^(n-1)). */
export function backoffMs(attempt: number, initialMs: number, maxMs: number): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt - 1, 30));
  return Math.max(1, Math.round(Math.random() * ceiling));
}

/** Adds `b` into `a` (results of consecutive parts of one batch). */
export function mergeResults(a: BatchResult, b: BatchResult): BatchResult {
  const applied = { ...a.applied };
  for (const [type, n] of Object.entries(b.applied)) applied[type] = (applied[type] ?? 0) + n;
  const noops = { ...a.noops };
  for (const [reason, n] of Object.entries(b.noops)) noops[reason] = (noops[reason] ?? 0) + n;
  return {
    handled: a.handled + b.handled,
    skipped: a.skipped + b.skipped,
    applied,
    duplicates: a.duplicates + b.duplicates,
    noops,
    deadLettered: {
      poison: a.deadLettered.poison + b.deadLettered.poison,
      business: a.deadLettered.business + b.deadLettered.business,
      data: a.deadLettered.data + b.deadLettered.data,
      operator: a.deadLettered.operator + b.deadLettered.operator,
    },
    eventTimes: [...a.eventTimes, ...b.eventTimes],
    range: a.range && b.range ? { from: a.range.from, to: b.range.to } : (a.range ?? b.range ?? null),
  };
}

function header(record: KafkaMessage, name: string): string | null {
  const raw = record.headers?.[name];
  const value = Array.isArray(raw) ? raw[0] : raw;
  return value === undefined ? null : value.toString();
}

/** How long the records have been failing (carried into the head's own retries). */
interface Failing {
  since: number;
  attempts: number;
  lastError: string;
}

/**
 * Applies `records`, isolating bad events (see the file comment). Returns null when
 * `running()` turned false before everything was applied (what was applied is stored
 * with its offset, so the next owner of the partition continues correctly).
 */
export async function applyIsolated(
  pool: pg.Pool,
  context: ApplyContext,
  records: KafkaMessage[],
  hooks: ApplyHooks,
): Promise<BatchResult | null> {
  return applyRange(pool, context, records, hooks, null);
}

async function attempt(
  pool: pg.Pool,
  context: ApplyContext,
  records: KafkaMessage[],
  hooks: ApplyHooks,
  deadLetterAll?: DeadLetterAll,
): Promise<BatchResult> {
  hooks.onAttempt?.(records);
  return withBatchConnection(pool, (client) => applyBatch(client, context, records, deadLetterAll));
}

async function applyRange(
  pool: pg.Pool,
  context: ApplyContext,
  records: KafkaMessage[],
  hooks: ApplyHooks,
  carried: Failing | null,
  deadLetterAll?: DeadLetterAll,
): Promise<BatchResult | null> {
  const stuckAfterMs = hooks.stuckAfterMs ?? 60_000;
  let failing = carried;
  let systemAttempts = 0;
  let conflicts = 0;
  const head = records[0]!;
  for (;;) {
    if (!hooks.running()) return null;
    if (failing && records.length === 1 && !deadLetterAll) {
      const skip = hooks.skipRequest?.(head.offset);
      if (skip) return skipRecord(pool, context, head, skip, failing, hooks);
    }
    try {
      const result = await attempt(pool, context, records, hooks, deadLetterAll);
      if (failing && records.length === 1) hooks.onStuck?.(null);
      return result;
    } catch (error) {
      const failure = classifyFailure(error);
      if (failure.kind === "gap") throw error;
      if (failure.kind === "conflict") {
        // Another writer or a deadlock: retry at once (a short pause after a few in a row).
        if (++conflicts > 3) await sleep(backoffMs(conflicts - 3, 10, 1000));
        continue;
      }
      // A dead letter's own write is not bisected again: its failure is retried as a system one.
      if (failure.kind === "data" && !deadLetterAll) return isolate(pool, context, records, hooks, failure);
      systemAttempts++;
      failing = {
        since: failing?.since ?? Date.now(),
        attempts: (failing?.attempts ?? 0) + 1,
        lastError: failure.message,
      };
      const delay = backoffMs(systemAttempts, hooks.retryInitialMs, hooks.retryMaxMs);
      hooks.onFailure(error, systemAttempts, delay);
      if (Date.now() - failing.since >= stuckAfterMs) {
        if (records.length > 1) {
          // Narrow the retries to the head record, so that the record shown as stuck is
          // the one that fails and an operator's skip of it is meaningful.
          const first = await applyRange(pool, context, [head], hooks, failing);
          if (first === null) return null;
          const rest = await applyRange(pool, context, records.slice(1), hooks, null);
          return rest === null ? null : mergeResults(first, rest);
        }
        hooks.onStuck?.({
          partition: context.partition,
          offset: head.offset,
          eventType: header(head, "ce_type"),
          conversationId: head.key?.toString() ?? null,
          error: failing.lastError,
          attempts: failing.attempts,
          since: new Date(failing.since).toISOString(),
        });
      }
      const until = Date.now() + delay;
      while (Date.now() < until && hooks.running()) {
        if (records.length === 1 && hooks.skipRequest?.(head.offset)) break;
        await hooks.heartbeat().catch(() => {});
        await sleep(Math.min(250, until - Date.now()));
      }
    }
  }
}

/** A data failure: split until the record at fault is alone, then dead-letter it. */
async function isolate(
  pool: pg.Pool,
  context: ApplyContext,
  records: KafkaMessage[],
  hooks: ApplyHooks,
  failure: ClassifiedFailure,
): Promise<BatchResult | null> {
  if (records.length === 1) {
    const result = await applyRange(pool, context, records, hooks, null, {
      failureClass: "data",
      code: failure.sqlState ?? "CHATBUS_DATA_REFUSED",
      message: `the database refused this event's data: ${failure.message}`,
      attempts: 1,
    });
    if (result && result.deadLettered.data > 0) hooks.onDataDeadLetter?.(records[0]!.offset, failure);
    return result;
  }
  const middle = Math.ceil(records.length / 2);
  const left = await applyRange(pool, context, records.slice(0, middle), hooks, null);
  if (left === null) return null;
  const right = await applyRange(pool, context, records.slice(middle), hooks, null);
  return right === null ? null : mergeResults(left, right);
}

/** Writes the operator's skip as a dead letter of class `operator` and marks the request applied. */
async function skipRecord(
  pool: pg.Pool,
  context: ApplyContext,
  record: KafkaMessage,
  request: SkipRequest,
  failing: Failing,
  hooks: ApplyHooks,
): Promise<BatchResult | null> {
  const result = await applyRange(pool, context, [record], hooks, null, {
    failureClass: "operator",
    code: "CHATBUS_OPERATOR_SKIP",
    message: `skipped by ${request.requestedBy} at ${request.requestedAt.toISOString()} (skip request ${request.id}) after ${failing.attempts} failed attempts since ${new Date(failing.since).toISOString()}; last error: ${failing.lastError}`,
    attempts: failing.attempts,
  });
  if (result === null) return null;
  hooks.onStuck?.(null);
  await hooks.onSkipped?.(request);
  return result;
}
