/**
 * Request and response schemas shared by the routes, built from the event
 * contract's schemas in `@chatbus/producer-sdk` so that validation and `/docs`
 * describe exactly what the SDK accepts.
 */
import {
  ConversationId,
  eventDataSchemas,
  MAX_SEQ,
  MessageContent,
  MessageId,
  Priority,
  UserId,
} from "@chatbus/producer-sdk";
import { type Static, Type } from "@sinclair/typebox";

const strict = { additionalProperties: false } as const;

/** `{ error: { code, message, field? } }`, the body of every error. */
export const ErrorResponse = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: "Stable CHATBUS_* code." }),
      message: Type.String(),
      field: Type.Optional(Type.String({ description: "The offending field, for 400s." })),
    }),
  },
  { description: "Every error." },
);

/** The errors most routes may answer with. */
export const commonErrors = { 400: ErrorResponse, 401: ErrorResponse, 403: ErrorResponse };

/** Where an accepted event landed in Kafka (202). */
export const Accepted = Type.Object({
  eventId: Type.String({ description: "ce_id of the event (UUIDv7)." }),
  partition: Type.Integer(),
  offset: Type.String({ description: "Kafka offset, a decimal string." }),
});

export const ConversationParams = Type.Object({ id: ConversationId }, strict);

export const SendMessageBody = Type.Object(
  {
    /** Required with a service key (the user it sends for); with a user token, omit or give your own id. */
    senderId: Type.Optional(UserId),
    content: MessageContent,
    priority: Type.Optional(Priority),
    clientMsgId: eventDataSchemas["chat.message.sent"].properties.clientMsgId,
  },
  strict,
);

export const CreateConversationBody = Type.Object(
  {
    kind: eventDataSchemas["chat.conversation.created"].properties.kind,
    title: eventDataSchemas["chat.conversation.created"].properties.title,
    members: Type.Array(UserId, {
      minItems: 1,
      maxItems: 1000,
      uniqueItems: true,
      description: "Members besides the creator (a direct conversation: exactly one other user).",
    }),
    /** Required with a service key; omit with a user token. */
    createdBy: Type.Optional(UserId),
  },
  strict,
);

export const AddMemberBody = Type.Object(
  { userId: UserId, role: eventDataSchemas["chat.member.joined"].properties.role },
  strict,
);

export const MemberParams = Type.Object({ id: ConversationId, userId: UserId }, strict);
export const MessageParams = Type.Object({ id: ConversationId, messageId: MessageId }, strict);
export const EditMessageBody = Type.Object({ content: MessageContent }, strict);
export const ReadBody = Type.Object(
  {
    seq: Type.Integer({
      minimum: 1,
      maximum: MAX_SEQ,
      description: "Every message up to this sequence number is read.",
    }),
  },
  strict,
);

export const HistoryQuery = Type.Object(
  {
    after: Type.Optional(
      Type.Integer({ minimum: 0, maximum: MAX_SEQ, description: "Messages with seq greater than this." }),
    ),
    before: Type.Optional(
      Type.Integer({ minimum: 1, maximum: MAX_SEQ, description: "Messages with seq less than this." }),
    ),
    limit: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: MAX_SEQ,
        description: "Page size, at most CHATBUS_HISTORY_MAX_LIMIT (default 200); more is a 400.",
      }),
    ),
  },
  strict,
);

/** `?limit=` of the inbox. */
export const InboxQuery = Type.Object(
  {
    limit: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: MAX_SEQ,
        description: "Page size, at most CHATBUS_INBOX_MAX_LIMIT (default 1000); more is a 400.",
      }),
    ),
  },
  strict,
);

// ---- read responses: the wire shapes of history, the inbox and conversation details.
// The read routes type their answers with these, and the chat page imports the
// `Static` types (type-only), so a change of shape breaks `tsc` on both sides.

const DeliverySchema = Type.Object({
  status: Type.Union([Type.Literal("sent"), Type.Literal("delivered"), Type.Literal("read")]),
  deliveredTo: Type.Integer(),
  readBy: Type.Integer(),
  recipients: Type.Integer(),
});

/** A message in history, with its delivery state for its sender. */
export const MessageResponse = Type.Object({
  id: Type.String({ description: "ce_id of its chat.message.sent." }),
  seq: Type.Integer(),
  senderId: Type.String(),
  clientMsgId: Type.Union([Type.String(), Type.Null()]),
  content: Type.Union([MessageContent, Type.Null()], { description: "null once recalled." }),
  priority: Priority,
  sentAt: Type.String({ format: "date-time" }),
  editedAt: Type.Union([Type.String({ format: "date-time" }), Type.Null()]),
  editCount: Type.Integer(),
  recalledAt: Type.Union([Type.String({ format: "date-time" }), Type.Null()]),
  recalledBy: Type.Union([Type.String(), Type.Null()]),
  delivery: DeliverySchema,
});
export type MessageResponse = Static<typeof MessageResponse>;

/** `GET /v1/conversations/:id/messages`. */
export const HistoryResponse = Type.Object({
  messages: Type.Array(MessageResponse),
  limit: Type.Integer(),
  nextAfter: Type.Union([Type.Integer(), Type.Null()]),
  prevBefore: Type.Union([Type.Integer(), Type.Null()]),
});
export type HistoryResponse = Static<typeof HistoryResponse>;

/** A member with their read and delivered positions. */
export const MemberResponse = Type.Object({
  userId: Type.String(),
  role: Type.String(),
  joinedAt: Type.String({ format: "date-time" }),
  lastDeliveredSeq: Type.Integer(),
  lastReadSeq: Type.Integer(),
});
export type MemberResponse = Static<typeof MemberResponse>;

/** `GET /v1/conversations/:id`. */
export const ConversationResponse = Type.Object({
  conversation: Type.Union([
    Type.Object({
      id: Type.String(),
      kind: Type.Union([Type.Literal("direct"), Type.Literal("group")]),
      title: Type.Union([Type.String(), Type.Null()]),
      createdBy: Type.String(),
      createdAt: Type.String({ format: "date-time" }),
      partition: Type.Integer(),
      lastSeq: Type.Integer(),
      lastMessageAt: Type.Union([Type.String({ format: "date-time" }), Type.Null()]),
      lastActivityAt: Type.String({ format: "date-time" }),
    }),
    Type.Null(),
  ]),
  members: Type.Array(MemberResponse),
});
export type ConversationResponse = Static<typeof ConversationResponse>;

/** One conversation of `GET /v1/me/conversations`. */
export const InboxItemResponse = Type.Object({
  id: Type.String(),
  kind: Type.Union([Type.Literal("direct"), Type.Literal("group")]),
  title: Type.Union([Type.String(), Type.Null()]),
  lastSeq: Type.Integer(),
  lastActivityAt: Type.String({ format: "date-time" }),
  unreadCount: Type.Integer(),
  lastReadSeq: Type.Integer(),
  lastMessage: Type.Union([
    Type.Object({
      id: Type.String(),
      seq: Type.Integer(),
      senderId: Type.String(),
      content: Type.Union([MessageContent, Type.Null()]),
      sentAt: Type.String({ format: "date-time" }),
    }),
    Type.Null(),
  ]),
});
export type InboxItemResponse = Static<typeof InboxItemResponse>;

/** `GET /v1/me/conversations`. */
export const InboxResponse = Type.Object({ conversations: Type.Array(InboxItemResponse) });
export type InboxResponse = Static<typeof InboxResponse>;
