import type { MemberView, MessageView, ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import { Type } from "@sinclair/typebox";
import type { ApiApp } from "../app.ts";
import { invalidField } from "../errors.ts";
import { actingUser, requireMember } from "./conversations.ts";
import { ConversationParams, commonErrors, HistoryQuery } from "./schemas.ts";

/** Delivery state of a message for its sender, across the other current members. */
export type DeliveryStatus = "sent" | "delivered" | "read";

/**
 * `read` once every other member has read it, `delivered` once every other member's
 * client has received it, `sent` before that (Kafka has it). Counts say how far a
 * group message got.
 */
export function deliveryOf(message: MessageView, members: MemberView[]) {
  const others = members.filter((m) => m.userId !== message.senderId);
  const readBy = others.filter((m) => m.lastReadSeq >= message.seq).length;
  const deliveredTo = others.filter((m) => Math.max(m.lastDeliveredSeq, m.lastReadSeq) >= message.seq).length;
  const status: DeliveryStatus =
    others.length > 0 && readBy === others.length
      ? "read"
      : others.length > 0 && deliveredTo === others.length
        ? "delivered"
        : "sent";
  return { status, deliveredTo, readBy, recipients: others.length };
}

function messageJson(message: MessageView, members: MemberView[]) {
  return {
    id: message.eventId,
    seq: message.seq,
    senderId: message.senderId,
    clientMsgId: message.clientMsgId,
    content: message.content,
    priority: message.priority,
    sentAt: message.sentAt.toISOString(),
    editedAt: message.editedAt?.toISOString() ?? null,
    editCount: message.editCount,
    recalledAt: message.recalledAt?.toISOString() ?? null,
    recalledBy: message.recalledBy,
    delivery: deliveryOf(message, members),
  };
}

/** History, the inbox and conversation details: reads of the materialised projection. */
export function registerReadRoutes(
  app: ApiApp,
  deps: { projection: ProjectionReader; historyMaxLimit: number },
): void {
  const { projection, historyMaxLimit } = deps;

  app.get(
    "/v1/conversations/:id",
    {
      config: { access: "user" },
      schema: {
        tags: ["conversations"],
        summary: "A conversation you are a member of, with its members and their read positions.",
        params: ConversationParams,
        response: { 200: Type.Unknown({ description: "See the summary." }), ...commonErrors },
      },
    },
    async (request) => {
      const userId = actingUser(request.principal, undefined, "userId");
      await requireMember(projection, request.params.id, userId);
      const [conversation, members] = await Promise.all([
        projection.conversation(request.params.id),
        projection.members(request.params.id),
      ]);
      return {
        conversation: conversation && {
          ...conversation,
          createdAt: conversation.createdAt.toISOString(),
          lastMessageAt: conversation.lastMessageAt?.toISOString() ?? null,
          lastActivityAt: conversation.lastActivityAt.toISOString(),
        },
        members: members.map((m) => ({
          userId: m.userId,
          role: m.role,
          joinedAt: m.joinedAt.toISOString(),
          lastDeliveredSeq: m.lastDeliveredSeq,
          lastReadSeq: m.lastReadSeq,
        })),
      };
    },
  );

  app.get(
    "/v1/conversations/:id/messages",
    {
      config: { access: "user" },
      schema: {
        tags: ["messages"],
        summary: "Materialised history in sequence order.",
        description: `\`after\`: messages with a greater seq, oldest first; \`before\`: the newest messages with a smaller seq; neither: the newest page. \`limit\` is capped at ${historyMaxLimit}. Each of your own messages carries its delivery status (sent, delivered, read).`,
        params: ConversationParams,
        querystring: HistoryQuery,
        response: { 200: Type.Unknown({ description: "See the summary." }), ...commonErrors },
      },
    },
    async (request) => {
      const userId = actingUser(request.principal, undefined, "userId");
      const { after, before } = request.query;
      if (after !== undefined && before !== undefined && before <= after + 1) {
        throw invalidField("before", "query parameter `before` must be greater than `after` + 1.");
      }
      await requireMember(projection, request.params.id, userId);
      const limit = Math.min(request.query.limit ?? 50, historyMaxLimit);
      const [messages, members] = await Promise.all([
        projection.history(request.params.id, {
          limit,
          ...(after === undefined ? {} : { after }),
          ...(before === undefined ? {} : { before }),
        }),
        projection.members(request.params.id),
      ]);
      return {
        messages: messages.map((m) => messageJson(m, members)),
        limit,
        nextAfter: messages.length > 0 ? messages[messages.length - 1]!.seq : (after ?? null),
        prevBefore: messages.length > 0 ? messages[0]!.seq : (before ?? null),
      };
    },
  );

  app.get(
    "/v1/me/conversations",
    {
      config: { access: "user" },
      schema: {
        tags: ["conversations"],
        summary:
          "Your inbox: your conversations, newest activity first, with unread counts and the last message.",
        querystring: Type.Object(
          { limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) },
          { additionalProperties: false },
        ),
        response: { 200: Type.Unknown({ description: "See the summary." }), ...commonErrors },
      },
    },
    async (request) => {
      const userId = actingUser(request.principal, undefined, "userId");
      const inbox = await projection.inbox(userId, { limit: request.query.limit ?? 100 });
      return {
        conversations: inbox.map((entry) => ({
          id: entry.conversation.id,
          kind: entry.conversation.kind,
          title: entry.conversation.title,
          lastSeq: entry.conversation.lastSeq,
          lastActivityAt: entry.conversation.lastActivityAt.toISOString(),
          unreadCount: entry.membership.unreadCount,
          lastReadSeq: entry.membership.lastReadSeq,
          lastMessage: entry.lastMessage && {
            id: entry.lastMessage.eventId,
            seq: entry.lastMessage.seq,
            senderId: entry.lastMessage.senderId,
            content: entry.lastMessage.content,
            sentAt: entry.lastMessage.sentAt.toISOString(),
          },
        })),
      };
    },
  );
}
