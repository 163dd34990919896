import { Type } from "@sinclair/typebox";
import type { ApiApp } from "../app.ts";
import type { EventHub } from "../realtime/event-hub.ts";
import { ErrorResponse } from "./schemas.ts";

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
          "Each chat event is `id: <cursor>`, `event: <type>`, `data: {type, eventId, conversationId, seq, time, data}`. The id is a per-partition offset vector: reconnect with it as Last-Event-ID to get exactly the events you missed, once, in per-conversation order. `event: reset` means the position could not be resumed: reload history, then carry on with the reset's id. `event: presence` reports contacts going online/offline. `: heartbeat` comments every 15 s.",
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
        { userId: request.principal.userId, resume: lastEventId !== undefined },
        "SSE stream opened",
      );
      await hub.open(request.principal.userId, response, lastEventId);
    },
  );
}
