/**
 * The dead-letter routes, for operators (the operator key): list and show dead
 * letters, replay or discard one, replay every waiting one of a subscription. Every
 * change records who made it; the runtime's dead-letter errors become 404 and 409.
 */
import {
  type DeadLetter,
  DeadLetterNotFoundError,
  DeadLetterStateError,
  discardDeadLetter,
  getDeadLetter,
  listDeadLetters,
  replayAllDeadLetters,
  replayDeadLetter,
} from "@chatbus/consumer-runtime/operator";
import { Type } from "@sinclair/typebox";
import type pg from "pg";
import type { ApiApp } from "../app.ts";
import { conflict, notFound } from "../errors.ts";
import { commonErrors, ErrorResponse } from "./schemas.ts";

const strict = { additionalProperties: false } as const;
const operator = { access: "operator" } as const;
const errors = { ...commonErrors, 404: ErrorResponse, 409: ErrorResponse };
const DeadLetterId = Type.String({ pattern: "^[0-9]{1,19}$", description: "Dead letter id." });
const Subscription = Type.String({ minLength: 1, maxLength: 200, pattern: "^[A-Za-z0-9][A-Za-z0-9._:-]*$" });
const DeadLetterStatusSchema = Type.Union([
  Type.Literal("waiting"),
  Type.Literal("replaying"),
  Type.Literal("replayed"),
  Type.Literal("discarded"),
]);

/** What the dead-letter routes need: the pool, and who an operator request comes from. */
export interface DeadLetterRouteDeps {
  pool: pg.Pool;
  who: (principal: { kind: string; name?: string }) => string;
}

/** A dead letter as JSON: the value as UTF-8 text when it is, base64 otherwise. */
export function deadLetterJson(d: DeadLetter) {
  const text = d.value?.toString("utf8");
  const isText = d.value !== null && text !== undefined && Buffer.from(text, "utf8").equals(d.value);
  return {
    id: d.id,
    subscription: d.subscription,
    status: d.status,
    failureClass: d.failureClass,
    errorCode: d.errorCode,
    errorMessage: d.errorMessage,
    attempts: d.attempts,
    eventId: d.eventId,
    eventType: d.eventType,
    conversationId: d.conversationId,
    topic: d.topic,
    partition: d.partition,
    offset: d.offset,
    key: d.key,
    headers: d.headers,
    value: d.value === null ? null : isText ? text : d.value.toString("base64"),
    valueEncoding: d.value === null ? null : isText ? "utf8" : "base64",
    firstFailedAt: d.firstFailedAt.toISOString(),
    lastFailedAt: d.lastFailedAt.toISOString(),
    statusChangedAt: d.statusChangedAt?.toISOString() ?? null,
    statusChangedBy: d.statusChangedBy,
    statusReason: d.statusReason,
    replayCount: d.replayCount,
    lastReplayError: d.lastReplayError,
    errorStack: d.errorStack,
  };
}

function translate(error: unknown): never {
  if (error instanceof DeadLetterNotFoundError) throw notFound(error.message);
  if (error instanceof DeadLetterStateError) throw conflict(error.message);
  throw error;
}

/** `GET /v1/dead-letters` and `GET /v1/dead-letters/:id`. */
function registerDeadLetterReads(app: ApiApp, { pool }: DeadLetterRouteDeps): void {
  app.get(
    "/v1/dead-letters",
    {
      config: operator,
      schema: {
        tags: ["operator"],
        summary: "Dead letters, newest first, filtered by subscription and status, paginated by `cursor`.",
        querystring: Type.Object(
          {
            subscription: Type.Optional(Subscription),
            status: Type.Optional(DeadLetterStatusSchema),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
            cursor: Type.Optional(DeadLetterId),
          },
          strict,
        ),
        response: { 200: Type.Unknown(), ...commonErrors },
      },
    },
    async (request) => {
      const { subscription, status, cursor } = request.query;
      const page = await listDeadLetters(pool, {
        limit: request.query.limit ?? 50,
        ...(subscription === undefined ? {} : { subscription }),
        ...(status === undefined ? {} : { status }),
        ...(cursor === undefined ? {} : { cursor }),
      });
      return { items: page.items.map(deadLetterJson), nextCursor: page.nextCursor };
    },
  );

  app.get(
    "/v1/dead-letters/:id",
    {
      config: operator,
      schema: {
        tags: ["operator"],
        summary: "One dead letter with its record, error and history.",
        params: Type.Object({ id: DeadLetterId }, strict),
        response: { 200: Type.Unknown(), ...errors },
      },
    },
    async (request) => {
      const found = await getDeadLetter(pool, request.params.id);
      if (!found)
        throw notFound(`dead letter ${request.params.id} does not exist; list them to find the id.`);
      return deadLetterJson(found);
    },
  );
}

/** Replay or discard one dead letter, replay a subscription's waiting ones. */
function registerDeadLetterChanges(app: ApiApp, { pool, who }: DeadLetterRouteDeps): void {
  app.post(
    "/v1/dead-letters/:id/replay",
    {
      config: operator,
      schema: {
        tags: ["operator"],
        summary: "Replay one waiting dead letter to its own subscription (recorded with who).",
        params: Type.Object({ id: DeadLetterId }, strict),
        response: { 200: Type.Unknown(), ...errors },
      },
    },
    async (request) => {
      const by = who(request.principal);
      const updated = await replayDeadLetter(pool, request.params.id, { by }).catch(translate);
      request.log.info({ deadLetter: request.params.id, by }, "dead letter replay requested");
      return deadLetterJson(updated);
    },
  );

  app.post(
    "/v1/dead-letters/:id/discard",
    {
      config: operator,
      schema: {
        tags: ["operator"],
        summary: "Discard one waiting dead letter (kept, marked discarded, recorded with who and why).",
        params: Type.Object({ id: DeadLetterId }, strict),
        body: Type.Optional(
          Type.Object({ reason: Type.Optional(Type.String({ minLength: 1, maxLength: 1000 })) }, strict),
        ),
        response: { 200: Type.Unknown(), ...errors },
      },
    },
    async (request) => {
      const by = who(request.principal);
      const reason = request.body?.reason;
      const updated = await discardDeadLetter(pool, request.params.id, {
        by,
        ...(reason === undefined ? {} : { reason }),
      }).catch(translate);
      request.log.info({ deadLetter: request.params.id, by }, "dead letter discarded");
      return deadLetterJson(updated);
    },
  );

  app.post(
    "/v1/dead-letters/replay",
    {
      config: operator,
      schema: {
        tags: ["operator"],
        summary: "Replay every waiting dead letter of one subscription.",
        body: Type.Object({ subscription: Subscription }, strict),
        response: {
          200: Type.Object({ subscription: Type.String(), count: Type.Integer() }),
          ...commonErrors,
        },
      },
    },
    async (request) => {
      const by = who(request.principal);
      const { count } = await replayAllDeadLetters(pool, request.body.subscription, { by });
      request.log.info(
        { subscription: request.body.subscription, count, by },
        "bulk dead-letter replay requested",
      );
      return { subscription: request.body.subscription, count };
    },
  );
}

/** The dead-letter routes, in the order the OpenAPI document lists them. */
export function registerDeadLetterRoutes(app: ApiApp, deps: DeadLetterRouteDeps): void {
  registerDeadLetterReads(app, deps);
  registerDeadLetterChanges(app, deps);
}
