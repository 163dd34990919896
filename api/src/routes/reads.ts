import type { HistoryPage, ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import { Type } from "@sinclair/typebox";
import type { ApiApp } from "../app.ts";
import { deliveriesOf } from "../delivery.ts";
import { invalidField } from "../errors.ts";
import type { HistoryCache } from "../history-cache.ts";
import type { Membership } from "../membership-cache.ts";
import { actingUser, requireMember } from "./conversations.ts";
import {
  ConversationParams,
  type ConversationResponse,
  commonErrors,
  HistoryQuery,
  InboxQuery,
  type InboxResponse,
} from "./schemas.ts";

/** 400 naming `limit` when a page asks for more than the setting allows. */
function pageSize(requested: number | undefined, fallback: number, max: number, setting: string): number {
  if (requested !== undefined && requested > max) {
    throw invalidField(
      "limit",
      `query parameter \`limit\` must be at most ${max} (${setting}); got ${requested}.`,
    );
  }
  return requested ?? Math.min(fallback, max);
}

/**
 * The history answer (`HistoryResponse`) as JSON text: each message's JSON, which
 * PostgreSQL wrote, with its delivery added, so that the page's content is neither
 * parsed nor serialised again here (issue 16). The same bytes `JSON.stringify` wrote of
 * the response object.
 */
export function historyJson(
  page: HistoryPage,
  limit: number,
  cursor: { after: number | undefined; before: number | undefined },
): string {
  const { messages, positions } = page;
  const deliveries = deliveriesOf(messages, positions);
  const parts = messages.map((message, i) => {
    const { status, deliveredTo, readBy, recipients } = deliveries[i]!;
    // The message's JSON without its closing brace, then the last field.
    return `${message.json.slice(0, -1)},"delivery":{"status":"${status}","deliveredTo":${deliveredTo},"readBy":${readBy},"recipients":${recipients}}}`;
  });
  const nextAfter = messages.length > 0 ? messages[messages.length - 1]!.seq : (cursor.after ?? null);
  const prevBefore = messages.length > 0 ? messages[0]!.seq : (cursor.before ?? null);
  return `{"messages":[${parts.join(",")}],"limit":${limit},"nextAfter":${nextAfter},"prevBefore":${prevBefore}}`;
}

/** History, the inbox and conversation details: reads of the materialised projection. */
export function registerReadRoutes(
  app: ApiApp,
  deps: {
    projection: ProjectionReader;
    /** Newest pages; every other page goes through it to the projection. */
    history: Pick<HistoryCache, "page">;
    membership: Membership;
    historyMaxLimit: number;
    inboxMaxLimit: number;
  },
): void {
  const { projection, history, membership, historyMaxLimit, inboxMaxLimit } = deps;

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
    async (request): Promise<ConversationResponse> => {
      const userId = actingUser(request.principal, undefined, "userId");
      await requireMember(membership, request.params.id, userId);
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
        description: `\`after\`: messages with a greater seq, oldest first; \`before\`: the newest messages with a smaller seq; neither: the newest page. \`limit\` is at most ${historyMaxLimit} (CHATBUS_HISTORY_MAX_LIMIT); more is a 400. Each of your own messages carries its delivery status (sent, delivered, read).`,
        params: ConversationParams,
        querystring: HistoryQuery,
        response: { 200: Type.Unknown({ description: "See the summary." }), ...commonErrors },
      },
    },
    async (request, reply) => {
      const userId = actingUser(request.principal, undefined, "userId");
      const { after, before } = request.query;
      if (after !== undefined && before !== undefined && before <= after + 1) {
        throw invalidField("before", "query parameter `before` must be greater than `after` + 1.");
      }
      const limit = pageSize(request.query.limit, 50, historyMaxLimit, "CHATBUS_HISTORY_MAX_LIMIT");
      // Membership from its cache; the page and the members' receipt positions in one query,
      // the newest page from the history cache (issue 16).
      await requireMember(membership, request.params.id, userId);
      const page = await history.page(request.params.id, {
        limit,
        ...(after === undefined ? {} : { after }),
        ...(before === undefined ? {} : { before }),
      });
      // JSON text with a JSON content type: fastify sends it as it is.
      reply.type("application/json; charset=utf-8");
      return historyJson(page, limit, { after, before });
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
        querystring: InboxQuery,
        response: { 200: Type.Unknown({ description: "See the summary." }), ...commonErrors },
      },
    },
    async (request): Promise<InboxResponse> => {
      const userId = actingUser(request.principal, undefined, "userId");
      const limit = pageSize(request.query.limit, 100, inboxMaxLimit, "CHATBUS_INBOX_MAX_LIMIT");
      const inbox = await projection.inbox(userId, { limit });
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
