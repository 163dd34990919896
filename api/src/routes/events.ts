import { Type } from "@sinclair/typebox";
import type { FastifyRequest } from "fastify";
import type { ApiApp } from "../app.ts";
import type { EventHub } from "../realtime/event-hub.ts";
import { ErrorResponse } from "./schemas.ts";

/**
 * When the (already verified) user token of this request expires, ms since the epoch:
 * the stream ends then with `event: token-expired` (review M7).
 */
function tokenExpiry(app: ApiApp, request: FastifyRequest): number | undefined {
  const header = request.headers.authorization;
  const query = (request.query as { access_token?: string }).access_token;
  const token = typeof header === "string" ? /^Bearer\s+(\S+)\s*$/i.exec(header)?.[1] : query;
  if (!token) return undefined;
  const exp = app.jwt.decode<{ exp?: unknown }>(token)?.exp;
  return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : undefined;
}

/**
 * `GET /v1/me/events`: Server-Sent Events of the caller's conversations. The token
 * may come as `?access_token=` because EventSource cannot send headers; the
 * position as the `Last-Event-ID` header (EventSource's reconnect) or `?lastEventId=`.
 */
export function registerEventRoutes(app: ApiApp, hub: EventHub): void {
  app.get(
    "/v1/me/events",
    {
      config: { access: "user", queryToken: true, sse: true },
      schema: {
        tags: ["realtime"],
        summary: "Live events of your conversations (text/event-stream), resumable with Last-Event-ID.",
        description:
          "Each chat event is `id: <cursor>`, `event: <type>`, `data: {type, eventId, conversationId, seq, time, data}`. The id is a per-partition offset vector: reconnect with it as Last-Event-ID to get exactly the events you missed, once, in per-conversation order. `event: reset` means the position could not be resumed: reload history, then carry on with the reset's id. `event: presence` reports contacts going online/offline (across every API process). `event: token-expired` comes when the token expires, and the stream ends: reconnect with a fresh token and the last id. `event: closed` means the user opened more streams than allowed and this, the oldest, was closed: do not reconnect it. `: heartbeat` comments every 15 s.",
        querystring: Type.Object(
          {
            access_token: Type.Optional(Type.String({ description: "The user token, for EventSource." })),
            lastEventId: Type.Optional(Type.String({ maxLength: 4096, description: "Resume position." })),
          },
          { additionalProperties: false },
        ),
        headers: Type.Object({ "last-event-id": Type.Optional(Type.String({ maxLength: 4096 })) }),
        response: { 401: ErrorResponse },
      },
    },
    async (request, reply) => {
      if (request.principal.kind !== "user") return; // access "user" guarantees it
      const lastEventId = request.headers["last-event-id"] ?? request.query.lastEventId;
      reply.hijack();
      const response = reply.raw;
      response.writeHead(200, {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache, no-transform",
        connection: "keep-alive",
        "x-accel-buffering": "no",
        "x-request-id": request.id,
      });
      response.write("retry: 2000\n\n");
      request.log.info(
        // The request line too (token redacted): a stream's only access-log line.
        { req: request, userId: request.principal.userId, resume: lastEventId !== undefined },
        "SSE stream opened",
      );
      await hub.open(request.principal.userId, response, {
        lastEventId,
        expiresAt: tokenExpiry(app, request),
      });
    },
  );
}
