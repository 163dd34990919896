/**
 * Operator skips over HTTP: `POST /v1/subscriptions/:subscription/skip` records a
 * request that the instance owning the partition turns the record it keeps retrying
 * into a dead letter of class `operator` (and moves on); `GET
 * /v1/subscriptions/skips/:id` tells whether it was applied and which dead letter it
 * became. The API only records the request (table `subscription_skips`); the runtime
 * applies it with its next status publish.
 */
import {
  getSkip,
  listSubscriptionStatus,
  requestSkip,
  type SkipRequest,
  type SubscriptionStatusRow,
} from "@chatbus/consumer-runtime/operator";
import { Type } from "@sinclair/typebox";
import type pg from "pg";
import type { ApiApp } from "../app.ts";
import { conflict, invalidField, notFound } from "../errors.ts";
import { commonErrors, ErrorResponse } from "./schemas.ts";

const strict = { additionalProperties: false } as const;
/** Kafka offsets are int64: the largest one a partition can hold. */
const maxOffset = 2n ** 63n - 1n;

/** A skip request as JSON: times as ISO strings, `status` spelled out. */
export interface SkipJson {
  id: string;
  subscription: string;
  topic: string;
  partition: number;
  offset: string;
  status: "pending" | "applied";
  requestedBy: string;
  requestedAt: string;
  appliedAt: string | null;
  appliedBy: string | null;
  deadLetterId: string | null;
}

/** Maps a stored request to its JSON form. */
export function skipJson(s: SkipRequest): SkipJson {
  return {
    id: s.id,
    subscription: s.subscription,
    topic: s.topic,
    partition: s.partition,
    offset: s.offset,
    status: s.appliedAt ? "applied" : "pending",
    requestedBy: s.requestedBy,
    requestedAt: s.requestedAt.toISOString(),
    appliedAt: s.appliedAt?.toISOString() ?? null,
    appliedBy: s.appliedBy,
    deadLetterId: s.deadLetterId,
  };
}

const SkipParams = Type.Object(
  {
    subscription: Type.String({
      minLength: 1,
      maxLength: 200,
      pattern: "^[A-Za-z0-9][A-Za-z0-9._:-]*$",
      description:
        "The subscription (consumer group name without prefix), as `GET /v1/subscriptions` lists it.",
    }),
  },
  strict,
);

const SkipBody = Type.Object(
  {
    partition: Type.Integer({
      minimum: 0,
      maximum: 2_147_483_647,
      description: "The stuck record's partition.",
    }),
    offset: Type.Union(
      [
        Type.String({ pattern: "^[0-9]{1,19}$", description: "Decimal string (int64)." }),
        Type.Integer({ minimum: 0, description: "Up to 2^53-1 as a number; larger as a string." }),
      ],
      { description: "The stuck record's offset: a decimal string, or a number up to 2^53-1." },
    ),
  },
  strict,
);

const SkipId = Type.Object(
  { id: Type.String({ pattern: "^[0-9]{1,19}$", description: "Skip request id." }) },
  strict,
);

const SkipResponse = Type.Object({
  id: Type.String(),
  subscription: Type.String(),
  topic: Type.String(),
  partition: Type.Integer(),
  offset: Type.String(),
  status: Type.Union([Type.Literal("pending"), Type.Literal("applied")]),
  requestedBy: Type.String(),
  requestedAt: Type.String(),
  appliedAt: Type.Union([Type.String(), Type.Null()]),
  appliedBy: Type.Union([Type.String(), Type.Null()]),
  deadLetterId: Type.Union([Type.String(), Type.Null()]),
});

/** The offset as a canonical decimal string, or a 400 naming `offset`. */
export function parseOffset(raw: string | number): string {
  if (typeof raw === "number") {
    if (!Number.isSafeInteger(raw) || raw < 0) {
      throw invalidField(
        "offset",
        `body field offset must be a whole number from 0 to 2^53-1 as a JSON number (give larger offsets as a decimal string); got ${raw}.`,
      );
    }
    return String(raw);
  }
  const value = BigInt(raw);
  if (value > maxOffset) {
    throw invalidField(
      "offset",
      `body field offset must be at most ${maxOffset} (a Kafka offset is int64); got ${raw}.`,
    );
  }
  return value.toString();
}

/**
 * Checks the request against what the subscription's instances last published: the
 * partition must be one they report, the offset below its high watermark (a stuck
 * record is always in the log) and not below the committed offset (already done).
 */
function checkAgainstStatus(rows: SubscriptionStatusRow[], partition: number, offset: string): void {
  const reported = rows.flatMap((r) => r.state.partitions ?? []).filter((p) => p.partition === partition);
  const known = rows.some((r) => (r.state.partitions ?? []).length > 0);
  if (known && reported.length === 0) {
    const partitions = [...new Set(rows.flatMap((r) => (r.state.partitions ?? []).map((p) => p.partition)))];
    throw invalidField(
      "partition",
      `body field partition ${partition} is not a partition of subscription ${rows[0]!.subscription} (it reports ${partitions.sort((a, b) => a - b).join(", ")}).`,
    );
  }
  const wanted = BigInt(offset);
  for (const p of reported) {
    if (/^\d+$/.test(p.highWatermark) && wanted >= BigInt(p.highWatermark)) {
      throw invalidField(
        "offset",
        `body field offset ${offset} is past the end of partition ${partition} (high watermark ${p.highWatermark} when last reported); give the offset of the stuck record.`,
      );
    }
    if (/^\d+$/.test(p.committedOffset) && wanted < BigInt(p.committedOffset)) {
      throw conflict(
        `the subscription has already committed partition ${partition} up to offset ${p.committedOffset}; offset ${offset} is done and needs no skip.`,
      );
    }
  }
}

/** Registers the skip routes (operator key). `who` names the operator recorded with a request. */
export function registerSkipRoutes(
  app: ApiApp,
  deps: { pool: pg.Pool; who: (principal: { kind: string; name?: string }) => string },
): void {
  const { pool, who } = deps;
  const operator = { access: "operator" } as const;
  const errors = { ...commonErrors, 404: ErrorResponse, 409: ErrorResponse };

  app.post(
    "/v1/subscriptions/:subscription/skip",
    {
      config: operator,
      schema: {
        tags: ["operator"],
        summary:
          "Ask the subscription to turn the record at (partition, offset) into a dead letter of class `operator` and move on. Answers 202 with the request; poll GET /v1/subscriptions/skips/:id until `appliedAt` is set.",
        params: SkipParams,
        body: SkipBody,
        response: { 202: SkipResponse, ...errors },
      },
    },
    async (request, reply) => {
      const { subscription } = request.params;
      const { partition } = request.body;
      const offset = parseOffset(request.body.offset);
      const rows = (await listSubscriptionStatus(pool)).filter((r) => r.subscription === subscription);
      if (rows.length === 0) {
        throw notFound(
          `subscription ${subscription} has not reported any status; check the name with GET /v1/subscriptions (or \`chatbus subscriptions\`).`,
        );
      }
      checkAgainstStatus(rows, partition, offset);
      const topic = (rows.find((r) => r.live) ?? rows[0]!).state.topic;
      const by = who(request.principal);
      const skip = await requestSkip(pool, { subscription, topic, partition, offset, requestedBy: by });
      request.log.info(
        { subscription, topic, partition, offset, by, skip: skip.id },
        "operator skip requested",
      );
      return reply.status(202).send(skipJson(skip));
    },
  );

  app.get(
    "/v1/subscriptions/skips/:id",
    {
      config: operator,
      schema: {
        tags: ["operator"],
        summary:
          "One skip request: `status` applied once the owning instance dead-lettered the record (`deadLetterId`).",
        params: SkipId,
        response: { 200: SkipResponse, ...errors },
      },
    },
    async (request) => {
      if (BigInt(request.params.id) > maxOffset) {
        throw invalidField("id", `path parameter id must be at most ${maxOffset}; got ${request.params.id}.`);
      }
      const found = await getSkip(pool, request.params.id);
      if (!found) throw notFound(`skip request ${request.params.id} does not exist.`);
      return skipJson(found);
    },
  );
}
