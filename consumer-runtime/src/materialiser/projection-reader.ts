/**
 * Read functions over the projection for the API: conversations, members, history,
 * inboxes and the event log behind SSE resume. Every query is unqualified, so the
 * pool's `search_path` picks the projection (and a rebuild's switch is seen at once).
 */
import type { MessageContent } from "@chatbus/producer-sdk";
import type pg from "pg";
import type {
  ConversationView,
  EventCursor,
  HistoryOptions,
  InboxEntry,
  LoggedEvent,
  MemberView,
  MessageView,
} from "./types.ts";

/** A member's receipt positions: what a message's delivery status is computed from. */
export interface MemberPosition {
  userId: string;
  lastDeliveredSeq: number;
  lastReadSeq: number;
}

/** Offsets `from..to` (inclusive) of one partition: what a NOTIFY names. */
export interface OffsetRange {
  partition: number;
  from: string;
  to: string;
}

/**
 * A message of a history page: its JSON as the API answers it, built by PostgreSQL
 * (`{"id", "seq", "senderId", "clientMsgId", "content", "priority", "sentAt", "editedAt",
 * "editCount", "recalledAt", "recalledBy"}`, without `delivery`), byte for byte what
 * `JSON.stringify` wrote of those fields: times as `Date.prototype.toISOString` writes
 * them, content compact. pg no longer parses a dozen fields and the content of every
 * row for the API to serialise them again (the largest costs of a page, issue 16).
 * Its seq and sender, which the delivery status is computed from, ride along.
 */
export interface HistoryMessage {
  seq: number;
  senderId: string;
  json: string;
}

/** A page of history with the positions of the conversation's current members, read in one query. */
export interface HistoryPage {
  messages: HistoryMessage[];
  /** Current members' positions; empty when the page is (no message needs them). */
  positions: MemberPosition[];
}

/** The read side of the projection; see `createProjectionReader`. */
export interface ProjectionReader {
  /** The conversation, or null when it does not exist (yet). */
  conversation(id: string): Promise<ConversationView | null>;
  /** True when the user is a current member (joined and not left). */
  isMember(conversationId: string, userId: string): Promise<boolean>;
  /** Current members, ordered by user id; `{ includeFormer: true }` adds those who left. */
  members(conversationId: string, options?: { includeFormer?: boolean }): Promise<MemberView[]>;
  /** A page of messages in sequence order (see HistoryOptions). */
  history(conversationId: string, options: HistoryOptions): Promise<MessageView[]>;
  /** The same page as `history`, each message as the API's JSON, and the current members' receipt positions, in one query. */
  historyPage(conversationId: string, options: HistoryOptions): Promise<HistoryPage>;
  /** The user's current conversations, newest activity first, with unread counts and last message. */
  inbox(userId: string, options: { limit: number }): Promise<InboxEntry[]>;
  /**
   * Events of the user's conversations after `cursor`, in (partition, offset) order,
   * limited to the span of the user's membership (from the event that added them to
   * the event that removed them). Returns the events and the cursor advanced past them.
   */
  eventsAfter(
    cursor: EventCursor,
    userId: string,
    limit: number,
  ): Promise<{ events: LoggedEvent[]; cursor: EventCursor }>;
  /**
   * The events with `from <= offset <= to` in each range's partition (the ranges that
   * NOTIFYs name), of every conversation, in (partition, offset) order: the API fans
   * them out to its streams. One query for all ranges, however many partitions.
   */
  eventsInRanges(ranges: readonly OffsetRange[]): Promise<LoggedEvent[]>;
  /** A message by its id (the eventId of its chat.message.sent), or null. */
  messageByEventId(eventId: string): Promise<MessageView | null>;
}

interface ConversationRow {
  conversation_id: string;
  kind: "direct" | "group";
  title: string | null;
  created_by: string;
  created_at: Date;
  partition: number;
  last_seq: string;
  last_message_at: Date | null;
  last_activity_at: Date;
}
interface MemberRow {
  conversation_id: string;
  user_id: string;
  role: string;
  joined_at: Date;
  left_at: Date | null;
  last_delivered_seq: string;
  last_read_seq: string;
  unread_count: string;
}
interface MessageRow {
  conversation_id: string;
  seq: string;
  event_id: string;
  sender_id: string;
  client_msg_id: string | null;
  content: MessageContent;
  priority: "high" | "normal" | "low";
  sent_at: Date;
  materialised_at: Date;
  edited_at: Date | null;
  edit_count: number;
  recalled_at: Date | null;
  recalled_by: string | null;
  partition: number;
  offset: string;
}
interface HistoryRow {
  seq: string;
  sender_id: string;
  json: string;
  /** The content when PostgreSQL could not write it compact (not plain text): `json` has null there. */
  custom: MessageContent | null;
  positions: [string, number, number][] | null;
}
interface EventRow {
  partition: number;
  offset: string;
  conversation_id: string;
  event_id: string;
  type: string;
  seq: string | null;
  payload: Record<string, unknown>;
  event_time: Date;
  materialised_at: Date;
}

const conversationColumns =
  "c.conversation_id, c.kind, c.title, c.created_by, c.created_at, c.partition, c.last_seq, c.last_message_at, c.last_activity_at";
/**
 * A member's unread count, derived (nothing bumps a counter per member per message):
 * messages after greatest(last_read_seq, joined_seq) up to the conversation's last seq
 * (or the seq when they left) number the difference, seqs having no gaps; minus their
 * own among them. See `unreadOf` in evolve.ts. Needs `conversations c` joined.
 */
const unreadExpression =
  "coalesce(m.left_seq, c.last_seq) - greatest(m.last_read_seq, m.joined_seq) - m.own_after_read";
const memberColumns = `m.conversation_id, m.user_id, m.role, m.joined_at, m.left_at, m.last_delivered_seq, m.last_read_seq,
  ${unreadExpression} AS unread_count`;
const messageColumns =
  'g.conversation_id, g.seq, g.event_id, g.sender_id, g.client_msg_id, g.content, g.priority, g.sent_at, g.materialised_at, g.edited_at, g.edit_count, g.recalled_at, g.recalled_by, g.partition, g."offset"';
// A message's content is stored once, in messages: chat.message.sent events get it
// joined back (its current content; null once recalled).
const eventColumns = `e.partition, e."offset", e.conversation_id, e.event_id, e.type, e.seq,
  CASE WHEN e.type = 'chat.message.sent'
       THEN e.payload || jsonb_build_object('content', CASE WHEN s.recalled_at IS NULL THEN s.content END)
       ELSE e.payload END AS payload,
  e.event_time, e.materialised_at`;
const sentJoin = "LEFT JOIN messages s ON e.type = 'chat.message.sent' AND s.event_id = e.event_id";

function toConversation(r: ConversationRow): ConversationView {
  return {
    id: r.conversation_id,
    kind: r.kind,
    title: r.title,
    createdBy: r.created_by,
    createdAt: r.created_at,
    partition: r.partition,
    lastSeq: Number(r.last_seq),
    lastMessageAt: r.last_message_at,
    lastActivityAt: r.last_activity_at,
  };
}
function toMember(r: MemberRow): MemberView {
  return {
    conversationId: r.conversation_id,
    userId: r.user_id,
    role: r.role,
    joinedAt: r.joined_at,
    leftAt: r.left_at,
    lastDeliveredSeq: Number(r.last_delivered_seq),
    lastReadSeq: Number(r.last_read_seq),
    unreadCount: Number(r.unread_count),
  };
}
function toMessage(r: MessageRow): MessageView {
  return {
    conversationId: r.conversation_id,
    seq: Number(r.seq),
    eventId: r.event_id,
    senderId: r.sender_id,
    clientMsgId: r.client_msg_id,
    content: r.recalled_at ? null : r.content,
    priority: r.priority,
    sentAt: r.sent_at,
    materialisedAt: r.materialised_at,
    editedAt: r.edited_at,
    editCount: r.edit_count,
    recalledAt: r.recalled_at,
    recalledBy: r.recalled_by,
    partition: r.partition,
    offset: String(r.offset),
  };
}
function toHistoryMessage(r: HistoryRow): HistoryMessage {
  let json = r.json;
  if (r.custom !== null) {
    // Its key order kept: content is set where the null stands.
    const message = JSON.parse(json) as { content: MessageContent | null };
    message.content = r.custom;
    json = JSON.stringify(message);
  }
  return { seq: Number(r.seq), senderId: r.sender_id, json };
}
/**
 * A timestamptz as `Date.prototype.toISOString` writes it: UTC whatever the session's
 * time zone, milliseconds truncated as pg's Date parsing truncates them (years 0–9999).
 */
function isoText(column: string): string {
  return `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
}
function toEvent(r: EventRow): LoggedEvent {
  return {
    partition: r.partition,
    offset: String(r.offset),
    conversationId: r.conversation_id,
    eventId: r.event_id,
    type: r.type,
    seq: r.seq === null ? null : Number(r.seq),
    payload: r.payload,
    eventTime: r.event_time,
    materialisedAt: r.materialised_at,
  };
}

/**
 * The query of a history page: `after` reads oldest first, otherwise newest first
 * (`newestFirst`; the caller puts the page back in sequence order). `columns` of
 * `messages g`: all of them by default.
 */
function historyQuery(
  conversationId: string,
  options: HistoryOptions,
  columns = messageColumns,
): { text: string; values: unknown[]; newestFirst: boolean } {
  const limit = checkLimit(options.limit, 1000);
  if (options.after !== undefined) {
    return {
      text: `SELECT ${columns} FROM messages g
            WHERE g.conversation_id = $1 AND g.seq > $2 ${options.before !== undefined ? "AND g.seq < $4" : ""}
            ORDER BY g.seq LIMIT $3`,
      values:
        options.before !== undefined
          ? [conversationId, options.after, limit, options.before]
          : [conversationId, options.after, limit],
      newestFirst: false,
    };
  }
  return {
    text: `SELECT ${columns} FROM messages g
          WHERE g.conversation_id = $1 ${options.before !== undefined ? "AND g.seq < $3" : ""}
          ORDER BY g.seq DESC LIMIT $2`,
    values: options.before !== undefined ? [conversationId, limit, options.before] : [conversationId, limit],
    newestFirst: true,
  };
}

/**
 * What a history page reads of a message, and whether its content is plain text (a
 * string `text` and `type: "text"`, nothing else), whose compact JSON PostgreSQL can
 * write: its `jsonb` text has a space after every colon and comma. The CASE keeps `-`
 * away from content that is not an object.
 */
const historyColumns = `g.seq, g.event_id, g.sender_id, g.client_msg_id, g.content, g.priority, g.sent_at,
  g.edited_at, g.edit_count, g.recalled_at, g.recalled_by,
  CASE WHEN jsonb_typeof(g.content -> 'text') = 'string' THEN g.content - 'text' = '{"type": "text"}' ELSE false END AS plain`;

/**
 * A history page: each message's JSON (row_to_json writes it compact, its strings
 * escaped as JSON.stringify escapes them), plain text content written into it, other
 * content apart (`custom`, null in the JSON) for the reader to put in; the members'
 * positions ride on the first row only (an InitPlan, run once): one round trip instead
 * of a second query, without repeating them on every row.
 */
function historyPageQuery(text: string): string {
  return `WITH page AS (${text})
   SELECT page.seq, page.sender_id, row_to_json(msg)::text AS json,
          CASE WHEN page.recalled_at IS NULL AND NOT page.plain THEN page.content END AS custom,
          CASE WHEN page.seq = (SELECT min(seq) FROM page) THEN (
            SELECT coalesce(json_agg(json_build_array(m.user_id, m.last_delivered_seq, m.last_read_seq)), '[]')
              FROM members m WHERE m.conversation_id = $1 AND m.left_at IS NULL) END AS positions
     FROM page CROSS JOIN LATERAL (
       SELECT page.event_id AS id, page.seq, page.sender_id AS "senderId", page.client_msg_id AS "clientMsgId",
              CASE WHEN page.recalled_at IS NULL AND page.plain
                   THEN ('{"text":' || to_json(page.content ->> 'text') || ',"type":"text"}')::json END AS content,
              page.priority, ${isoText("page.sent_at")} AS "sentAt", ${isoText("page.edited_at")} AS "editedAt",
              page.edit_count AS "editCount", ${isoText("page.recalled_at")} AS "recalledAt",
              page.recalled_by AS "recalledBy") msg
    ORDER BY page.seq`;
}

function checkLimit(limit: number, max: number): number {
  if (!Number.isInteger(limit) || limit < 1 || limit > max) {
    throw new RangeError(`limit must be an integer from 1 to ${max}; got ${limit}.`);
  }
  return limit;
}

/**
 * The projection's read functions over `pool` (whose search_path names the schema).
 * Plain queries, except the history page: a named prepared statement, since planning
 * it cost PostgreSQL as much as running it (issue 16). A rebuild's table switch is
 * picked up by it too: moving a table to another schema invalidates the statements
 * that use it, and PostgreSQL analyses them again under the current search_path.
 */
export function createProjectionReader(pool: pg.Pool): ProjectionReader {
  return {
    async conversation(id) {
      const { rows } = await pool.query<ConversationRow>(
        `SELECT ${conversationColumns} FROM conversations c WHERE c.conversation_id = $1`,
        [id],
      );
      return rows[0] ? toConversation(rows[0]) : null;
    },

    async isMember(conversationId, userId) {
      const { rowCount } = await pool.query(
        "SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL",
        [conversationId, userId],
      );
      return (rowCount ?? 0) > 0;
    },

    async members(conversationId, options = {}) {
      const { rows } = await pool.query<MemberRow>(
        `SELECT ${memberColumns} FROM members m JOIN conversations c ON c.conversation_id = m.conversation_id
          WHERE m.conversation_id = $1 ${
            options.includeFormer ? "" : "AND m.left_at IS NULL"
          } ORDER BY m.user_id`,
        [conversationId],
      );
      return rows.map(toMember);
    },

    async history(conversationId, options) {
      const { text, values, newestFirst } = historyQuery(conversationId, options);
      const { rows } = await pool.query<MessageRow>(text, values);
      return (newestFirst ? rows.reverse() : rows).map(toMessage);
    },

    async historyPage(conversationId, options) {
      const { text, values } = historyQuery(conversationId, options, historyColumns);
      const { rows } = await pool.query<HistoryRow>({
        // One statement per shape of the query (after and before given or not).
        name: `chatbus_history_page_${options.after === undefined ? "" : "a"}${options.before === undefined ? "" : "b"}`,
        text: historyPageQuery(text),
        values,
      });
      const positions = (rows[0]?.positions ?? []).map(([userId, lastDeliveredSeq, lastReadSeq]) => ({
        userId,
        lastDeliveredSeq: Number(lastDeliveredSeq),
        lastReadSeq: Number(lastReadSeq),
      }));
      return { messages: rows.map(toHistoryMessage), positions };
    },

    async inbox(userId, options) {
      const limit = checkLimit(options.limit, 1000);
      const { rows } = await pool.query<
        ConversationRow & { member: MemberRow; last_message: MessageRow | null }
      >(
        `SELECT ${conversationColumns}, to_jsonb(m) || jsonb_build_object('unread_count', ${unreadExpression}) AS member,
                to_jsonb(g) AS last_message
           FROM members m
           JOIN conversations c ON c.conversation_id = m.conversation_id
           LEFT JOIN messages g ON g.conversation_id = c.conversation_id AND g.seq = c.last_seq
          WHERE m.user_id = $1 AND m.left_at IS NULL
          ORDER BY c.last_activity_at DESC, c.conversation_id
          LIMIT $2`,
        [userId, limit],
      );
      // to_jsonb turns timestamps into strings; bring them back to Dates.
      const date = (v: unknown) => (v === null || v === undefined ? null : new Date(v as string));
      return rows.map((r) => ({
        conversation: toConversation(r),
        membership: toMember({
          ...r.member,
          joined_at: date(r.member.joined_at)!,
          left_at: date(r.member.left_at),
        }),
        lastMessage: r.last_message
          ? toMessage({
              ...r.last_message,
              sent_at: date(r.last_message.sent_at)!,
              materialised_at: date(r.last_message.materialised_at)!,
              edited_at: date(r.last_message.edited_at),
              recalled_at: date(r.last_message.recalled_at),
            })
          : null,
      }));
    },

    async eventsAfter(cursor, userId, limit) {
      checkLimit(limit, 10_000);
      const partitions = Object.keys(cursor).map(Number);
      const offsets = partitions.map((p) => cursor[p]!);
      const { rows } = await pool.query<EventRow>(
        `SELECT ${eventColumns}
           FROM members m
           JOIN event_log e ON e.conversation_id = m.conversation_id
           ${sentJoin}
           LEFT JOIN unnest($2::int[], $3::bigint[]) AS c(partition, "offset") ON c.partition = e.partition
          WHERE m.user_id = $1
            AND e."offset" > coalesce(c."offset", -1)
            AND e."offset" >= m.joined_offset
            AND (m.left_offset IS NULL OR e."offset" <= m.left_offset)
          ORDER BY e.partition, e."offset"
          LIMIT $4`,
        [userId, partitions, offsets, limit],
      );
      const events = rows.map(toEvent);
      const next: EventCursor = { ...cursor };
      for (const event of events) next[event.partition] = event.offset;
      return { events, cursor: next };
    },

    async eventsInRanges(ranges) {
      if (ranges.length === 0) return [];
      // LATERAL: one index range scan per range, whatever the planner thinks unnest returns.
      const { rows } = await pool.query<EventRow>(
        `SELECT x.* FROM unnest($1::int[], $2::bigint[], $3::bigint[]) AS r(partition, lo, hi)
          CROSS JOIN LATERAL (SELECT ${eventColumns} FROM event_log e ${sentJoin}
            WHERE e.partition = r.partition AND e."offset" BETWEEN r.lo AND r.hi) x
          ORDER BY x.partition, x."offset"`,
        [ranges.map((r) => r.partition), ranges.map((r) => r.from), ranges.map((r) => r.to)],
      );
      return rows.map(toEvent);
    },

    async messageByEventId(eventId) {
      const { rows } = await pool.query<MessageRow>(
        `SELECT ${messageColumns} FROM messages g WHERE g.event_id = $1`,
        [eventId],
      );
      return rows[0] ? toMessage(rows[0]) : null;
    },
  };
}
