import type { ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import type { ApiApp } from "../app.ts";
import { ApiError, conflict, forbidden, invalidField, notAMember, notFound } from "../errors.ts";
import type { Membership } from "../membership-cache.ts";
import type { EventSender } from "../types.ts";
import type { WriteLimiter } from "../write-limits.ts";
import { actingUser, requireMember } from "./conversations.ts";
import {
  Accepted,
  ConversationParams,
  commonErrors,
  EditMessageBody,
  ErrorResponse,
  MessageParams,
  ReadBody,
  SendMessageBody,
} from "./schemas.ts";

/** Send, edit and recall messages; read receipts. */
export function registerMessageRoutes(
  app: ApiApp,
  deps: { bus: EventSender; projection: ProjectionReader; membership: Membership; limits: WriteLimiter },
): void {
  const { bus, projection, membership, limits } = deps;

  app.post(
    "/v1/conversations/:id/messages",
    {
      config: { access: "user-or-service" },
      schema: {
        tags: ["messages"],
        summary: "Send a message (202 once Kafka has it; it shows in history once materialised).",
        description:
          'With a user token the sender is the caller; with a service key give `senderId`. The sender must be a member. `priority: "high"` (past the rate limits) is for service keys only: a user token asking for it gets 403 naming `priority`. 429 with Retry-After when the conversation or the sender is over its rate limit.',
        params: ConversationParams,
        body: SendMessageBody,
        response: { 202: Accepted, ...commonErrors, 429: ErrorResponse },
      },
    },
    async (request, reply) => {
      const senderId = actingUser(request.principal, request.body.senderId, "senderId");
      const user = request.principal.kind === "user";
      if (user && request.body.priority === "high") {
        throw new ApiError(
          "CHATBUS_FORBIDDEN",
          '`priority` "high" passes the rate limits and is for service keys (system notices); send with "normal" or "low".',
          { field: "priority" },
        );
      }
      // From the membership cache: no query on a hit (issue 16).
      const kind = await membership.memberOf(request.params.id, senderId);
      if (kind === null) throw notAMember();
      const { content, priority, clientMsgId } = request.body;
      await limits.admit({
        what: "message",
        ...(user ? { userId: senderId } : {}),
        conversationId: request.params.id,
        conversationKind: kind === "group" ? "group" : "direct",
        priority: priority ?? "normal",
      });
      const sent = await bus.send(
        request.params.id,
        {
          type: "chat.message.sent",
          senderId,
          content,
          ...(priority === undefined ? {} : { priority }),
          ...(clientMsgId === undefined ? {} : { clientMsgId }),
        },
        { kind }, // the group or direct rate limit
      );
      return reply.status(202).send(sent);
    },
  );

  /** The message, when the caller (a member) may change it: only its sender may. */
  async function ownMessage(conversationId: string, messageId: string, userId: string) {
    await requireMember(membership, conversationId, userId);
    const message = await projection.messageByEventId(messageId);
    if (!message || message.conversationId !== conversationId) {
      throw notFound(`message ${messageId} is not in this conversation (or not materialised yet).`);
    }
    if (message.senderId !== userId) throw forbidden("only the sender of a message may edit or recall it.");
    if (message.recalledAt !== null)
      throw conflict("this message was recalled; it can be neither edited nor recalled again.");
    return message;
  }

  app.patch(
    "/v1/conversations/:id/messages/:messageId",
    {
      config: { access: "user" },
      schema: {
        tags: ["messages"],
        summary: "Edit your message (emits chat.message.edited).",
        params: MessageParams,
        body: EditMessageBody,
        response: {
          202: Accepted,
          ...commonErrors,
          404: ErrorResponse,
          409: ErrorResponse,
          429: ErrorResponse,
        },
      },
    },
    async (request, reply) => {
      const userId = actingUser(request.principal, undefined, "userId");
      await ownMessage(request.params.id, request.params.messageId, userId);
      await limits.admit({ what: "write", userId, conversationId: request.params.id, action: "edits" });
      const sent = await bus.send(request.params.id, {
        type: "chat.message.edited",
        messageId: request.params.messageId,
        editorId: userId,
        content: request.body.content,
      });
      return reply.status(202).send(sent);
    },
  );

  app.delete(
    "/v1/conversations/:id/messages/:messageId",
    {
      config: { access: "user" },
      schema: {
        tags: ["messages"],
        summary: "Recall your message (emits chat.message.recalled).",
        params: MessageParams,
        response: {
          202: Accepted,
          ...commonErrors,
          404: ErrorResponse,
          409: ErrorResponse,
          429: ErrorResponse,
        },
      },
    },
    async (request, reply) => {
      const userId = actingUser(request.principal, undefined, "userId");
      await ownMessage(request.params.id, request.params.messageId, userId);
      await limits.admit({ what: "write", userId, conversationId: request.params.id, action: "recalls" });
      const sent = await bus.send(request.params.id, {
        type: "chat.message.recalled",
        messageId: request.params.messageId,
        recalledBy: userId,
      });
      return reply.status(202).send(sent);
    },
  );

  registerReadReceiptRoute(app, deps);
}

/** `POST /v1/conversations/:id/read`: read receipts, bounded by the conversation's last message. */
function registerReadReceiptRoute(
  app: ApiApp,
  deps: { bus: EventSender; projection: ProjectionReader; membership: Membership; limits: WriteLimiter },
): void {
  const { bus, projection, membership, limits } = deps;
  app.post(
    "/v1/conversations/:id/read",
    {
      config: { access: "user" },
      schema: {
        tags: ["messages"],
        summary: "Mark every message up to `seq` as read (emits chat.receipt.read).",
        params: ConversationParams,
        body: ReadBody,
        response: { 202: Accepted, ...commonErrors, 429: ErrorResponse },
      },
    },
    async (request, reply) => {
      const userId = actingUser(request.principal, undefined, "userId");
      await requireMember(membership, request.params.id, userId);
      const lastSeq = (await projection.conversation(request.params.id))?.lastSeq ?? 0;
      if (request.body.seq > lastSeq) {
        // Clients only see materialised messages: a larger seq would mark future messages read.
        throw invalidField(
          "seq",
          `body field \`seq\` must be at most ${lastSeq}, the conversation's last message; got ${request.body.seq}.`,
        );
      }
      await limits.admit({
        what: "write",
        userId,
        conversationId: request.params.id,
        action: "read receipts",
      });
      const sent = await bus.send(request.params.id, {
        type: "chat.receipt.read",
        userId,
        upToSeq: request.body.seq,
      });
      return reply.status(202).send(sent);
    },
  );
}
