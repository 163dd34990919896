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
import { Type } from "@sinclair/typebox";

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
