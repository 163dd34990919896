/**
 * Loads, in one statement (JSON keeps it one row), the stored offsets of the batch's
 * partitions and everything `evolve` needs for a batch: its conversations, the member
 * rows its rules look at (not every member of a group: see `memberKeys`), the messages
 * its edits and recalls target, the messages its clientMsgIds may repeat, and which of
 * its event ids were applied before.
 */
import type { ChatEvent, ChatEventType } from "@chatbus/producer-sdk";
import type pg from "pg";
import { ProjectionState } from "./evolve.ts";

/** The loaded state and each partition's stored next offset (absent: no row yet). */
export interface Loaded {
  state: ProjectionState;
  storedOffsets: Map<number, string>;
}

type Row = Record<string, unknown>;
const date = (v: unknown) => (v === null || v === undefined ? null : new Date(v as string));

/**
 * The users each event type's rules look up in its conversation. A new event type does
 * not compile until it says which members it needs.
 */
const usersNamed: { [T in ChatEventType]: (event: ChatEvent<T>) => (string | undefined)[] } = {
  "chat.conversation.created": (e) => e.data.members,
  "chat.member.joined": (e) => [e.data.userId, e.data.addedBy],
  "chat.member.left": (e) => [e.data.userId, e.data.removedBy],
  "chat.message.sent": (e) => [e.data.senderId],
  "chat.message.edited": (e) => [e.data.editorId],
  "chat.message.recalled": (e) => [e.data.recalledBy],
  "chat.receipt.delivered": (e) => [e.data.userId],
  "chat.receipt.read": (e) => [e.data.userId],
};

/** Which member rows the batch needs: named (conversation, user) pairs and whole-conversation reads. */
function memberKeys(events: ChatEvent[]) {
  const pairs = new Map<string, [string, string]>();
  const ownersOf = new Set<string>();
  const allOf = new Set<string>();
  for (const event of events) {
    const named = (usersNamed[event.type] as (e: ChatEvent) => (string | undefined)[])(event);
    for (const userId of named)
      if (userId !== undefined)
        pairs.set(`${event.conversationId}\u0000${userId}`, [event.conversationId, userId]);
    // Leaving checks that an owner remains: the active owners (few, a partial index).
    if (event.type === "chat.member.left") ownersOf.add(event.conversationId);
    // A direct conversation created again is a benign repeat only with the same member
    // rows (isSameDirect): all of them, which for a direct one are two or so.
    if (event.type === "chat.conversation.created") allOf.add(event.conversationId);
  }
  const list = [...pairs.values()];
  return {
    conversations: list.map(([c]) => c),
    users: list.map(([, u]) => u),
    ownersOf: [...ownersOf],
    allOf: [...allOf],
  };
}

const memberColumns = `m.conversation_id, m.user_id, m.role, m.joined_at, m.joined_offset, m.joined_seq, m.left_at,
                 m.left_offset, m.left_seq, m.last_delivered_seq, m.last_read_seq, m.own_after_read`;

/** Loads what `events` touch and the stored offsets of `partitions` of `topic`. */
export async function loadBatchState(
  client: pg.PoolClient,
  topic: string,
  partitions: number[],
  events: ChatEvent[],
): Promise<Loaded> {
  const targetIds: string[] = [];
  const clientConv: string[] = [];
  const clientSender: string[] = [];
  const clientIds: string[] = [];
  for (const event of events) {
    if (event.type === "chat.message.edited" || event.type === "chat.message.recalled")
      targetIds.push(event.data.messageId);
    else if (event.type === "chat.message.sent") {
      targetIds.push(event.id);
      if (event.data.clientMsgId) {
        clientConv.push(event.conversationId);
        clientSender.push(event.data.senderId);
        clientIds.push(event.data.clientMsgId);
      }
    }
  }
  const keys = memberKeys(events);
  const { rows } = await client.query<{
    conversations: Row[];
    members: Row[];
    messages: Row[];
    seen: string[];
    offsets: Record<string, string>;
  }>({
    name: "chatbus_materialiser_load",
    // Every lookup is driven by the batch's keys (a LATERAL subquery per key, kept
    // apart by OFFSET 0, is an index lookup whatever the statistics say): with `= ANY`
    // the planner chose sequential scans of event_log and members while their
    // statistics were stale (a fresh projection, a rebuild), which made each batch scan
    // the whole table; planning `= ANY` over hundreds of constants also cost ms per batch.
    // Members: UNION ALL, no sort of the rows: a row found twice (a named owner who is
    // also an active owner) is the same row, and addMember keeps one.
    text: `SELECT
       (SELECT coalesce(json_agg(c), '[]') FROM (
          SELECT c.conversation_id, c.kind, c.title, c.created_by, c.created_at, c.created_event_id, c.last_seq,
                 c.last_message_at, c.last_activity_at, c.partition
            FROM unnest($1::text[]) AS k(id)
            CROSS JOIN LATERAL (SELECT * FROM conversations WHERE conversation_id = k.id OFFSET 0) c) c) AS conversations,
       (SELECT coalesce(json_agg(m), '[]') FROM (
          SELECT ${memberColumns}
            FROM unnest($9::text[], $10::text[]) AS k(conversation_id, user_id)
            CROSS JOIN LATERAL (
              SELECT * FROM members WHERE conversation_id = k.conversation_id AND user_id = k.user_id OFFSET 0) m
          UNION ALL
          SELECT ${memberColumns}
            FROM unnest($11::text[]) AS k(id)
            CROSS JOIN LATERAL (
              SELECT * FROM members
               WHERE conversation_id = k.id AND role = 'owner' AND left_at IS NULL OFFSET 0) m
          UNION ALL
          SELECT ${memberColumns}
            FROM unnest($12::text[]) AS k(id)
            CROSS JOIN LATERAL (
              SELECT * FROM members
               WHERE conversation_id = k.id
                 AND EXISTS (SELECT 1 FROM conversations c WHERE c.conversation_id = k.id AND c.kind = 'direct')
              OFFSET 0) m) m) AS members,
       (SELECT coalesce(json_agg(g), '[]') FROM (
          SELECT g.conversation_id, g.seq, g.event_id, g.sender_id, g.client_msg_id, g.content, g.priority,
                 g.sent_at, g.edited_at, g.edit_count, g.recalled_at, g.recalled_by, g."offset"
            FROM unnest($2::text[]) AS k(id)
            CROSS JOIN LATERAL (SELECT * FROM messages WHERE event_id = k.id OFFSET 0) g
          UNION
          SELECT g.conversation_id, g.seq, g.event_id, g.sender_id, g.client_msg_id, g.content, g.priority,
                 g.sent_at, g.edited_at, g.edit_count, g.recalled_at, g.recalled_by, g."offset"
            FROM unnest($3::text[], $4::text[], $5::text[]) AS k(conversation_id, sender_id, client_msg_id)
            CROSS JOIN LATERAL (
              SELECT * FROM messages
               WHERE conversation_id = k.conversation_id AND sender_id = k.sender_id
                 AND client_msg_id = k.client_msg_id OFFSET 0) g) g) AS messages,
       (SELECT coalesce(json_agg(e.event_id), '[]') FROM unnest($6::text[]) AS k(id)
          CROSS JOIN LATERAL (SELECT event_id FROM event_log WHERE event_id = k.id OFFSET 0) e) AS seen,
       (SELECT coalesce(json_object_agg(partition, next_offset::text), '{}') FROM projection_offsets
         WHERE topic = $7 AND partition = ANY($8::int[])) AS offsets`,
    values: [
      [...new Set(events.map((e) => e.conversationId))],
      targetIds,
      clientConv,
      clientSender,
      clientIds,
      events.map((e) => e.id),
      topic,
      partitions,
      keys.conversations,
      keys.users,
      keys.ownersOf,
      keys.allOf,
    ],
  });
  const loaded = rows[0]!;
  return {
    state: stateOf(loaded),
    storedOffsets: new Map(Object.entries(loaded.offsets).map(([p, next]) => [Number(p), next])),
  };
}

/** The loaded rows as the in-memory state `evolve` works on. */
function stateOf(loaded: {
  conversations: Row[];
  members: Row[];
  messages: Row[];
  seen: string[];
}): ProjectionState {
  const state = new ProjectionState();
  for (const r of loaded.conversations)
    state.addConversation({
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
  for (const r of loaded.members)
    state.addMember({
      conversationId: r.conversation_id as string,
      userId: r.user_id as string,
      role: r.role as string,
      joinedAt: date(r.joined_at)!,
      joinedOffset: String(r.joined_offset),
      joinedSeq: Number(r.joined_seq),
      leftAt: date(r.left_at),
      leftOffset: r.left_offset === null ? null : String(r.left_offset),
      leftSeq: r.left_seq === null ? null : Number(r.left_seq),
      lastDeliveredSeq: Number(r.last_delivered_seq),
      lastReadSeq: Number(r.last_read_seq),
      ownAfterRead: Number(r.own_after_read),
      isNew: false,
      dirty: false,
      readFrom: 0,
      dbUpTo: 0,
    });
  for (const r of loaded.messages)
    state.addMessage({
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
    });
  for (const id of loaded.seen) state.seen.add(id);
  return state;
}
