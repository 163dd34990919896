/**
 * Writes what `evolve` decided, with the partition's offset, in ONE statement of
 * data-modifying CTEs: one set-based `INSERT/UPDATE … FROM ROWS FROM (unnest(…), …)` per
 * table (not one per event; JSON columns as one JSON array, see `SqlParams.unnest`),
 * guarded by the offset. `guard` moves `next_offset` only if it is still what
 * the loader saw (taking the row lock); every other CTE writes only if the guard did; the
 * NOTIFY is selected from the guard. A single statement is atomic, so a crash leaves the
 * batch with its offset or neither; a concurrent writer of the same partition makes the
 * guard match nothing (OffsetMovedError) and the batch is retried.
 */
import { createHash } from "node:crypto";
import { ChatBusError, type RawRecord } from "@chatbus/producer-sdk";
import type pg from "pg";
import { storable } from "../dead-letters/storable-text.ts";
import type { ApplyContext, BatchRecord, DeadLetterClass } from "./apply-batch.ts";
import { eventsChannel, eventsNotification } from "./events-channel.ts";
import type { Changes } from "./evolve.ts";
import { SqlParams } from "./sql-params.ts";

/** A dead letter written in the batch's statement. */
export interface DeadLetterRow {
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

const guarded = "EXISTS (SELECT 1 FROM guard)";

/** One CTE per table with rows; each writes only if the guard moved the offset. */
function tableWrites(
  p: SqlParams,
  context: ApplyContext,
  changes: Changes,
  deadLetters: DeadLetterRow[],
): string[] {
  const ctes: string[] = [];
  const partition = p.add(context.partition, "int");
  const fresh = changes.conversations.filter((c) => c.isNew);
  if (fresh.length > 0)
    ctes.push(`INSERT INTO conversations (conversation_id, kind, title, created_by, created_at, created_event_id,
                                        partition, last_seq, last_message_at, last_activity_at)
       SELECT id, kind, title, created_by, created_at, created_event_id, ${partition}, last_seq, last_message_at,
              last_activity_at
         FROM ${p.unnest([
           [fresh.map((c) => c.id), "text"],
           [fresh.map((c) => c.kind), "text"],
           [fresh.map((c) => c.title), "text"],
           [fresh.map((c) => c.createdBy), "text"],
           [fresh.map((c) => c.createdAt.toISOString()), "timestamptz"],
           [fresh.map((c) => c.createdEventId), "text"],
           [fresh.map((c) => c.lastSeq), "bigint"],
           [fresh.map((c) => iso(c.lastMessageAt)), "timestamptz"],
           [fresh.map((c) => c.lastActivityAt.toISOString()), "timestamptz"],
         ])} AS x(id, kind, title, created_by, created_at, created_event_id, last_seq, last_message_at, last_activity_at)
        WHERE ${guarded}`);
  const changed = changes.conversations.filter((c) => !c.isNew);
  if (changed.length > 0)
    ctes.push(`UPDATE conversations c SET last_seq = x.last_seq, last_message_at = x.last_message_at,
                                  last_activity_at = x.last_activity_at
         FROM ${p.unnest([
           [changed.map((c) => c.id), "text"],
           [changed.map((c) => c.lastSeq), "bigint"],
           [changed.map((c) => iso(c.lastMessageAt)), "timestamptz"],
           [changed.map((c) => c.lastActivityAt.toISOString()), "timestamptz"],
         ])} AS x(id, last_seq, last_message_at, last_activity_at)
        WHERE c.conversation_id = x.id AND ${guarded}`);
  ctes.push(...memberWrites(p, changes));
  ctes.push(...messageWrites(p, changes, partition));
  const rs = changes.receipts;
  if (rs.length > 0)
    ctes.push(`INSERT INTO receipts (conversation_id, user_id, kind, up_to_seq, event_id, receipt_at)
       SELECT * FROM ${p.unnest([
         [rs.map((r) => r.conversationId), "text"],
         [rs.map((r) => r.userId), "text"],
         [rs.map((r) => r.kind), "text"],
         [rs.map((r) => r.upToSeq), "bigint"],
         [rs.map((r) => r.eventId), "text"],
         [rs.map((r) => r.at.toISOString()), "timestamptz"],
       ])} WHERE ${guarded}
       ON CONFLICT (conversation_id, user_id, kind) DO UPDATE SET
         up_to_seq = excluded.up_to_seq, event_id = excluded.event_id, receipt_at = excluded.receipt_at`);
  const ds = changes.duplicates;
  if (ds.length > 0)
    ctes.push(`INSERT INTO duplicate_messages (partition, "offset", event_id, conversation_id, sender_id, client_msg_id,
                                       reason, original_event_id, original_seq, sent_at)
       SELECT ${partition}, * FROM ${p.unnest([
         [ds.map((d) => d.offset), "bigint"],
         [ds.map((d) => d.event.id), "text"],
         [ds.map((d) => d.event.conversationId), "text"],
         [ds.map((d) => d.event.data.senderId), "text"],
         [ds.map((d) => d.event.data.clientMsgId ?? null), "text"],
         [ds.map((d) => d.reason), "text"],
         [ds.map((d) => d.original.eventId), "text"],
         [ds.map((d) => d.original.seq), "bigint"],
         [ds.map((d) => d.event.time.toISOString()), "timestamptz"],
       ])} WHERE ${guarded}`);
  const log = changes.eventLog;
  if (log.length > 0)
    ctes.push(`INSERT INTO event_log (partition, "offset", conversation_id, event_id, type, seq, payload, event_time,
                              materialised_at)
       SELECT ${partition}, "offset", conversation_id, event_id, type, seq, payload::jsonb, event_time, now()
         FROM ${p.unnest([
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
         ])} AS x("offset", conversation_id, event_id, type, seq, payload, event_time)
        WHERE ${guarded}`);
  const recalled = changes.recalled.filter((g) => !g.isNew);
  if (recalled.length > 0)
    // After a recall, the texts of the message's earlier edits leave the event log too
    // (SSE resume reads it). Edits of this batch are written without text (scrub above).
    ctes.push(`UPDATE event_log e SET payload = e.payload - 'content'
        FROM ${p.unnest([
          [recalled.map((g) => g.conversationId), "text"],
          [recalled.map((g) => g.eventId), "text"],
        ])} AS x(conversation_id, message_id)
       WHERE e.conversation_id = x.conversation_id AND e.type = 'chat.message.edited'
         AND e.payload->>'messageId' = x.message_id AND e.payload ? 'content' AND ${guarded}`);
  if (deadLetters.length > 0) ctes.push(deadLetterWrite(p, context, deadLetters, partition));
  return ctes;
}

function memberWrites(p: SqlParams, changes: Changes): string[] {
  const ctes: string[] = [];
  const columns = (list: Changes["members"]): [unknown[], string][] => [
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
       SELECT * FROM ${p.unnest(columns(joined))} WHERE ${guarded}`);
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
           AS x(conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at, left_offset,
                left_seq, last_delivered_seq, last_read_seq, own_after_read, read_from, db_up_to)
        WHERE m.conversation_id = x.conversation_id AND m.user_id = x.user_id AND ${guarded}`);
  return ctes;
}

function messageWrites(p: SqlParams, changes: Changes, partition: string): string[] {
  const ctes: string[] = [];
  const fresh = changes.messages.filter((g) => g.isNew);
  if (fresh.length > 0)
    ctes.push(`INSERT INTO messages (conversation_id, seq, event_id, sender_id, client_msg_id, content, priority, sent_at,
                             materialised_at, edited_at, edit_count, recalled_at, recalled_by, partition, "offset")
       SELECT conversation_id, seq, event_id, sender_id, client_msg_id, content::jsonb, priority, sent_at,
              now(), edited_at, edit_count, recalled_at, recalled_by, ${partition}, "offset"
         FROM ${p.unnest([
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
           AS x(conversation_id, seq, event_id, sender_id, client_msg_id, content, priority, sent_at,
                edited_at, edit_count, recalled_at, recalled_by, "offset")
        WHERE ${guarded}`);
  const edited = changes.messages.filter((g) => !g.isNew);
  if (edited.length > 0)
    ctes.push(`UPDATE messages g SET content = x.content::jsonb, edited_at = x.edited_at, edit_count = x.edit_count,
                             recalled_at = x.recalled_at, recalled_by = x.recalled_by
         FROM ${p.unnest([
           [edited.map((g) => g.eventId), "text"],
           [edited.map((g) => g.content), "json"],
           [edited.map((g) => iso(g.editedAt)), "timestamptz"],
           [edited.map((g) => g.editCount), "int"],
           [edited.map((g) => iso(g.recalledAt)), "timestamptz"],
           [edited.map((g) => g.recalledBy), "text"],
         ])} AS x(event_id, content, edited_at, edit_count, recalled_at, recalled_by)
        WHERE g.event_id = x.event_id AND ${guarded}`);
  return ctes;
}

function deadLetterWrite(
  p: SqlParams,
  context: ApplyContext,
  dl: DeadLetterRow[],
  partition: string,
): string {
  // Written in the batch's statement so that a dead letter and the offset move together.
  return `INSERT INTO dead_letters (subscription, topic, partition, "offset", record_key, headers, value, event_id,
                                 event_type, conversation_id, failure_class, error_code, error_message, attempts,
                                 first_failed_at, last_failed_at)
       SELECT ${p.add(context.subscription)}, ${p.add(context.topic)}, ${partition}, "offset", record_key,
              headers::jsonb, decode(value, 'base64'), event_id, event_type, conversation_id, failure_class,
              error_code, error_message, attempts, now(), now()
         FROM ${p.unnest([
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
           AS x("offset", record_key, headers, value, event_id, event_type, conversation_id, failure_class,
                error_code, error_message, attempts)
        WHERE ${guarded}
       ON CONFLICT (subscription, topic, partition, "offset") DO NOTHING`;
}

/** Conversations whose membership the batch changes: the API's membership cache drops them. */
function* membershipChanges(changes: Changes): Iterable<string> {
  for (const row of changes.eventLog) {
    const type = row.event.type;
    if (type === "chat.conversation.created" || type === "chat.member.joined" || type === "chat.member.left")
      yield row.event.conversationId;
  }
}

/** Writes the batch's changes and dead letters with its offset (`last` + 1), if the offset is still `expected`. */
export async function writeBatch(
  client: pg.PoolClient,
  context: ApplyContext,
  changes: Changes,
  deadLetters: DeadLetterRow[],
  offsets: { first: string; last: string; expected: string },
): Promise<void> {
  const p = new SqlParams();
  // The guard takes the row lock, so a concurrent writer of the partition waits and
  // then finds the offset moved.
  const guard = `guard AS (
    INSERT INTO projection_offsets AS o (topic, partition, next_offset)
    VALUES (${p.add(context.topic)}, ${p.add(context.partition)}, ${p.add((BigInt(offsets.last) + 1n).toString())})
    ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()
    WHERE o.next_offset = ${p.add(offsets.expected)} RETURNING 1)`;
  const ctes = tableWrites(p, context, changes, deadLetters).map((sql, i) => `w${i} AS (${sql})`);
  const notify = eventsNotification(
    context.partition,
    offsets.first,
    offsets.last,
    membershipChanges(changes),
  );
  // Data-modifying CTEs run once each whether referenced or not; the NOTIFY is delivered at commit.
  const text = `WITH ${[guard, ...ctes].join(",\n")}
    SELECT pg_notify(${p.add(eventsChannel(context.schema))}, ${p.add(notify)}) FROM guard`;
  const done = await client.query({ name: statementName(text), text, values: p.values });
  if (done.rowCount !== 1) throw new OffsetMovedError(context.topic, context.partition, offsets.expected);
}
