/**
 * What the projection's readers return. Sequence numbers are JavaScript numbers
 * (a conversation never reaches 2^53 messages); Kafka offsets are decimal strings
 * because they are int64 in Kafka.
 */
import type { MessageContent } from "@chatbus/producer-sdk";

/** A conversation as the projection holds it. */
export interface ConversationView {
  id: string;
  kind: "direct" | "group";
  title: string | null;
  createdBy: string;
  /** `ce_time` of chat.conversation.created. */
  createdAt: Date;
  /** Kafka partition of the conversation (its events' `partition` in SSE cursors). */
  partition: number;
  /** Sequence number of the newest message; 0 when there is none. */
  lastSeq: number;
  lastMessageAt: Date | null;
  /** `ce_time` of the newest applied event of any kind. */
  lastActivityAt: Date;
}

/** A member of a conversation (current or former: `leftAt` is set once they left). */
export interface MemberView {
  conversationId: string;
  userId: string;
  role: string;
  joinedAt: Date;
  leftAt: Date | null;
  lastDeliveredSeq: number;
  lastReadSeq: number;
  /**
   * Messages of other senders after `greatest(lastReadSeq, seq when they joined)`, up to
   * when they left (derived when read, see docs/materialiser.md "Unread counts").
   */
  unreadCount: number;
}

/** A message; its id is the `eventId` of its chat.message.sent. */
export interface MessageView {
  conversationId: string;
  seq: number;
  /** The message id: `ce_id` of the chat.message.sent event. */
  eventId: string;
  senderId: string;
  clientMsgId: string | null;
  /** The latest content; null once the message is recalled. */
  content: MessageContent | null;
  priority: "high" | "normal" | "low";
  /** `ce_time` of chat.message.sent. */
  sentAt: Date;
  /** When the materialiser committed it. */
  materialisedAt: Date;
  editedAt: Date | null;
  editCount: number;
  recalledAt: Date | null;
  recalledBy: string | null;
  partition: number;
  offset: string;
}

/** One conversation of a user's inbox. */
export interface InboxEntry {
  conversation: ConversationView;
  /** The user's own membership (unread count, read position). */
  membership: MemberView;
  /** The newest message, or null when the conversation has none. */
  lastMessage: MessageView | null;
}

/** An applied event from `event_log`, as SSE sends it. */
export interface LoggedEvent {
  partition: number;
  offset: string;
  conversationId: string;
  eventId: string;
  type: string;
  /**
   * chat.message.sent: the new message's seq; edited/recalled: the target message's
   * seq; receipts: `upToSeq`; other types: null.
   */
  seq: number | null;
  /**
   * The event's data as sent (the record value); for chat.message.sent the content is
   * the message's current one (null once recalled), read from messages.
   */
  payload: Record<string, unknown>;
  /** `ce_time`. */
  eventTime: Date;
  materialisedAt: Date;
}

/**
 * Per-partition position of an SSE stream: partition → offset of the last event
 * delivered (inclusive). A partition that is missing means "from the start".
 */
export type EventCursor = Record<number, string>;

/** Options of `history`: `after`/`before` are exclusive sequence numbers. */
export interface HistoryOptions {
  /** Messages with seq > after, oldest first. */
  after?: number;
  /** Messages with seq < before: the `limit` newest of them, returned oldest first. */
  before?: number;
  /** Page size, 1..1000. */
  limit: number;
}
