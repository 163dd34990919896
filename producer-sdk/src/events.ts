/**
 * The chat event contract: one TypeBox schema per event type. TypeBox because the
 * same objects are JSON Schema (the API's request validation and OpenAPI document
 * use them unchanged) and compile to fast validators (see validation.ts).
 *
 * A schema's version travels with every record (`ce_dataschema`). Adding an optional
 * field keeps the version; anything a v1 consumer could misread gets a new version
 * and consumers dead-letter versions they do not know.
 */
import { type Static, type TSchema, Type } from "@sinclair/typebox";

/**
 * The largest integer the contract carries: 2^53-1, exact in JavaScript and within
 * PostgreSQL's bigint, so a sequence number can never be a value the projection refuses.
 */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;

/** Ids of conversations, users and client messages: printable, no quotes, bounded. */
const idPattern = "^[A-Za-z0-9][A-Za-z0-9._:@-]*$";

/** A conversation id, also the Kafka record key. */
export const ConversationId = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: idPattern,
  description: "Conversation id; the Kafka record key.",
});
/** A user id. */
export const UserId = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: idPattern,
  description: "User id.",
});
/** The `ce_id` of the `chat.message.sent` event that created a message. */
export const MessageId = Type.String({
  format: "uuid",
  minLength: 36,
  maxLength: 36,
  description: "The eventId of the chat.message.sent event.",
});

export const TextContent = Type.Object(
  {
    type: Type.Literal("text"),
    text: Type.String({ minLength: 1, maxLength: 16_384 }),
  },
  { additionalProperties: false, description: "Plain text." },
);

/**
 * Application-defined content, e.g. a red packet:
 * `{ type: "custom", customType: "red_packet", data: { amount: 888, currency: "CNY", greeting: "恭喜发财" }, description: "[Red packet]" }`.
 * `description` is what clients that do not know `customType` show instead.
 */
export const CustomContent = Type.Object(
  {
    type: Type.Literal("custom"),
    customType: Type.String({ minLength: 1, maxLength: 64, pattern: "^[a-z][a-z0-9_.-]*$" }),
    data: Type.Record(Type.String(), Type.Unknown()),
    description: Type.Optional(Type.String({ maxLength: 256 })),
  },
  { additionalProperties: false, description: "Application-defined content such as a red packet." },
);

export const MessageContent = Type.Union([TextContent, CustomContent]);
export const Priority = Type.Union([Type.Literal("high"), Type.Literal("normal"), Type.Literal("low")], {
  description: "Rate-limit class: over the limit low is shed first, normal is rejected, high passes.",
});
export const Role = Type.Union([Type.Literal("owner"), Type.Literal("admin"), Type.Literal("member")]);
export const ConversationKind = Type.Union([Type.Literal("direct"), Type.Literal("group")]);

const strict = { additionalProperties: false } as const;

/** The data of each event type, without `type`. */
export const eventDataSchemas = {
  "chat.conversation.created": Type.Object(
    {
      kind: ConversationKind,
      title: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
      createdBy: UserId,
      members: Type.Array(UserId, {
        minItems: 1,
        maxItems: 1000,
        uniqueItems: true,
        description: "Initial members, including the creator.",
      }),
    },
    strict,
  ),
  "chat.member.joined": Type.Object(
    { userId: UserId, addedBy: Type.Optional(UserId), role: Type.Optional(Role) },
    strict,
  ),
  "chat.member.left": Type.Object({ userId: UserId, removedBy: Type.Optional(UserId) }, strict),
  "chat.message.sent": Type.Object(
    {
      senderId: UserId,
      content: MessageContent,
      priority: Type.Optional(Priority),
      clientMsgId: Type.Optional(
        Type.String({
          minLength: 1,
          maxLength: 128,
          pattern: idPattern,
          description: "Sender-chosen id that makes retries idempotent.",
        }),
      ),
    },
    strict,
  ),
  "chat.message.edited": Type.Object(
    { messageId: MessageId, editorId: UserId, content: MessageContent },
    strict,
  ),
  "chat.message.recalled": Type.Object({ messageId: MessageId, recalledBy: UserId }, strict),
  "chat.receipt.delivered": Type.Object(
    {
      userId: UserId,
      upToSeq: Type.Integer({
        minimum: 1,
        maximum: MAX_SEQ,
        description: "Every message up to this sequence number.",
      }),
    },
    strict,
  ),
  "chat.receipt.read": Type.Object(
    {
      userId: UserId,
      upToSeq: Type.Integer({
        minimum: 1,
        maximum: MAX_SEQ,
        description: "Every message up to this sequence number.",
      }),
    },
    strict,
  ),
} satisfies Record<string, TSchema>;

/** Every event type, in the order of the spec. */
export type ChatEventType = keyof typeof eventDataSchemas;
export const eventTypes = Object.keys(eventDataSchemas) as ChatEventType[];

/** The current schema version of each event type; bump on incompatible change. */
export const schemaVersions: Record<ChatEventType, number> = {
  "chat.conversation.created": 1,
  "chat.member.joined": 1,
  "chat.member.left": 1,
  "chat.message.sent": 1,
  "chat.message.edited": 1,
  "chat.message.recalled": 1,
  "chat.receipt.delivered": 1,
  "chat.receipt.read": 1,
};

/** The data carried by an event of type T. */
export type EventData<T extends ChatEventType = ChatEventType> = Static<(typeof eventDataSchemas)[T]>;

/** What callers pass to `send`: the type plus that type's data. */
export type ChatEventInput = { [T in ChatEventType]: { type: T } & EventData<T> }[ChatEventType];

/** JSON Schema of `send`'s event argument, for the API and its OpenAPI document. */
export const ChatEventInputSchema = Type.Union(
  eventTypes.map((type) =>
    Type.Composite([Type.Object({ type: Type.Literal(type) }), eventDataSchemas[type]], strict),
  ),
);

export type MessageContent = Static<typeof MessageContent>;
export type Priority = Static<typeof Priority>;

/** A decoded event as handlers and the API see it. */
export type ChatEvent<T extends ChatEventType = ChatEventType> = {
  [K in T]: {
    /** `ce_id`, a UUIDv7: unique, and time-ordered by creation. */
    id: string;
    type: K;
    /** `ce_source`: which service sent it. */
    source: string;
    /** `ce_time`: when the producer created it. */
    time: Date;
    /** The record key. */
    conversationId: string;
    schemaVersion: number;
    data: EventData<K>;
  };
}[T];
/** `direct` (two people) or `group`: sets a conversation's rate limit. */
export type ConversationKind = Static<typeof ConversationKind>;
