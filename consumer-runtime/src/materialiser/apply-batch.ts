/**
 * Applies a batch of records (one partition's, or several partitions' at once) to the
 * projection atomically with each partition's `projection_offsets.next_offset`, in two
 * round trips:
 *
 * 1. one statement loads the stored offsets and every row the batch touches (as JSON);
 *    records below their partition's offset are skipped (applied before a crash, a
 *    rebalance or a redelivery);
 * 2. the events are folded in memory in log order (business rules, sequence numbers,
 *    the senders' own-message counts that unread is derived from);
 * 3. ONE statement of data-modifying CTEs writes the final state with one set-based
 *    `INSERT/UPDATE … FROM unnest(…)` per table (not one per event; JSON columns come
 *    from one JSON array parameter each, `json_array_elements`), guarded by the
 *    offsets: `guard` moves a partition's `next_offset` only if it still is what step 1
 *    saw (taking the row lock), every row is written only if the guard moved its
 *    partition, and the NOTIFY is selected from the guard. A single statement is
 *    atomic, so a crash leaves the batch with its offsets or neither; a concurrent
 *    writer of a partition makes the guard skip it (OffsetMovedError for a single
 *    partition) and that partition's records are retried.
 *
 * Kafka commits are only a hint of where to fetch from.
 */

import { ChatBusError, decodeRecord, type RawRecord } from "@chatbus/producer-sdk";
import type pg from "pg";
import { type Changes, evolve, type PositionedEvent } from "./evolve.ts";
import { loadBatchState } from "./projection-loader.ts";
import {
  type DeadLetterRow,
  headersAsJson,
  OffsetMovedError,
  type PartitionOffsets,
  writeBatch,
} from "./projection-writer.ts";

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
  if (records.length === 0) return emptyResult();
  const { results, moved, offsets } = await fold(client, [{ context, records }], deadLetterAll);
  const result = results.get(context.partition)!;
  if (result.range && !moved.has(context.partition))
    throw new OffsetMovedError(context.topic, context.partition, offsets[0]?.expected ?? "0");
  return result;
}

/** One partition's records in a batch of several partitions. */
export interface PartitionRecords {
  /** The partition's context; topic, schema and subscription are the same for all. */
  context: ApplyContext;
  /** Ascending offsets, not empty. */
  records: BatchRecord[];
}

/**
 * Applies several partitions' records in one load and one write (one transaction
 * instead of one per partition: what small batches cost is mostly per transaction).
 * Returns the result of every partition whose offset the write moved; the others were
 * moved by another writer meanwhile and must be applied again (their rows were not
 * written). Throws, with nothing written, on any failure (a gap, a database error):
 * the caller then applies each partition on its own (applyIsolated), which isolates
 * bad records and retries system failures per partition.
 */
export async function applyPartitions(
  client: pg.PoolClient,
  parts: PartitionRecords[],
): Promise<Map<number, BatchResult>> {
  const { results, moved } = await fold(client, parts);
  for (const p of results.keys()) if (!moved.has(p) && results.get(p)!.range) results.delete(p);
  return results;
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

/** Turns a decoded record into a dead letter of the given class. */
function deadLetterOf(
  partition: number,
  record: BatchRecord,
  outcome: ReturnType<typeof decodeRecord>,
  all: DeadLetterAll | undefined,
): DeadLetterRow {
  if (outcome.ok)
    return {
      partition,
      offset: record.offset,
      record,
      eventId: outcome.event.id,
      eventType: outcome.event.type,
      conversationId: outcome.event.conversationId,
      failureClass: all!.failureClass,
      code: all!.code,
      message: all!.message,
      attempts: all!.attempts,
    };
  const headers = headersAsJson(record.headers);
  return {
    partition,
    offset: record.offset,
    record,
    eventId: headers.ce_id ?? null,
    eventType: headers.ce_type ?? null,
    conversationId: record.key?.toString() ?? null,
    failureClass: "poison",
    code: outcome.code,
    message: outcome.reason,
    attempts: 1,
  };
}

/**
 * Decodes, loads, evolves and writes one batch of one or more partitions. Records below
 * their partition's stored offset are skipped (applied before a crash, a rebalance or a
 * redelivery); a partition whose records start above it is a gap (nothing is written).
 */
async function fold(
  client: pg.PoolClient,
  parts: PartitionRecords[],
  deadLetterAll?: DeadLetterAll,
): Promise<{ results: Map<number, BatchResult>; moved: Set<number>; offsets: PartitionOffsets[] }> {
  const target = parts[0]!.context;
  let deadLetters: DeadLetterRow[] = [];
  let decoded: (PositionedEvent & { record: BatchRecord })[] = [];
  for (const { context, records } of parts)
    for (const record of records) {
      const outcome = decodeRecord(record);
      if (outcome.ok && !deadLetterAll)
        decoded.push({ partition: context.partition, record, offset: record.offset, event: outcome.event });
      else deadLetters.push(deadLetterOf(context.partition, record, outcome, deadLetterAll));
    }
  const { state, storedOffsets } = await loadBatchState(
    client,
    target.topic,
    parts.map((part) => part.context.partition),
    decoded.map((d) => d.event),
  );
  const next = (partition: number) => BigInt(storedOffsets.get(partition) ?? 0);
  decoded = decoded.filter((d) => BigInt(d.offset) >= next(d.partition));
  deadLetters = deadLetters.filter((d) => BigInt(d.offset) >= next(d.partition));
  const results = new Map<number, BatchResult>();
  const offsets: PartitionOffsets[] = [];
  for (const { context, records } of parts) {
    const result: BatchResult = emptyResult();
    results.set(context.partition, result);
    const stored = storedOffsets.get(context.partition) ?? null;
    const todo = records.filter((r) => BigInt(r.offset) >= next(context.partition));
    result.skipped = records.length - todo.length;
    if (todo.length === 0) continue;
    // Never apply across a gap: what lies between was never applied (see OffsetGapError).
    const first = todo[0]!.offset;
    if (BigInt(first) > next(context.partition) && context.acceptGap && !context.acceptGap(first, stored))
      throw new OffsetGapError(context.topic, context.partition, next(context.partition).toString(), first);
    const last = todo[todo.length - 1]!.offset;
    result.range = { from: first, to: last };
    result.handled = todo.length;
    offsets.push({ partition: context.partition, first, last, expected: stored });
  }
  if (offsets.length === 0) return { results, moved: new Set(), offsets };

  const changes = evolve(state, decoded);
  const byOffset = new Map(decoded.map((d) => [`${d.partition}:${d.offset}`, d.record]));
  for (const refusal of changes.refusals)
    deadLetters.push({
      partition: refusal.partition,
      offset: refusal.offset,
      record: byOffset.get(`${refusal.partition}:${refusal.offset}`)!,
      eventId: refusal.event.id,
      eventType: refusal.event.type,
      conversationId: refusal.event.conversationId,
      failureClass: "business",
      code: refusal.code,
      message: refusal.message,
      attempts: 1,
    });
  countChanges(results, changes, deadLetters);
  const partitionOf = (conversationId: string) => state.conversations.get(conversationId)!.partition;
  const moved = await writeBatch(client, target, changes, deadLetters, offsets, partitionOf);
  return { results, moved, offsets };
}

/** Adds what `evolve` decided to each partition's result. */
function countChanges(
  results: Map<number, BatchResult>,
  changes: Changes,
  deadLetters: DeadLetterRow[],
): void {
  for (const row of changes.eventLog) {
    const result = results.get(row.partition)!;
    result.applied[row.event.type] = (result.applied[row.event.type] ?? 0) + 1;
    result.eventTimes.push(row.event.time);
  }
  for (const d of deadLetters) results.get(d.partition)!.deadLettered[d.failureClass]++;
  for (const [partition, count] of changes.duplicatesBy) results.get(partition)!.duplicates += count;
  for (const [partition, noops] of changes.noopsBy) {
    const result = results.get(partition)!;
    for (const [reason, n] of Object.entries(noops)) result.noops[reason] = (result.noops[reason] ?? 0) + n;
  }
}
