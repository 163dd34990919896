import {
  countWaitingDeadLetters,
  type DeadLetter,
  DeadLetterNotFoundError,
  DeadLetterStateError,
  discardDeadLetter,
  getDeadLetter,
  listDeadLetters,
  listSubscriptionStatus,
  type PartitionStatus,
  pendingSkips,
  replayAllDeadLetters,
  replayDeadLetter,
  type StuckRecord,
  type SubscriptionStatusRow,
} from "@chatbus/consumer-runtime/operator";
import { Type } from "@sinclair/typebox";
import type pg from "pg";
import type { ApiApp } from "../app.ts";
import { conflict, notFound } from "../errors.ts";
import { commonErrors, ErrorResponse } from "./schemas.ts";
import { registerSkipRoutes, type SkipJson, skipJson } from "./subscription-skips.ts";

const strict = { additionalProperties: false } as const;
const DeadLetterId = Type.String({ pattern: "^[0-9]{1,19}$", description: "Dead letter id." });
const Subscription = Type.String({ minLength: 1, maxLength: 200, pattern: "^[A-Za-z0-9][A-Za-z0-9._:-]*$" });
const DeadLetterStatusSchema = Type.Union([
  Type.Literal("waiting"),
  Type.Literal("replaying"),
  Type.Literal("replayed"),
  Type.Literal("discarded"),
]);

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

const breakerRank = { closed: 0, halfOpen: 1, open: 2 } as const;

/**
 * One subscription across its instances: worst breaker, summed counts, lag per
 * partition, events in flight and the oldest one's age, the records it is stuck on
 * (with the instance that holds each) and the skip requests not yet applied.
 */
export function summariseSubscription(
  rows: SubscriptionStatusRow[],
  waiting: number,
  skipsPending: SkipJson[] = [],
) {
  const live = rows.filter((r) => r.live);
  const counted = live.length > 0 ? live : rows;
  const partitions = new Map<number, PartitionStatus & { instanceId: string }>();
  for (const row of counted) {
    for (const p of row.state.partitions ?? [])
      partitions.set(p.partition, { ...p, instanceId: row.instanceId });
  }
  const breaker = counted.reduce<"closed" | "halfOpen" | "open">(
    (worst, r) => (breakerRank[r.state.breaker] > breakerRank[worst] ? r.state.breaker : worst),
    "closed",
  );
  const sum = (key: "processed" | "failed" | "deadLettered" | "inFlight") =>
    counted.reduce((n, r) => n + (r.state[key] ?? 0), 0);
  const byPartition = [...partitions.values()].sort((a, b) => a.partition - b.partition);
  // Instances that publish no age yet (older runtimes) count as "unknown", not as 0.
  const ages = counted
    .map((r) => r.state.oldestInFlightMs)
    .filter((age): age is number => typeof age === "number");
  const stuck: (StuckRecord & { instanceId: string })[] = counted
    .flatMap((r) => (r.state.stuck ?? []).map((s) => ({ ...s, instanceId: r.instanceId })))
    .sort((a, b) => a.partition - b.partition || compareOffsets(a.offset, b.offset));
  return {
    subscription: rows[0]!.subscription,
    state: live.length === 0 ? "stopped" : breaker === "open" ? "paused" : "running",
    breaker,
    group: counted[0]?.state.group ?? null,
    topic: counted[0]?.state.topic ?? null,
    lag: byPartition.reduce((n, p) => n + p.lag, 0),
    partitions: byPartition,
    processed: sum("processed"),
    failed: sum("failed"),
    deadLettered: sum("deadLettered"),
    inFlight: sum("inFlight"),
    oldestInFlightMs: ages.length > 0 ? Math.max(...ages) : null,
    stuck,
    skipsPending,
    deadLettersWaiting: waiting,
    instances: rows.map((r) => ({
      instanceId: r.instanceId,
      live: r.live,
      lastSeenAt: r.lastSeenAt.toISOString(),
      startedAt: r.state.startedAt,
      breaker: r.state.breaker,
    })),
  };
}

/** Orders decimal offset strings numerically (they are int64, beyond a double's precision). */
function compareOffsets(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

function translate(error: unknown): never {
  if (error instanceof DeadLetterNotFoundError) throw notFound(error.message);
  if (error instanceof DeadLetterStateError) throw conflict(error.message);
  throw error;
}

/** Subscriptions and dead letters, for operators (the operator key). Every change records who made it. */
export function registerOperatorRoutes(app: ApiApp, deps: { pool: pg.Pool }): void {
  const { pool } = deps;
  const operator = { access: "operator" } as const;
  const errors = { ...commonErrors, 404: ErrorResponse, 409: ErrorResponse };
  const who = (principal: { kind: string; name?: string }) =>
    principal.kind === "operator" ? (principal.name ?? "operator") : "unknown";

  app.get(
    "/v1/subscriptions",
    {
      config: operator,
      schema: {
        tags: ["operator"],
        summary:
          "Each subscription: state, breaker, lag per partition, counts, events in flight and the oldest one's age, stuck records, pending skips, dead letters waiting, instances.",
        response: { 200: Type.Unknown(), ...commonErrors },
      },
    },
    async () => {
      const [rows, waiting] = await Promise.all([
        listSubscriptionStatus(pool),
        countWaitingDeadLetters(pool),
      ]);
      const bySubscription = new Map<string, SubscriptionStatusRow[]>();
      for (const row of rows) {
        const list = bySubscription.get(row.subscription) ?? [];
        list.push(row);
        bySubscription.set(row.subscription, list);
      }
      const subscriptions = await Promise.all(
        [...bySubscription.values()].map(async (list) => {
          const name = list[0]!.subscription;
          const pending = (await pendingSkips(pool, name)).map(skipJson);
          return summariseSubscription(list, waiting[name] ?? 0, pending);
        }),
      );
      // Subscriptions with dead letters but no status row (none running) still show up.
      for (const [subscription, n] of Object.entries(waiting)) {
        if (!bySubscription.has(subscription)) {
          subscriptions.push({
            subscription,
            state: "stopped",
            breaker: "closed",
            group: null,
            topic: null,
            lag: 0,
            partitions: [],
            processed: 0,
            failed: 0,
            deadLettered: 0,
            inFlight: 0,
            oldestInFlightMs: null,
            stuck: [],
            skipsPending: [],
            deadLettersWaiting: n,
            instances: [],
          });
        }
      }
      return { subscriptions };
    },
  );

  registerSkipRoutes(app, { pool, who });

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
