/**
 * Applies one partition's batch of records to the projection atomically with the
 * partition's `projection_offsets.next_offset`, in two round trips:
 *
 * 1. one statement loads the stored offset and every row the batch touches (as JSON);
 *    records below the offset are skipped (applied before a crash, a rebalance or a
 *    redelivery);
 * 2. the events are folded in memory in log order (business rules, sequence numbers,
 *    the senders' own-message counts that unread is derived from);
 * 3. ONE statement of data-modifying CTEs writes the final state with one set-based
 *    `INSERT/UPDATE … FROM unnest(…)` per table (not one per event; JSON columns come
 *    from one JSON array parameter each, `json_array_elements`), guarded by the
 *    offset: `guard` moves `next_offset` only if it still is what step 1 saw (taking
 *    the row lock), every other CTE writes only if the guard did, and the NOTIFY is
 *    selected from the guard. A single statement is atomic, so a crash leaves the
 *    batch with its offset or neither; a concurrent writer of the same partition makes
 *    the guard match nothing (OffsetMovedError) and the batch is retried.
 *
 * Kafka commits are only a hint of where to fetch from.
 */

import { ChatBusError, decodeRecord, type RawRecord } from "@chatbus/producer-sdk";
import type pg from "pg";
import { evolve, type PositionedEvent } from "./evolve.ts";
import { loadBatchState } from "./projection-loader.ts";
import { type DeadLetterRow, headersAsJson, writeBatch } from "./projection-writer.ts";

export { OffsetMovedError } from "./projection-writer.ts";

/** A record as kafkajs hands it over, with its offset. */
export interface BatchRecord extends RawRecord {
  offset: string;
}

/** What a batch did, for metrics, logs and the NOTIFY. */
export interface BatchResult {
  /** Records at or beyond the stored offset that this transaction handled. */
  handled: number;
  /** Records skipped because an earlier transaction had applied them. */
  skipped: number;
  /** Applied events by type. */
  applied: Record<string, number>;
  duplicates: number;
  /** Benign repeats applied as no-ops, by reason. */
  noops: Record<string, number>;
  deadLettered: Record<DeadLetterClass, number>;
  /** `ce_time` of every applied event (end-to-end latency is measured after commit). */
  eventTimes: Date[];
  /** First and last offset handled (inclusive), or null when everything was skipped. */
  range: { from: string; to: string } | null;
}

/** The failure classes the materialiser writes dead letters of. */
export type DeadLetterClass = "poison" | "business" | "data" | "operator";

/** An empty `deadLettered` count. */
export const noDeadLetters = (): Record<DeadLetterClass, number> => ({
  poison: 0,
  business: 0,
  data: 0,
  operator: 0,
});

/** Who applies: the subscription name that dead letters carry. */
export interface ApplyContext {
  topic: string;
  partition: number;
  /** Schema of the projection (for the NOTIFY channel). */
  schema: string;
  subscription: string;
  /**
   * Decides whether a batch may start above the stored offset (records in between were
   * never applied). Absent: gaps are accepted (a rebuild reads the whole log itself).
   * The live materialiser accepts a gap only where Kafka holds nothing in between
   * (transaction markers, retention, a projection created after the log start; see
   * partition-batch.ts).
   */
  acceptGap?: (first: string, stored: string | null) => boolean;
}

/** Turns every record of the batch into a dead letter of this class (bisect, operator skip). */
export interface DeadLetterAll {
  failureClass: "data" | "operator";
  code: string;
  message: string;
  attempts: number;
}

/** A result that applied nothing. */
export const emptyResult = (): BatchResult => ({
  handled: 0,
  skipped: 0,
  applied: {},
  duplicates: 0,
  noops: {},
  deadLettered: noDeadLetters(),
  eventTimes: [],
  range: null,
});

/**
 * Applies `records` (one partition, ascending offsets) atomically with the stored
 * offset, on `client`. With `deadLetterAll`, the records are not folded but written as
 * dead letters of that class (with the offset): how a bisect isolates a record the
 * database refuses and how an operator skip moves a partition on.
 */
export async function applyBatch(
  client: pg.PoolClient,
  context: ApplyContext,
  records: BatchRecord[],
  deadLetterAll?: DeadLetterAll,
): Promise<BatchResult> {
  const result = emptyResult();
  if (records.length === 0) return result;
  await fold(client, context, records, result, deadLetterAll);
  return result;
}

/**
 * The batch starts above the stored offset: the records in between were never applied
 * (a restore that lost commits, a projection re-created under the same group). Nothing
 * was written; the consumer seeks back to `stored` and applies from there (retryable).
 */
export class OffsetGapError extends ChatBusError<"CHATBUS_OFFSET_GAP"> {
  constructor(
    readonly topic: string,
    readonly partition: number,
    /** The stored next offset ("0" when the partition has no row yet). */
    readonly stored: string,
    readonly first: string,
  ) {
    super(
      "CHATBUS_OFFSET_GAP",
      `batch of ${topic}/${partition} starts at offset ${first} but the projection's stored offset is ${stored}: records ${stored}..${BigInt(first) - 1n} were never applied; seeking back to ${stored}.`,
      { retryable: true },
    );
  }
}

/**
 * Decodes, loads, evolves and writes one batch. Records below the stored offset are
 * skipped (applied before a crash, a rebalance or a redelivery); a batch above it is a gap.
 */
async function fold(
  client: pg.PoolClient,
  context: ApplyContext,
  records: BatchRecord[],
  result: BatchResult,
  deadLetterAll?: DeadLetterAll,
): Promise<void> {
  let deadLetters: DeadLetterRow[] = [];
  let decoded: (PositionedEvent & { record: BatchRecord })[] = [];
  for (const record of records) {
    const outcome = decodeRecord(record);
    if (outcome.ok && deadLetterAll) {
      deadLetters.push({
        offset: record.offset,
        record,
        eventId: outcome.event.id,
        eventType: outcome.event.type,
        conversationId: outcome.event.conversationId,
        failureClass: deadLetterAll.failureClass,
        code: deadLetterAll.code,
        message: deadLetterAll.message,
        attempts: deadLetterAll.attempts,
      });
    } else if (outcome.ok) {
      decoded.push({ record, offset: record.offset, event: outcome.event });
    } else {
      const headers = headersAsJson(record.headers);
      deadLetters.push({
        offset: record.offset,
        record,
        eventId: headers.ce_id ?? null,
        eventType: headers.ce_type ?? null,
        conversationId: record.key?.toString() ?? null,
        failureClass: "poison",
        code: outcome.code,
        message: outcome.reason,
        attempts: 1,
      });
    }
  }
  const { state, storedOffset } = await loadBatchState(
    client,
    context,
    decoded.map((d) => d.event),
  );
  const nextOffset = BigInt(storedOffset ?? 0);
  decoded = decoded.filter((d) => BigInt(d.offset) >= nextOffset);
  deadLetters = deadLetters.filter((d) => BigInt(d.offset) >= nextOffset);
  const todo = records.filter((r) => BigInt(r.offset) >= nextOffset);
  result.skipped = records.length - todo.length;
  if (todo.length === 0) return;
  // Never apply across a gap: what lies between was never applied (see OffsetGapError).
  const first = todo[0]!.offset;
  if (BigInt(first) > nextOffset && context.acceptGap && !context.acceptGap(first, storedOffset))
    throw new OffsetGapError(context.topic, context.partition, nextOffset.toString(), first);
  const last = todo[todo.length - 1]!.offset;
  result.range = { from: first, to: last };
  result.handled = todo.length;

  const changes = evolve(state, context.partition, decoded);
  const byOffset = new Map(decoded.map((d) => [d.offset, d.record]));
  for (const refusal of changes.refusals)
    deadLetters.push({
      offset: refusal.offset,
      record: byOffset.get(refusal.offset)!,
      eventId: refusal.event.id,
      eventType: refusal.event.type,
      conversationId: refusal.event.conversationId,
      failureClass: "business",
      code: refusal.code,
      message: refusal.message,
      attempts: 1,
    });
  result.applied = changes.applied;
  result.eventTimes = changes.eventTimes;
  result.duplicates = changes.duplicateCount;
  result.noops = changes.noops;
  for (const d of deadLetters) result.deadLettered[d.failureClass]++;
  await writeBatch(client, context, changes, deadLetters, { first, last, expected: nextOffset.toString() });
}
