import { createHash } from "node:crypto";
import type { ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import { UserId, uuidv7 } from "@chatbus/producer-sdk";
import { Type } from "@sinclair/typebox";
import type { ApiApp } from "../app.ts";
import type { Principal } from "../auth.ts";
import { conflict, forbidden, invalidField, notAMember } from "../errors.ts";
import type { Membership } from "../membership-cache.ts";
import type { EventSender } from "../types.ts";
import type { WriteLimiter } from "../write-limits.ts";
import { checkAdd, checkRemove } from "./member-rules.ts";
import {
  Accepted,
  AddMemberBody,
  ConversationParams,
  CreateConversationBody,
  commonErrors,
  ErrorResponse,
  MemberParams,
} from "./schemas.ts";

/** With a service key, the user the service acts for (member routes have no body field for it). */
const ActingHeaders = Type.Object({ "x-chatbus-acting-user": Type.Optional(UserId) });

/**
 * The id of the direct conversation between two users: the same whoever creates it,
 * so that creating it twice names one conversation. Readable (`dm:ana:ben`) when
 * neither id holds a `:` and it fits the 128-character id limit, a hash otherwise:
 * with a `:` in a user id, `dm:a:b:c` would name both (a, b:c) and (a:b, c).
 */
export function directConversationId(a: string, b: string): string {
  const [x, y] = [a, b].sort();
  const readable = `dm:${x}:${y}`;
  if (readable.length <= 128 && !x!.includes(":") && !y!.includes(":")) return readable;
  return `dm-${createHash("sha256").update(`${x}\u0000${y}`).digest("hex").slice(0, 40)}`;
}

/** The user a request acts as: the token's user, or `field` of the body for a service. */
export function actingUser(principal: Principal, claimed: string | undefined, field: string): string {
  if (principal.kind === "user") {
    if (claimed !== undefined && claimed !== principal.userId) {
      throw forbidden(`\`${field}\` must be your own user id (or omitted) when you call with a user token.`);
    }
    return principal.userId;
  }
  if (claimed === undefined) {
    throw invalidField(field, `body field \`${field}\` is required when a service key calls this route.`);
  }
  return claimed;
}

/** Throws the non-member 403 unless `userId` is a member of the conversation. */
export async function requireMember(
  membership: Pick<Membership, "isMember">,
  conversationId: string,
  userId: string,
) {
  if (!(await membership.isMember(conversationId, userId))) throw notAMember();
}

/** Create conversations, add and remove members. */
export function registerConversationRoutes(
  app: ApiApp,
  deps: {
    bus: EventSender;
    projection: ProjectionReader;
    membership: Membership;
    limits: WriteLimiter;
    maxGroupMembers: number;
  },
): void {
  const { bus, projection, membership, limits, maxGroupMembers } = deps;
  registerCreateRoute(app, deps);

  app.post(
    "/v1/conversations/:id/members",
    {
      config: { access: "user-or-service" },
      schema: {
        tags: ["conversations"],
        summary:
          "Add a member (emits chat.member.joined). Owners and admins add plain members; only owners grant `admin` or `owner`.",
        params: ConversationParams,
        body: AddMemberBody,
        headers: ActingHeaders,
        response: { 202: Accepted, ...commonErrors, 409: ErrorResponse, 429: ErrorResponse },
      },
    },
    async (request, reply) => {
      const actor = actingUser(request.principal, actingHeader(request.headers), "x-chatbus-acting-user");
      const kind = await membership.memberOf(request.params.id, actor);
      if (kind === null) throw notAMember();
      if (kind === "direct") {
        throw conflict("a direct conversation has exactly two members; create a group to add more people.");
      }
      checkAdd({
        members: await projection.members(request.params.id),
        actor,
        userId: request.body.userId,
        role: request.body.role ?? "member",
        maxGroupMembers,
      });
      if (request.principal.kind === "user") {
        await limits.admit({
          what: "write",
          userId: actor,
          conversationId: request.params.id,
          action: "member changes",
        });
      }
      const sent = await bus.send(request.params.id, {
        type: "chat.member.joined",
        userId: request.body.userId,
        addedBy: actor,
        ...(request.body.role === undefined ? {} : { role: request.body.role }),
      });
      return reply.status(202).send(sent);
    },
  );

  app.delete(
    "/v1/conversations/:id/members/:userId",
    {
      config: { access: "user-or-service" },
      schema: {
        tags: ["conversations"],
        summary:
          "Remove a member or leave (emits chat.member.left). Owners and admins remove plain members; only owners remove admins and owners; the last owner cannot leave.",
        params: MemberParams,
        headers: ActingHeaders,
        response: { 202: Accepted, ...commonErrors, 404: ErrorResponse, 429: ErrorResponse },
      },
    },
    async (request, reply) => {
      const actor = actingUser(request.principal, actingHeader(request.headers), "x-chatbus-acting-user");
      await requireMember(membership, request.params.id, actor);
      checkRemove({
        members: await projection.members(request.params.id),
        actor,
        userId: request.params.userId,
      });
      if (request.principal.kind === "user") {
        await limits.admit({
          what: "write",
          userId: actor,
          conversationId: request.params.id,
          action: "member changes",
        });
      }
      const sent = await bus.send(request.params.id, {
        type: "chat.member.left",
        userId: request.params.userId,
        removedBy: actor,
      });
      return reply.status(202).send(sent);
    },
  );
}

function actingHeader(headers: Record<string, unknown>): string | undefined {
  const value = headers["x-chatbus-acting-user"];
  return typeof value === "string" ? value : undefined;
}

/** `POST /v1/conversations`: a new group, or a direct conversation (the existing one when it exists). */
function registerCreateRoute(
  app: ApiApp,
  deps: { bus: EventSender; projection: ProjectionReader; limits: WriteLimiter; maxGroupMembers: number },
): void {
  const { bus, projection, limits, maxGroupMembers } = deps;
  app.post(
    "/v1/conversations",
    {
      config: { access: "user-or-service" },
      schema: {
        tags: ["conversations"],
        summary: "Create a direct or group conversation (emits chat.conversation.created).",
        description:
          "A direct conversation that already exists between the two users is answered with 200 and its id; nothing is sent.",
        body: CreateConversationBody,
        response: {
          200: Type.Object({ conversationId: Type.String(), existing: Type.Literal(true) }),
          202: { ...Accepted, properties: { ...Accepted.properties, conversationId: { type: "string" } } },
          ...commonErrors,
          409: ErrorResponse,
          429: ErrorResponse,
        },
      },
    },
    async (request, reply) => {
      const creator = actingUser(request.principal, request.body.createdBy, "createdBy");
      const members = [creator, ...request.body.members.filter((m) => m !== creator)];
      let conversationId: string;
      if (request.body.kind === "direct") {
        if (members.length !== 2) {
          throw invalidField(
            "members",
            "body field `members` of a direct conversation must name exactly one other user.",
          );
        }
        conversationId = directConversationId(members[0]!, members[1]!);
        if (await projection.conversation(conversationId)) {
          // Creating it again is a user's mistake, not an event: answer with the one that exists.
          if (!(await projection.isMember(conversationId, creator))) {
            throw conflict(
              "this direct conversation exists and you have left it; a direct conversation cannot be joined again.",
            );
          }
          return reply.status(200).send({ conversationId, existing: true as const });
        }
      } else {
        if (members.length > maxGroupMembers) {
          throw invalidField(
            "members",
            `body field \`members\` makes a group of ${members.length}, over the limit of ${maxGroupMembers} (CHATBUS_MAX_GROUP_MEMBERS).`,
          );
        }
        conversationId = `g-${uuidv7()}`;
      }
      if (request.principal.kind === "user") {
        await limits.admit({ what: "write", userId: creator, action: "conversation creations" });
      }
      const sent = await bus.send(conversationId, {
        type: "chat.conversation.created",
        kind: request.body.kind,
        createdBy: creator,
        members,
        ...(request.body.title === undefined ? {} : { title: request.body.title }),
      });
      return reply.status(202).send({ conversationId, ...sent });
    },
  );
}
