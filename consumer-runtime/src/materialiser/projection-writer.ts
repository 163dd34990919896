/**
 * Writes what `evolve` decided, with the offsets of the batch's partitions, in ONE
 * statement of data-modifying CTEs: one set-based `INSERT/UPDATE … FROM ROWS FROM
 * (unnest(…), …)` per table (not one per event; JSON columns as one JSON array, see
 * `SqlParams.unnest`), guarded by the offsets. `guard` moves a partition's `next_offset`
 * only if it is still what the loader saw (taking the row lock); every row carries its
 * partition and is written only if the guard moved that partition; one NOTIFY per moved
 * partition is selected from the guard. A single statement is atomic, so a crash leaves
 * each partition's rows with its offset or neither; a concurrent writer of a partition
 * makes the guard skip it (its rows are not written) and the caller retries it.
 */
import { createHash } from "node:crypto";
import { ChatBusError, type RawRecord } from "@chatbus/producer-sdk";
import type pg from "pg";
import { storable } from "../dead-letters/storable-text.ts";
import type { BatchRecord, DeadLetterClass } from "./apply-batch.ts";
import { eventsChannel, eventsNotification } from "./events-channel.ts";
import type { Changes } from "./evolve.ts";
import { SqlParams } from "./sql-params.ts";

/** A dead letter written in the batch's statement. */
export interface DeadLetterRow {
  partition: number;
  offset: string;
  record: BatchRecord;
  eventId: string | null;
  eventType: string | null;
  conversationId: string | null;
  failureClass: DeadLetterClass;
  code: string;
  message: string;
  attempts: number;
}

/** Another writer moved the partition's offset since the load: retry the batch (nothing was written). */
export class OffsetMovedError extends ChatBusError<"CHATBUS_OFFSET_MOVED"> {
  constructor(topic: string, partition: number, expected: string) {
    super(
      "CHATBUS_OFFSET_MOVED",
      `the stored offset of ${topic}/${partition} is no longer ${expected}: another materialiser applied this partition meanwhile; the batch is retried and skips what it applied.`,
      { retryable: true },
    );
  }
}

/** The record's headers as strings. */
export function headersAsJson(headers: RawRecord["headers"]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, raw] of Object.entries(headers ?? {})) {
    const value = Array.isArray(raw) ? raw[0] : raw;
    if (value !== undefined) out[name] = value.toString();
  }
  return out;
}

/**
 * Named (prepared) statements skip parsing and analysis on every batch; the statement's
 * text depends only on which tables the batch touches, so there are few.
 * PostgreSQL re-resolves the names after a rebuild's table switch.
 */
function statementName(text: string): string {
  return `chatbus_materialiser_${createHash("sha1").update(text).digest("hex").slice(0, 16)}`;
}

const iso = (d: Date | null) => (d === null ? null : d.toISOString());

/** A row is written only if the guard moved its partition's offset. */
const guarded = "x.partition IN (SELECT partition FROM guard)";

/** Where the batch is written: the log it comes from and its dead letters' subscription. */
export interface WriteTarget {
  topic: string;
  /** Schema of the projection (for the NOTIFY channel). */
  schema: string;
  subscription: string;
}

/** One partition's share of a batch: its records `first`..`last` (inclusive). */
export interface PartitionOffsets {
  partition: number;
  first: string;
  last: string;
  /** The stored next offset the loader saw; null when the partition had no row. */
  expected: string | null;
}

/** The partition of every conversation the changes touch (evolve checked that its events are in it). */
export type PartitionOf = (conversationId: string) => number;

/** One CTE per table with rows; each row is written only if the guard moved its partition. */
function tableWrites(
  p: SqlParams,
  target: WriteTarget,
  changes: Changes,
  deadLetters: DeadLetterRow[],
  partitionOf: PartitionOf,
): string[] {
  const ctes: string[] = [];
  const fresh = changes.conversations.filter((c) => c.isNew);
  if (fresh.length > 0)
    ctes.push(`INSERT INTO conversations (conversation_id, kind, title, created_by, created_at, created_event_id,
                                        partition, last_seq, last_message_at, last_activity_at)
       SELECT id, kind, title, created_by, created_at, created_event_id, partition, last_seq, last_message_at,
              last_activity_at
         FROM ${p.unnest([
           [fresh.map((c) => c.partition), "int"],
           [fresh.map((c) => c.id), "text"],
           [fresh.map((c) => c.kind), "text"],
           [fresh.map((c) => c.title), "text"],
           [fresh.map((c) => c.createdBy), "text"],
           [fresh.map((c) => c.createdAt.toISOString()), "timestamptz"],
           [fresh.map((c) => c.createdEventId), "text"],
           [fresh.map((c) => c.lastSeq), "bigint"],
           [fresh.map((c) => iso(c.lastMessageAt)), "timestamptz"],
           [fresh.map((c) => c.lastActivityAt.toISOString()), "timestamptz"],
         ])} AS x(partition, id, kind, title, created_by, created_at, created_event_id, last_seq, last_message_at,
                last_activity_at)
        WHERE ${guarded}`);
  const changed = changes.conversations.filter((c) => !c.isNew);
  if (changed.length > 0)
    ctes.push(`UPDATE conversations c SET last_seq = x.last_seq, last_message_at = x.last_message_at,
                                  last_activity_at = x.last_activity_at
         FROM ${p.unnest([
           [changed.map((c) => c.partition), "int"],
           [changed.map((c) => c.id), "text"],
           [changed.map((c) => c.lastSeq), "bigint"],
           [changed.map((c) => iso(c.lastMessageAt)), "timestamptz"],
           [changed.map((c) => c.lastActivityAt.toISOString()), "timestamptz"],
         ])} AS x(partition, id, last_seq, last_message_at, last_activity_at)
        WHERE c.conversation_id = x.id AND ${guarded}`);
  ctes.push(...memberWrites(p, changes, partitionOf));
  ctes.push(...messageWrites(p, changes, partitionOf));
  const rs = changes.receipts;
  if (rs.length > 0)
    ctes.push(`INSERT INTO receipts (conversation_id, user_id, kind, up_to_seq, event_id, receipt_at)
       SELECT conversation_id, user_id, kind, up_to_seq, event_id, receipt_at FROM ${p.unnest([
         [rs.map((r) => partitionOf(r.conversationId)), "int"],
         [rs.map((r) => r.conversationId), "text"],
         [rs.map((r) => r.userId), "text"],
         [rs.map((r) => r.kind), "text"],
         [rs.map((r) => r.upToSeq), "bigint"],
         [rs.map((r) => r.eventId), "text"],
         [rs.map((r) => r.at.toISOString()), "timestamptz"],
       ])} AS x(partition, conversation_id, user_id, kind, up_to_seq, event_id, receipt_at) WHERE ${guarded}
       ON CONFLICT (conversation_id, user_id, kind) DO UPDATE SET
         up_to_seq = excluded.up_to_seq, event_id = excluded.event_id, receipt_at = excluded.receipt_at`);
  const ds = changes.duplicates;
  if (ds.length > 0)
    ctes.push(`INSERT INTO duplicate_messages (partition, "offset", event_id, conversation_id, sender_id, client_msg_id,
                                       reason, original_event_id, original_seq, sent_at)
       SELECT * FROM ${p.unnest([
         [ds.map((d) => d.partition), "int"],
         [ds.map((d) => d.offset), "bigint"],
         [ds.map((d) => d.event.id), "text"],
         [ds.map((d) => d.event.conversationId), "text"],
         [ds.map((d) => d.event.data.senderId), "text"],
         [ds.map((d) => d.event.data.clientMsgId ?? null), "text"],
         [ds.map((d) => d.reason), "text"],
         [ds.map((d) => d.original.eventId), "text"],
         [ds.map((d) => d.original.seq), "bigint"],
         [ds.map((d) => d.event.time.toISOString()), "timestamptz"],
       ])} AS x(partition, "offset", event_id, conversation_id, sender_id, client_msg_id, reason, original_event_id,
                original_seq, sent_at)
        WHERE ${guarded}`);
  const log = changes.eventLog;
  if (log.length > 0)
    ctes.push(`INSERT INTO event_log (partition, "offset", conversation_id, event_id, type, seq, payload, event_time,
                              materialised_at)
       SELECT partition, "offset", conversation_id, event_id, type, seq, payload::jsonb, event_time, now()
         FROM ${p.unnest([
           [log.map((e) => e.partition), "int"],
           [log.map((e) => e.offset), "bigint"],
           [log.map((e) => e.event.conversationId), "text"],
           [log.map((e) => e.event.id), "text"],
           [log.map((e) => e.event.type), "text"],
           [log.map((e) => e.seq), "bigint"],
           // A message's content is stored once, in messages; readers join it back.
           [
             log.map((e) =>
               // An edit of a message recalled in this batch keeps no text.
               e.event.type === "chat.message.sent" || e.scrub
                 ? { ...e.event.data, content: undefined }
                 : e.event.data,
             ),
             "json",
           ],
           [log.map((e) => e.event.time.toISOString()), "timestamptz"],
         ])} AS x(partition, "offset", conversation_id, event_id, type, seq, payload, event_time)
        WHERE ${guarded}`);
  const recalled = changes.recalled.filter((g) => !g.isNew);
  if (recalled.length > 0)
    // After a recall, the texts of the message's earlier edits leave the event log too
    // (SSE resume reads it). Edits of this batch are written without text (scrub above).
    ctes.push(`UPDATE event_log e SET payload = e.payload - 'content'
        FROM ${p.unnest([
          [recalled.map((g) => partitionOf(g.conversationId)), "int"],
          [recalled.map((g) => g.conversationId), "text"],
          [recalled.map((g) => g.eventId), "text"],
        ])} AS x(partition, conversation_id, message_id)
       WHERE e.conversation_id = x.conversation_id AND e.type = 'chat.message.edited'
         AND e.payload->>'messageId' = x.message_id AND e.payload ? 'content' AND ${guarded}`);
  if (deadLetters.length > 0) ctes.push(deadLetterWrite(p, target, deadLetters));
  return ctes;
}

function memberWrites(p: SqlParams, changes: Changes, partitionOf: PartitionOf): string[] {
  const ctes: string[] = [];
  const columns = (list: Changes["members"]): [unknown[], string][] => [
    [list.map((m) => partitionOf(m.conversationId)), "int"],
    [list.map((m) => m.conversationId), "text"],
    [list.map((m) => m.userId), "text"],
    [list.map((m) => m.role), "text"],
    [list.map((m) => m.joinedAt.toISOString()), "timestamptz"],
    [list.map((m) => m.joinedOffset), "bigint"],
    [list.map((m) => m.joinedSeq), "bigint"],
    [list.map((m) => iso(m.leftAt)), "timestamptz"],
    [list.map((m) => m.leftOffset), "bigint"],
    [list.map((m) => m.leftSeq), "bigint"],
    [list.map((m) => m.lastDeliveredSeq), "bigint"],
    [list.map((m) => m.lastReadSeq), "bigint"],
    [list.map((m) => m.ownAfterRead), "int"],
  ];
  const joined = changes.members.filter((m) => m.isNew);
  if (joined.length > 0)
    ctes.push(`INSERT INTO members (conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at,
                            left_offset, left_seq, last_delivered_seq, last_read_seq, own_after_read)
       SELECT conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at, left_offset, left_seq,
              last_delivered_seq, last_read_seq, own_after_read
         FROM ${p.unnest(columns(joined))}
           AS x(partition, conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at, left_offset,
                left_seq, last_delivered_seq, last_read_seq, own_after_read)
        WHERE ${guarded}`);
  const updated = changes.members.filter((m) => !m.isNew);
  if (updated.length > 0)
    // A plain UPDATE (not an upsert): cheaper, and HOT when no indexed column changes.
    ctes.push(`UPDATE members m SET role = x.role, joined_at = x.joined_at, joined_offset = x.joined_offset,
              joined_seq = x.joined_seq, left_at = x.left_at, left_offset = x.left_offset, left_seq = x.left_seq,
              last_delivered_seq = x.last_delivered_seq, last_read_seq = x.last_read_seq,
              own_after_read = x.own_after_read + CASE WHEN x.db_up_to > x.read_from THEN (
                SELECT count(*) FROM messages g
                 WHERE g.conversation_id = m.conversation_id AND g.seq > x.read_from AND g.seq <= x.db_up_to
                   AND g.sender_id = m.user_id) ELSE 0 END
         FROM ${p.unnest([
           ...columns(updated),
           [updated.map((m) => m.readFrom), "bigint"],
           [updated.map((m) => m.dbUpTo), "bigint"],
         ])}
           AS x(partition, conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at, left_offset,
                left_seq, last_delivered_seq, last_read_seq, own_after_read, read_from, db_up_to)
        WHERE m.conversation_id = x.conversation_id AND m.user_id = x.user_id AND ${guarded}`);
  return ctes;
}

function messageWrites(p: SqlParams, changes: Changes, partitionOf: PartitionOf): string[] {
  const ctes: string[] = [];
  const fresh = changes.messages.filter((g) => g.isNew);
  if (fresh.length > 0)
    ctes.push(`INSERT INTO messages (conversation_id, seq, event_id, sender_id, client_msg_id, content, priority, sent_at,
                             materialised_at, edited_at, edit_count, recalled_at, recalled_by, partition, "offset")
       SELECT conversation_id, seq, event_id, sender_id, client_msg_id, content::jsonb, priority, sent_at,
              now(), edited_at, edit_count, recalled_at, recalled_by, partition, "offset"
         FROM ${p.unnest([
           [fresh.map((g) => partitionOf(g.conversationId)), "int"],
           [fresh.map((g) => g.conversationId), "text"],
           [fresh.map((g) => g.seq), "bigint"],
           [fresh.map((g) => g.eventId), "text"],
           [fresh.map((g) => g.senderId), "text"],
           [fresh.map((g) => g.clientMsgId), "text"],
           [fresh.map((g) => g.content), "json"],
           [fresh.map((g) => g.priority), "text"],
           [fresh.map((g) => g.sentAt.toISOString()), "timestamptz"],
           [fresh.map((g) => iso(g.editedAt)), "timestamptz"],
           [fresh.map((g) => g.editCount), "int"],
           [fresh.map((g) => iso(g.recalledAt)), "timestamptz"],
           [fresh.map((g) => g.recalledBy), "text"],
           [fresh.map((g) => g.offset), "bigint"],
         ])}
           AS x(partition, conversation_id, seq, event_id, sender_id, client_msg_id, content, priority, sent_at,
                edited_at, edit_count, recalled_at, recalled_by, "offset")
        WHERE ${guarded}`);
  const edited = changes.messages.filter((g) => !g.isNew);
  if (edited.length > 0)
    ctes.push(`UPDATE messages g SET content = x.content::jsonb, edited_at = x.edited_at, edit_count = x.edit_count,
                             recalled_at = x.recalled_at, recalled_by = x.recalled_by
         FROM ${p.unnest([
           [edited.map((g) => partitionOf(g.conversationId)), "int"],
           [edited.map((g) => g.eventId), "text"],
           [edited.map((g) => g.content), "json"],
           [edited.map((g) => iso(g.editedAt)), "timestamptz"],
           [edited.map((g) => g.editCount), "int"],
           [edited.map((g) => iso(g.recalledAt)), "timestamptz"],
           [edited.map((g) => g.recalledBy), "text"],
         ])} AS x(partition, event_id, content, edited_at, edit_count, recalled_at, recalled_by)
        WHERE g.event_id = x.event_id AND ${guarded}`);
  return ctes;
}

function deadLetterWrite(p: SqlParams, target: WriteTarget, dl: DeadLetterRow[]): string {
  // Written in the batch's statement so that a dead letter and the offset move together.
  return `INSERT INTO dead_letters (subscription, topic, partition, "offset", record_key, headers, value, event_id,
                                 event_type, conversation_id, failure_class, error_code, error_message, attempts,
                                 first_failed_at, last_failed_at)
       SELECT ${p.add(target.subscription)}, ${p.add(target.topic)}, partition, "offset", record_key,
              headers::jsonb, decode(value, 'base64'), event_id, event_type, conversation_id, failure_class,
              error_code, error_message, attempts, now(), now()
         FROM ${p.unnest([
           [dl.map((d) => d.partition), "int"],
           [dl.map((d) => d.offset), "bigint"],
           [
             dl.map((d) =>
               d.record.key === null || d.record.key === undefined ? null : storable(d.record.key.toString()),
             ),
             "text",
           ],
           [dl.map((d) => storable(JSON.stringify(headersAsJson(d.record.headers)))), "text"],
           [
             dl.map((d) =>
               d.record.value === null || d.record.value === undefined
                 ? null
                 : Buffer.from(d.record.value).toString("base64"),
             ),
             "text",
           ],
           [dl.map((d) => d.eventId && storable(d.eventId)), "text"],
           [dl.map((d) => d.eventType && storable(d.eventType)), "text"],
           [dl.map((d) => d.conversationId && storable(d.conversationId)), "text"],
           [dl.map((d) => d.failureClass), "text"],
           [dl.map((d) => storable(d.code)), "text"],
           [dl.map((d) => storable(d.message)), "text"],
           [dl.map((d) => d.attempts), "int"],
         ])}
           AS x(partition, "offset", record_key, headers, value, event_id, event_type, conversation_id, failure_class,
                error_code, error_message, attempts)
        WHERE ${guarded}
       ON CONFLICT (subscription, topic, partition, "offset") DO NOTHING`;
}

/** Conversations whose membership the batch changes in `partition`: the API's membership cache drops them. */
function* membershipChanges(changes: Changes, partition: number): Iterable<string> {
  for (const row of changes.eventLog) {
    const type = row.event.type;
    if (
      row.partition === partition &&
      (type === "chat.conversation.created" || type === "chat.member.joined" || type === "chat.member.left")
    )
      yield row.event.conversationId;
  }
}

/**
 * Writes the batch's changes and dead letters with each partition's offset (`last` + 1)
 * where the stored offset is still `expected`; returns the partitions it moved (the
 * others' rows were not written: another writer moved them meanwhile).
 */
export async function writeBatch(
  client: pg.PoolClient,
  target: WriteTarget,
  changes: Changes,
  deadLetters: DeadLetterRow[],
  parts: PartitionOffsets[],
  partitionOf: PartitionOf,
): Promise<Set<number>> {
  const p = new SqlParams();
  // Partitions in ascending order, so that two writers of the same partitions lock them
  // in the same order. The UPDATE takes the row lock, so a concurrent writer of a
  // partition waits and then finds the offset moved; a partition without a row is
  // created (a concurrent creator makes the insert do nothing).
  const sorted = [...parts].sort((a, b) => a.partition - b.partition);
  const topic = p.add(target.topic);
  const offsets = p.unnest([
    [sorted.map((o) => o.partition), "int"],
    [sorted.map((o) => (BigInt(o.last) + 1n).toString()), "bigint"],
    [sorted.map((o) => o.expected), "bigint"],
  ]);
  const guard = `moved AS (
    UPDATE projection_offsets o SET next_offset = x.next_offset, updated_at = now()
      FROM ${offsets} AS x(partition, next_offset, expected)
     WHERE o.topic = ${topic} AND o.partition = x.partition AND o.next_offset = x.expected
    RETURNING o.partition),
  created AS (
    INSERT INTO projection_offsets (topic, partition, next_offset)
    SELECT ${topic}, partition, next_offset FROM ${offsets} AS x(partition, next_offset, expected)
     WHERE x.expected IS NULL
    ON CONFLICT (topic, partition) DO NOTHING RETURNING partition),
  guard AS (SELECT partition FROM moved UNION ALL SELECT partition FROM created)`;
  const ctes = tableWrites(p, target, changes, deadLetters, partitionOf).map((sql, i) => `w${i} AS (${sql})`);
  const notifications = p.unnest([
    [sorted.map((o) => o.partition), "int"],
    [
      sorted.map((o) =>
        eventsNotification(o.partition, o.first, o.last, membershipChanges(changes, o.partition)),
      ),
      "text",
    ],
  ]);
  // Data-modifying CTEs run once each whether referenced or not; the NOTIFY is delivered at commit.
  const text = `WITH ${[guard, ...ctes].join(",\n")}
    SELECT g.partition, pg_notify(${p.add(eventsChannel(target.schema))}, n.payload)
      FROM guard g JOIN ${notifications} AS n(partition, payload) ON n.partition = g.partition`;
  const done = await client.query<{ partition: number }>({
    name: statementName(text),
    text,
    values: p.values,
  });
  return new Set(done.rows.map((r) => r.partition));
}
