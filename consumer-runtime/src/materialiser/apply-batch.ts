/**
 * Applies one partition's batch of records to the projection atomically with the
 * partition's `projection_offsets.next_offset`, in two round trips:
 *
 * 1. one statement loads the stored offset and every row the batch touches (as JSON);
 *    records below the offset are skipped (applied before a crash, a rebalance or a
 *    redelivery);
 * 2. the events are folded in memory in log order (business rules, sequence numbers,
 *    unread counts);
 * 3. ONE statement of data-modifying CTEs writes the final state with one set-based
 *    `INSERT/UPDATE … FROM unnest(…)` per table (not one per event), guarded by the
 *    offset: `guard` moves `next_offset` only if it still is what step 1 saw (taking
 *    the row lock), every other CTE writes only if the guard did, and the NOTIFY is
 *    selected from the guard. A single statement is atomic, so a crash leaves the
 *    batch with its offset or neither; a concurrent writer of the same partition makes
 *    the guard match nothing (OffsetMovedError) and the batch is retried.
 *
 * Kafka commits are only a hint of where to fetch from.
 */

import { createHash } from "node:crypto";
import { type ChatEvent, decodeRecord, type EventData, type RawRecord } from "@chatbus/producer-sdk";
import type pg from "pg";
import { eventsChannel } from "./events-channel.ts";

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
   * The live materialiser refuses a gap unless it has just sought back to the stored
   * offset and Kafka still delivers nothing in between (transaction markers,
   * retention, a projection created after the log start).
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

interface ConversationState {
  id: string;
  kind: string;
  title: string | null;
  createdBy: string;
  createdAt: Date;
  createdEventId: string;
  lastSeq: number;
  /** last_seq as stored before this batch: messages above it are the batch's own. */
  loadedLastSeq: number;
  lastMessageAt: Date | null;
  lastActivityAt: Date;
  /** The Kafka partition that holds the conversation (one conversation, one partition). */
  partition: number;
  isNew: boolean;
  dirty: boolean;
}

interface MemberState {
  conversationId: string;
  userId: string;
  role: string;
  joinedAt: Date;
  joinedOffset: string;
  joinedSeq: number;
  leftAt: Date | null;
  leftOffset: string | null;
  lastDeliveredSeq: number;
  lastReadSeq: number;
  unreadCount: number;
  /** No row yet (first join of this user in this conversation). */
  isNew: boolean;
  dirty: boolean;
  /**
   * After a read receipt in this batch: messages of others already stored with
   * readFrom < seq <= dbUpTo are counted by SQL and added to `unreadCount` (which then
   * holds the batch's own messages after the receipt's position). dbUpTo 0: no count.
   */
  readFrom: number;
  dbUpTo: number;
}

interface MessageState {
  conversationId: string;
  seq: number;
  eventId: string;
  senderId: string;
  clientMsgId: string | null;
  content: unknown;
  priority: string;
  sentAt: Date;
  editedAt: Date | null;
  editCount: number;
  recalledAt: Date | null;
  recalledBy: string | null;
  offset: string;
  isNew: boolean;
  dirty: boolean;
}

interface DeadLetterRow {
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

/** A business rule the event broke; it is dead-lettered with this code and message. */
class RuleBroken {
  constructor(
    readonly code: string,
    readonly message: string,
  ) {}
}

const memberKey = (conversationId: string, userId: string) => `${conversationId}\u0000${userId}`;
const clientKey = (conversationId: string, senderId: string, clientMsgId: string) =>
  `${conversationId}\u0000${senderId}\u0000${clientMsgId}`;

function headersAsJson(headers: RawRecord["headers"]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, raw] of Object.entries(headers ?? {})) {
    const value = Array.isArray(raw) ? raw[0] : raw;
    if (value !== undefined) out[name] = value.toString();
  }
  return out;
}

/**
 * Named (prepared) statements skip parsing and analysis on every batch; the write
 * statement's text depends only on which tables the batch touches, so there are few.
 * PostgreSQL re-resolves the names after a rebuild's table switch.
 */
function statementName(text: string): string {
  return `chatbus_materialiser_${createHash("sha1").update(text).digest("hex").slice(0, 16)}`;
}

/**
 * PostgreSQL text and jsonb cannot hold U+0000 (in JSON, the escape `\\u0000`): a dead
 * letter's descriptive columns replace it with U+FFFD so that the dead letter itself can
 * always be stored; the record's value is kept byte for byte (bytea).
 */
const storable = (text: string) => text.replaceAll("\u0000", "\ufffd").replaceAll("\\u0000", "\\ufffd");

const iso = (d: Date | null) => (d === null ? null : d.toISOString());

/** A result that applied nothing. */
export const emptyResult = (): BatchResult => ({
  handled: 0,
  skipped: 0,
  applied: {},
  duplicates: 0,
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
 * was written; the consumer seeks back to `stored`.
 */
export class OffsetGapError extends Error {
  readonly code = "CHATBUS_OFFSET_GAP";
  constructor(
    readonly topic: string,
    readonly partition: number,
    /** The stored next offset ("0" when the partition has no row yet). */
    readonly stored: string,
    readonly first: string,
  ) {
    super(
      `batch of ${topic}/${partition} starts at offset ${first} but the projection's stored offset is ${stored}: records ${stored}..${BigInt(first) - 1n} were never applied; seeking back to ${stored}.`,
    );
    this.name = "OffsetGapError";
  }
}

/** Another writer moved the partition's offset since the load: retry the batch (nothing was written). */
export class OffsetMovedError extends Error {
  readonly code = "CHATBUS_OFFSET_MOVED";
  readonly retryable = true;
  constructor(topic: string, partition: number, expected: string) {
    super(
      `the stored offset of ${topic}/${partition} is no longer ${expected}: another materialiser applied this partition meanwhile; the batch is retried and skips what it applied.`,
    );
    this.name = "OffsetMovedError";
  }
}

async function fold(
  client: pg.PoolClient,
  context: ApplyContext,
  records: BatchRecord[],
  result: BatchResult,
  deadLetterAll?: DeadLetterAll,
): Promise<void> {
  let deadLetters: DeadLetterRow[] = [];
  let decoded: { record: BatchRecord; event: ChatEvent }[] = [];
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
      decoded.push({ record, event: outcome.event });
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

  // Load what the batch touches.
  const conversationIds = [...new Set(decoded.map((d) => d.event.conversationId))];
  const conversations = new Map<string, ConversationState>();
  const members = new Map<string, MemberState>();
  const membersOf = new Map<string, MemberState[]>();
  const messages = new Map<string, MessageState>();
  const byClientMsgId = new Map<string, MessageState>();
  const newMessagesOf = new Map<string, MessageState[]>();
  const targetIds: string[] = [];
  const clientConv: string[] = [];
  const clientSender: string[] = [];
  const clientIds: string[] = [];
  for (const { event } of decoded) {
    if (event.type === "chat.message.edited" || event.type === "chat.message.recalled") {
      targetIds.push(event.data.messageId);
    } else if (event.type === "chat.message.sent") targetIds.push(event.id);
    if (event.type === "chat.message.sent" && event.data.clientMsgId) {
      clientConv.push(event.conversationId);
      clientSender.push(event.data.senderId);
      clientIds.push(event.data.clientMsgId);
    }
  }
  // Event ids applied before (the same record produced twice lands at another offset).
  const seen = new Set<string>();
  let nextOffset = 0n;
  let stored: string | null = null;
  {
    // One round trip for everything the fold needs to know (JSON keeps it one row).
    const { rows } = await client.query<{
      conversations: Record<string, unknown>[];
      members: Record<string, unknown>[];
      messages: Record<string, unknown>[];
      seen: string[];
      next_offset: string | null;
    }>({
      name: "chatbus_materialiser_load",
      text: `SELECT
         (SELECT coalesce(json_agg(c), '[]') FROM (
            SELECT conversation_id, kind, title, created_by, created_at, created_event_id, last_seq,
                   last_message_at, last_activity_at, partition
              FROM conversations WHERE conversation_id = ANY($1::text[])) c) AS conversations,
         (SELECT coalesce(json_agg(m), '[]') FROM (
            SELECT conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at, left_offset,
                   last_delivered_seq, last_read_seq, unread_count
              FROM members WHERE conversation_id = ANY($1::text[])) m) AS members,
         (SELECT coalesce(json_agg(g), '[]') FROM (
            SELECT conversation_id, seq, event_id, sender_id, client_msg_id, content, priority, sent_at,
                   edited_at, edit_count, recalled_at, recalled_by, "offset"
              FROM messages WHERE event_id = ANY($2::text[])
            UNION
            SELECT g.conversation_id, g.seq, g.event_id, g.sender_id, g.client_msg_id, g.content, g.priority,
                   g.sent_at, g.edited_at, g.edit_count, g.recalled_at, g.recalled_by, g."offset"
              FROM unnest($3::text[], $4::text[], $5::text[]) AS k(conversation_id, sender_id, client_msg_id)
              JOIN messages g ON g.conversation_id = k.conversation_id AND g.sender_id = k.sender_id
                             AND g.client_msg_id = k.client_msg_id) g) AS messages,
         (SELECT coalesce(json_agg(event_id), '[]') FROM event_log WHERE event_id = ANY($6::text[])) AS seen,
         (SELECT next_offset FROM projection_offsets WHERE topic = $7 AND partition = $8) AS next_offset`,
      values: [
        conversationIds,
        targetIds,
        clientConv,
        clientSender,
        clientIds,
        decoded.map((d) => d.event.id),
        context.topic,
        context.partition,
      ],
    });
    const loaded = rows[0]!;
    const date = (v: unknown) => (v === null || v === undefined ? null : new Date(v as string));
    for (const r of loaded.conversations) {
      conversations.set(r.conversation_id as string, {
        id: r.conversation_id as string,
        kind: r.kind as string,
        title: r.title as string | null,
        createdBy: r.created_by as string,
        createdAt: date(r.created_at)!,
        createdEventId: r.created_event_id as string,
        lastSeq: Number(r.last_seq),
        loadedLastSeq: Number(r.last_seq),
        lastMessageAt: date(r.last_message_at),
        lastActivityAt: date(r.last_activity_at)!,
        partition: Number(r.partition),
        isNew: false,
        dirty: false,
      });
    }
    for (const r of loaded.members) {
      const state: MemberState = {
        conversationId: r.conversation_id as string,
        userId: r.user_id as string,
        role: r.role as string,
        joinedAt: date(r.joined_at)!,
        joinedOffset: String(r.joined_offset),
        joinedSeq: Number(r.joined_seq),
        leftAt: date(r.left_at),
        leftOffset: r.left_offset === null ? null : String(r.left_offset),
        lastDeliveredSeq: Number(r.last_delivered_seq),
        lastReadSeq: Number(r.last_read_seq),
        unreadCount: Number(r.unread_count),
        isNew: false,
        dirty: false,
        readFrom: 0,
        dbUpTo: 0,
      };
      members.set(memberKey(state.conversationId, state.userId), state);
      const list = membersOf.get(state.conversationId);
      if (list) list.push(state);
      else membersOf.set(state.conversationId, [state]);
    }
    for (const r of loaded.messages) {
      const state: MessageState = {
        conversationId: r.conversation_id as string,
        seq: Number(r.seq),
        eventId: r.event_id as string,
        senderId: r.sender_id as string,
        clientMsgId: r.client_msg_id as string | null,
        content: r.content,
        priority: r.priority as string,
        sentAt: date(r.sent_at)!,
        editedAt: date(r.edited_at),
        editCount: Number(r.edit_count),
        recalledAt: date(r.recalled_at),
        recalledBy: r.recalled_by as string | null,
        offset: String(r.offset),
        isNew: false,
        dirty: false,
      };
      messages.set(state.eventId, state);
      if (state.clientMsgId)
        byClientMsgId.set(clientKey(state.conversationId, state.senderId, state.clientMsgId), state);
    }
    for (const id of loaded.seen) seen.add(id);
    nextOffset = BigInt(loaded.next_offset ?? 0);
    stored = loaded.next_offset === null ? null : String(loaded.next_offset);
  }
  // Records below the stored offset were applied before (a crash, rebalance or redelivery).
  const expected = nextOffset.toString();
  decoded = decoded.filter((d) => BigInt(d.record.offset) >= nextOffset);
  deadLetters = deadLetters.filter((d) => BigInt(d.offset) >= nextOffset);
  const todo = records.filter((r) => BigInt(r.offset) >= nextOffset);
  result.skipped = records.length - todo.length;
  if (todo.length === 0) return;
  // Never apply across a gap: what lies between was never applied (see OffsetGapError).
  const first = todo[0]!.offset;
  if (BigInt(first) > nextOffset && context.acceptGap && !context.acceptGap(first, stored))
    throw new OffsetGapError(context.topic, context.partition, nextOffset.toString(), first);
  const last = todo[todo.length - 1]!.offset;
  result.range = { from: todo[0]!.offset, to: last };
  result.handled = todo.length;

  // Fold in log order.
  const eventLog: {
    offset: string;
    event: ChatEvent;
    seq: number | null;
  }[] = [];
  const receipts = new Map<
    string,
    { conversationId: string; userId: string; kind: string; upToSeq: number; eventId: string; at: Date }
  >();
  const duplicates: {
    offset: string;
    event: ChatEvent<"chat.message.sent">;
    original: MessageState;
    reason: "event_id" | "client_msg_id";
  }[] = [];

  const activeMember = (conversationId: string, userId: string) => {
    const m = members.get(memberKey(conversationId, userId));
    return m && m.leftAt === null ? m : undefined;
  };
  const needConversation = (event: ChatEvent) => {
    const c = conversations.get(event.conversationId);
    if (!c)
      throw new RuleBroken(
        "CHATBUS_CONVERSATION_NOT_FOUND",
        `${event.type} for conversation "${event.conversationId}", which does not exist (no chat.conversation.created before it in the log).`,
      );
    if (c.partition !== context.partition) throw wrongPartition(event, c);
    return c;
  };
  // Two partition writers of one conversation would overwrite each other's rows.
  const wrongPartition = (event: ChatEvent, c: ConversationState) =>
    new RuleBroken(
      "CHATBUS_WRONG_PARTITION",
      `${event.type} for conversation "${c.id}" arrived in partition ${context.partition}, but the conversation lives in partition ${c.partition} (its first event was stored there): a conversation's events must all be in one partition (a changed partition count or a producer with a stale one?).`,
    );
  const needMember = (event: ChatEvent, userId: string, action: string) => {
    const m = activeMember(event.conversationId, userId);
    if (!m)
      throw new RuleBroken(
        "CHATBUS_NOT_A_MEMBER",
        `only members ${action}: "${userId}" is not a member of conversation "${event.conversationId}".`,
      );
    return m;
  };
  const needMessage = (event: ChatEvent, messageId: string) => {
    const g = messages.get(messageId);
    if (!g || g.conversationId !== event.conversationId)
      throw new RuleBroken(
        "CHATBUS_MESSAGE_NOT_FOUND",
        `${event.type} names message ${messageId}, which does not exist in conversation "${event.conversationId}".`,
      );
    return g;
  };
  const join = (
    c: ConversationState,
    userId: string,
    role: string,
    at: Date,
    offset: string,
  ): MemberState => {
    const key = memberKey(c.id, userId);
    const previous = members.get(key);
    const m: MemberState = {
      conversationId: c.id,
      userId,
      role,
      joinedAt: at,
      joinedOffset: offset,
      joinedSeq: c.lastSeq,
      leftAt: null,
      leftOffset: null,
      lastDeliveredSeq: previous?.lastDeliveredSeq ?? 0,
      lastReadSeq: previous?.lastReadSeq ?? 0,
      unreadCount: 0,
      isNew: previous ? previous.isNew : true,
      dirty: true,
      readFrom: 0,
      dbUpTo: 0,
    };
    members.set(key, m);
    const list = membersOf.get(c.id) ?? [];
    membersOf.set(c.id, previous ? list.map((x) => (x === previous ? m : x)) : [...list, m]);
    return m;
  };

  for (const { record, event } of decoded) {
    if (seen.has(event.id)) {
      result.duplicates++;
      const original = event.type === "chat.message.sent" ? messages.get(event.id) : undefined;
      if (original)
        duplicates.push({
          offset: record.offset,
          event: event as ChatEvent<"chat.message.sent">,
          original,
          reason: "event_id",
        });
      continue;
    }
    try {
      let seq: number | null = null;
      const touch = (c: ConversationState) => {
        if (event.time > c.lastActivityAt) c.lastActivityAt = event.time;
        c.dirty = true;
      };
      switch (event.type) {
        case "chat.conversation.created": {
          const existing = conversations.get(event.conversationId);
          if (existing && existing.partition !== context.partition) throw wrongPartition(event, existing);
          if (existing)
            throw new RuleBroken(
              "CHATBUS_CONVERSATION_EXISTS",
              `conversation "${event.conversationId}" already exists; a second chat.conversation.created is ignored.`,
            );
          const data = event.data as EventData<"chat.conversation.created">;
          const c: ConversationState = {
            id: event.conversationId,
            kind: data.kind,
            title: data.title ?? null,
            createdBy: data.createdBy,
            createdAt: event.time,
            createdEventId: event.id,
            lastSeq: 0,
            loadedLastSeq: 0,
            lastMessageAt: null,
            lastActivityAt: event.time,
            partition: context.partition,
            isNew: true,
            dirty: true,
          };
          conversations.set(c.id, c);
          for (const userId of data.members)
            join(c, userId, userId === data.createdBy ? "owner" : "member", event.time, record.offset);
          break;
        }
        case "chat.member.joined": {
          const c = needConversation(event);
          if (activeMember(c.id, event.data.userId))
            throw new RuleBroken(
              "CHATBUS_ALREADY_A_MEMBER",
              `"${event.data.userId}" is already a member of conversation "${c.id}"; a member joins once.`,
            );
          join(c, event.data.userId, event.data.role ?? "member", event.time, record.offset);
          touch(c);
          break;
        }
        case "chat.member.left": {
          const c = needConversation(event);
          const m = needMember(event, event.data.userId, "leave");
          m.leftAt = event.time;
          m.leftOffset = record.offset;
          m.dirty = true;
          touch(c);
          break;
        }
        case "chat.message.sent": {
          const c = needConversation(event);
          needMember(event, event.data.senderId, "send");
          const cmid = event.data.clientMsgId;
          const original = cmid ? byClientMsgId.get(clientKey(c.id, event.data.senderId, cmid)) : undefined;
          if (original) {
            duplicates.push({ offset: record.offset, event, original, reason: "client_msg_id" });
            result.duplicates++;
            continue;
          }
          c.lastSeq += 1;
          seq = c.lastSeq;
          const g: MessageState = {
            conversationId: c.id,
            seq,
            eventId: event.id,
            senderId: event.data.senderId,
            clientMsgId: cmid ?? null,
            content: event.data.content,
            priority: event.data.priority ?? "normal",
            sentAt: event.time,
            editedAt: null,
            editCount: 0,
            recalledAt: null,
            recalledBy: null,
            offset: record.offset,
            isNew: true,
            dirty: true,
          };
          messages.set(g.eventId, g);
          const fresh = newMessagesOf.get(c.id);
          if (fresh) fresh.push(g);
          else newMessagesOf.set(c.id, [g]);
          if (cmid) byClientMsgId.set(clientKey(c.id, g.senderId, cmid), g);
          if (c.lastMessageAt === null || event.time > c.lastMessageAt) c.lastMessageAt = event.time;
          for (const m of membersOf.get(c.id) ?? []) {
            if (m.leftAt === null && m.userId !== g.senderId) {
              m.unreadCount += 1;
              m.dirty = true;
            }
          }
          touch(c);
          break;
        }
        case "chat.message.edited":
        case "chat.message.recalled": {
          const c = needConversation(event);
          const g = needMessage(event, event.data.messageId);
          const actor = event.type === "chat.message.edited" ? event.data.editorId : event.data.recalledBy;
          const verb = event.type === "chat.message.edited" ? "edits" : "recalls";
          if (actor !== g.senderId)
            throw new RuleBroken(
              "CHATBUS_NOT_THE_SENDER",
              `only the sender ${verb} a message: "${actor}" is not the sender ("${g.senderId}") of message ${g.eventId}.`,
            );
          if (g.recalledAt !== null)
            throw new RuleBroken(
              "CHATBUS_MESSAGE_RECALLED",
              `message ${g.eventId} was recalled; it can no longer be edited or recalled.`,
            );
          if (event.type === "chat.message.edited") {
            g.content = event.data.content;
            g.editedAt = event.time;
            g.editCount += 1;
          } else {
            g.recalledAt = event.time;
            g.recalledBy = actor;
          }
          g.dirty = true;
          seq = g.seq;
          touch(c);
          break;
        }
        case "chat.receipt.delivered":
        case "chat.receipt.read": {
          const c = needConversation(event);
          const m = needMember(event, event.data.userId, "send receipts");
          // A receipt beyond the newest message means "everything so far".
          const upTo = Math.min(event.data.upToSeq, c.lastSeq);
          const kind = event.type === "chat.receipt.read" ? "read" : "delivered";
          if (kind === "read" && upTo > m.lastReadSeq) {
            m.lastReadSeq = upTo;
            // Unread from scratch: stored messages by SQL, the batch's own here.
            m.readFrom = Math.max(upTo, m.joinedSeq);
            m.dbUpTo = m.readFrom < c.loadedLastSeq ? c.loadedLastSeq : 0;
            const from = Math.max(m.readFrom, c.loadedLastSeq);
            m.unreadCount = (newMessagesOf.get(c.id) ?? []).filter(
              (g) => g.seq > from && g.senderId !== m.userId,
            ).length;
          }
          m.lastDeliveredSeq = Math.max(m.lastDeliveredSeq, upTo, m.lastReadSeq);
          m.dirty = true;
          const key = `${memberKey(c.id, m.userId)}\u0000${kind}`;
          const up = kind === "read" ? m.lastReadSeq : m.lastDeliveredSeq;
          receipts.set(key, {
            conversationId: c.id,
            userId: m.userId,
            kind,
            upToSeq: up,
            eventId: event.id,
            at: event.time,
          });
          seq = event.data.upToSeq;
          touch(c);
          break;
        }
      }
      eventLog.push({ offset: record.offset, event, seq });
      seen.add(event.id);
      result.applied[event.type] = (result.applied[event.type] ?? 0) + 1;
      result.eventTimes.push(event.time);
    } catch (error) {
      if (!(error instanceof RuleBroken)) throw error;
      deadLetters.push({
        offset: record.offset,
        record,
        eventId: event.id,
        eventType: event.type,
        conversationId: event.conversationId,
        failureClass: "business",
        code: error.code,
        message: error.message,
        attempts: 1,
      });
    }
  }
  for (const d of deadLetters) result.deadLettered[d.failureClass]++;
  await write(
    client,
    context,
    {
      conversations: [...conversations.values()].filter((c) => c.dirty),
      members: [...members.values()].filter((m) => m.dirty),
      messages: [...messages.values()].filter((g) => g.dirty),
      receipts: [...receipts.values()],
      duplicates,
      eventLog,
      deadLetters,
    },
    {
      last,
      expected,
      notify: JSON.stringify({ partition: context.partition, from: todo[0]!.offset, to: last }),
    },
  );
}

async function write(
  client: pg.PoolClient,
  context: ApplyContext,
  rows: {
    conversations: ConversationState[];
    members: MemberState[];
    messages: MessageState[];
    receipts: {
      conversationId: string;
      userId: string;
      kind: string;
      upToSeq: number;
      eventId: string;
      at: Date;
    }[];
    duplicates: {
      offset: string;
      event: ChatEvent<"chat.message.sent">;
      original: MessageState;
      reason: "event_id" | "client_msg_id";
    }[];
    eventLog: { offset: string; event: ChatEvent; seq: number | null }[];
    deadLetters: DeadLetterRow[];
  },
  tailInfo: { last: string; notify: string; expected: string },
): Promise<void> {
  const p = context.partition;
  const parts: { sql: string; params: unknown[] }[] = [];
  const add = (sql: string, params: unknown[]) => parts.push({ sql, params });
  const fresh = rows.conversations.filter((c) => c.isNew);
  if (fresh.length > 0) {
    add(
      `INSERT INTO conversations (conversation_id, kind, title, created_by, created_at, created_event_id, partition,
                                  last_seq, last_message_at, last_activity_at)
       SELECT id, kind, title, created_by, created_at, created_event_id, $8, last_seq, last_message_at, last_activity_at
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::bigint[],
                     $9::timestamptz[], $10::timestamptz[])
           AS x(id, kind, title, created_by, created_at, created_event_id, last_seq, last_message_at, last_activity_at)`,
      [
        fresh.map((c) => c.id),
        fresh.map((c) => c.kind),
        fresh.map((c) => c.title),
        fresh.map((c) => c.createdBy),
        fresh.map((c) => c.createdAt.toISOString()),
        fresh.map((c) => c.createdEventId),
        fresh.map((c) => c.lastSeq),
        p,
        fresh.map((c) => iso(c.lastMessageAt)),
        fresh.map((c) => c.lastActivityAt.toISOString()),
      ],
    );
  }
  const changed = rows.conversations.filter((c) => !c.isNew);
  if (changed.length > 0) {
    // One statement for every conversation the batch touched (the per-conversation fold).
    add(
      `UPDATE conversations c SET last_seq = x.last_seq, last_message_at = x.last_message_at,
                                  last_activity_at = x.last_activity_at
         FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[])
           AS x(id, last_seq, last_message_at, last_activity_at)
        WHERE c.conversation_id = x.id`,
      [
        changed.map((c) => c.id),
        changed.map((c) => c.lastSeq),
        changed.map((c) => iso(c.lastMessageAt)),
        changed.map((c) => c.lastActivityAt.toISOString()),
      ],
    );
  }
  const ms = rows.members;
  const memberColumns = (list: MemberState[]) => [
    list.map((m) => m.conversationId),
    list.map((m) => m.userId),
    list.map((m) => m.role),
    list.map((m) => m.joinedAt.toISOString()),
    list.map((m) => m.joinedOffset),
    list.map((m) => m.joinedSeq),
    list.map((m) => iso(m.leftAt)),
    list.map((m) => m.leftOffset),
    list.map((m) => m.lastDeliveredSeq),
    list.map((m) => m.lastReadSeq),
    list.map((m) => m.unreadCount),
  ];
  const joined = ms.filter((m) => m.isNew);
  if (joined.length > 0) {
    add(
      `INSERT INTO members (conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at, left_offset,
                            last_delivered_seq, last_read_seq, unread_count)
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::bigint[],
                            $7::timestamptz[], $8::bigint[], $9::bigint[], $10::bigint[], $11::int[])`,
      memberColumns(joined),
    );
  }
  const updated = ms.filter((m) => !m.isNew);
  if (updated.length > 0) {
    // A plain UPDATE (not an upsert): cheaper, and HOT when no indexed column changes.
    add(
      `UPDATE members m SET role = x.role, joined_at = x.joined_at, joined_offset = x.joined_offset,
              joined_seq = x.joined_seq, left_at = x.left_at, left_offset = x.left_offset,
              last_delivered_seq = x.last_delivered_seq, last_read_seq = x.last_read_seq,
              unread_count = x.unread_count + CASE WHEN x.db_up_to > x.read_from THEN (
                SELECT count(*) FROM messages g
                 WHERE g.conversation_id = m.conversation_id AND g.seq > x.read_from AND g.seq <= x.db_up_to
                   AND g.sender_id <> m.user_id) ELSE 0 END
         FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::bigint[],
                     $7::timestamptz[], $8::bigint[], $9::bigint[], $10::bigint[], $11::int[], $12::bigint[], $13::bigint[])
           AS x(conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at, left_offset,
                last_delivered_seq, last_read_seq, unread_count, read_from, db_up_to)
        WHERE m.conversation_id = x.conversation_id AND m.user_id = x.user_id`,
      [...memberColumns(updated), updated.map((m) => m.readFrom), updated.map((m) => m.dbUpTo)],
    );
  }
  const newMessages = rows.messages.filter((g) => g.isNew);
  if (newMessages.length > 0) {
    add(
      `INSERT INTO messages (conversation_id, seq, event_id, sender_id, client_msg_id, content, priority, sent_at,
                             materialised_at, edited_at, edit_count, recalled_at, recalled_by, partition, "offset")
       SELECT conversation_id, seq, event_id, sender_id, client_msg_id, content::jsonb, priority, sent_at,
              now(), edited_at, edit_count, recalled_at, recalled_by, $13, "offset"
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::timestamptz[], $9::timestamptz[], $10::int[], $11::timestamptz[], $12::text[], $14::bigint[])
           AS x(conversation_id, seq, event_id, sender_id, client_msg_id, content, priority, sent_at,
                edited_at, edit_count, recalled_at, recalled_by, "offset")`,
      [
        newMessages.map((g) => g.conversationId),
        newMessages.map((g) => g.seq),
        newMessages.map((g) => g.eventId),
        newMessages.map((g) => g.senderId),
        newMessages.map((g) => g.clientMsgId),
        newMessages.map((g) => JSON.stringify(g.content)),
        newMessages.map((g) => g.priority),
        newMessages.map((g) => g.sentAt.toISOString()),
        newMessages.map((g) => iso(g.editedAt)),
        newMessages.map((g) => g.editCount),
        newMessages.map((g) => iso(g.recalledAt)),
        newMessages.map((g) => g.recalledBy),
        p,
        newMessages.map((g) => g.offset),
      ],
    );
  }
  const edited = rows.messages.filter((g) => !g.isNew);
  if (edited.length > 0) {
    add(
      `UPDATE messages g SET content = x.content::jsonb, edited_at = x.edited_at, edit_count = x.edit_count,
                             recalled_at = x.recalled_at, recalled_by = x.recalled_by
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int[], $5::timestamptz[], $6::text[])
           AS x(event_id, content, edited_at, edit_count, recalled_at, recalled_by)
        WHERE g.event_id = x.event_id`,
      [
        edited.map((g) => g.eventId),
        edited.map((g) => JSON.stringify(g.content)),
        edited.map((g) => iso(g.editedAt)),
        edited.map((g) => g.editCount),
        edited.map((g) => iso(g.recalledAt)),
        edited.map((g) => g.recalledBy),
      ],
    );
  }
  const rs = rows.receipts;
  if (rs.length > 0) {
    add(
      `INSERT INTO receipts (conversation_id, user_id, kind, up_to_seq, event_id, receipt_at)
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::timestamptz[])
       ON CONFLICT (conversation_id, user_id, kind) DO UPDATE SET
         up_to_seq = excluded.up_to_seq, event_id = excluded.event_id, receipt_at = excluded.receipt_at`,
      [
        rs.map((r) => r.conversationId),
        rs.map((r) => r.userId),
        rs.map((r) => r.kind),
        rs.map((r) => r.upToSeq),
        rs.map((r) => r.eventId),
        rs.map((r) => r.at.toISOString()),
      ],
    );
  }
  const ds = rows.duplicates;
  if (ds.length > 0) {
    add(
      `INSERT INTO duplicate_messages (partition, "offset", event_id, conversation_id, sender_id, client_msg_id,
                                       reason, original_event_id, original_seq, sent_at)
       SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $10::text[], $7::text[],
                                $8::bigint[], $9::timestamptz[])`,
      [
        p,
        ds.map((d) => d.offset),
        ds.map((d) => d.event.id),
        ds.map((d) => d.event.conversationId),
        ds.map((d) => d.event.data.senderId),
        ds.map((d) => d.event.data.clientMsgId ?? null),
        ds.map((d) => d.original.eventId),
        ds.map((d) => d.original.seq),
        ds.map((d) => d.event.time.toISOString()),
        ds.map((d) => d.reason),
      ],
    );
  }
  const log = rows.eventLog;
  if (log.length > 0) {
    add(
      `INSERT INTO event_log (partition, "offset", conversation_id, event_id, type, seq, payload, event_time, materialised_at)
       SELECT $1, "offset", conversation_id, event_id, type, seq, payload::jsonb, event_time, now()
         FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::timestamptz[])
           AS x("offset", conversation_id, event_id, type, seq, payload, event_time)`,
      [
        p,
        log.map((e) => e.offset),
        log.map((e) => e.event.conversationId),
        log.map((e) => e.event.id),
        log.map((e) => e.event.type),
        log.map((e) => e.seq),
        // A message's content is stored once, in messages; readers join it back.
        log.map((e) =>
          JSON.stringify(
            e.event.type === "chat.message.sent" ? { ...e.event.data, content: undefined } : e.event.data,
          ),
        ),
        log.map((e) => e.event.time.toISOString()),
      ],
    );
  }
  const dl = rows.deadLetters;
  if (dl.length > 0) {
    // Written in the batch's transaction so that a dead letter and the offset move together.
    add(
      `INSERT INTO dead_letters (subscription, topic, partition, "offset", record_key, headers, value, event_id,
                                 event_type, conversation_id, failure_class, error_code, error_message, attempts,
                                 first_failed_at, last_failed_at)
       SELECT $1, $2, $3, "offset", record_key, headers::jsonb, decode(value, 'base64'), event_id, event_type,
              conversation_id, failure_class, error_code, error_message, attempts, now(), now()
         FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                     $11::text[], $12::text[], $13::text[], $14::int[])
           AS x("offset", record_key, headers, value, event_id, event_type, conversation_id, failure_class,
                error_code, error_message, attempts)
       ON CONFLICT (subscription, topic, partition, "offset") DO NOTHING`,
      [
        context.subscription,
        context.topic,
        p,
        dl.map((d) => d.offset),
        dl.map((d) =>
          d.record.key === null || d.record.key === undefined ? null : storable(d.record.key.toString()),
        ),
        dl.map((d) => storable(JSON.stringify(headersAsJson(d.record.headers)))),
        dl.map((d) =>
          d.record.value === null || d.record.value === undefined
            ? null
            : Buffer.from(d.record.value).toString("base64"),
        ),
        dl.map((d) => d.eventId && storable(d.eventId)),
        dl.map((d) => d.eventType && storable(d.eventType)),
        dl.map((d) => d.conversationId && storable(d.conversationId)),
        dl.map((d) => d.failureClass),
        dl.map((d) => storable(d.code)),
        dl.map((d) => storable(d.message)),
        dl.map((d) => d.attempts),
      ],
    );
  }
  // The guard moves the offset only if it is still where the load saw it (it takes the
  // row lock, so a concurrent writer of the partition waits and then finds it moved);
  // every other write runs only if the guard did. One statement: atomic on its own.
  const params: unknown[] = [context.topic, p, (BigInt(tailInfo.last) + 1n).toString(), tailInfo.expected];
  const guard = `guard AS (
    INSERT INTO projection_offsets AS o (topic, partition, next_offset) VALUES ($1, $2, $3)
    ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()
    WHERE o.next_offset = $4 RETURNING 1)`;
  const ctes = parts.map((part, i) => {
    const base = params.length;
    params.push(...part.params);
    let sql = part.sql.replace(/\$(\d+)/g, (_, n) => `$${base + Number(n)}`);
    const onConflict = sql.indexOf("ON CONFLICT");
    if (onConflict >= 0)
      sql = `${sql.slice(0, onConflict)} WHERE EXISTS (SELECT 1 FROM guard) ${sql.slice(onConflict)}`;
    else if (sql.trimStart().startsWith("UPDATE")) sql = `${sql} AND EXISTS (SELECT 1 FROM guard)`;
    else sql = `${sql} WHERE EXISTS (SELECT 1 FROM guard)`;
    return `w${i} AS (${sql})`;
  });
  params.push(eventsChannel(context.schema), tailInfo.notify);
  // Data-modifying CTEs run once each whether referenced or not; the NOTIFY is delivered at commit.
  const text = `WITH ${[guard, ...ctes].join(",\n")} SELECT pg_notify($${params.length - 1}, $${params.length}) FROM guard`;
  const done = await client.query({ name: statementName(text), text, values: params });
  if (done.rowCount !== 1) throw new OffsetMovedError(context.topic, p, tailInfo.expected);
}
