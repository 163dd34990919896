/**
 * The `dead_letters` table: record, list, replay, discard. Plain functions over a
 * pool so that the runtime, the materialiser and the API share them. SQL is
 * unqualified: it runs in whichever schema the pool's search_path names.
 */

import { ValidationError } from "@chatbus/producer-sdk";
import type pg from "pg";
import { DeadLetterNotFoundError, DeadLetterStateError } from "../errors.ts";
import { storable, storableOrNull } from "./storable-text.ts";
import type {
  DeadLetter,
  DeadLetterFilter,
  DeadLetterInput,
  DeadLetterPage,
  DeadLetterStatus,
  FailureClass,
} from "./types.ts";

/** Anything with `query`: a pool or a client inside a transaction. */
export type Queryable = Pick<pg.Pool, "query">;

interface Row {
  id: string;
  subscription: string;
  topic: string;
  partition: number;
  offset: string;
  record_key: string | null;
  headers: Record<string, string>;
  value: Buffer | null;
  event_id: string | null;
  event_type: string | null;
  conversation_id: string | null;
  failure_class: FailureClass;
  error_code: string;
  error_message: string;
  error_stack: string | null;
  attempts: number;
  first_failed_at: Date;
  last_failed_at: Date;
  status: DeadLetterStatus;
  status_changed_at: Date | null;
  status_changed_by: string | null;
  status_reason: string | null;
  replay_count: number;
  last_replay_error: string | null;
  created_at: Date;
}

const columns = `id::text AS id, subscription, topic, partition, "offset"::text AS "offset", record_key, headers,
  value, event_id, event_type, conversation_id, failure_class, error_code, error_message, error_stack,
  attempts, first_failed_at, last_failed_at, status, status_changed_at, status_changed_by, status_reason,
  replay_count, last_replay_error, created_at`;

/** Maps a `dead_letters` row (selected with the runtime's column list) to a DeadLetter. */
export function toDeadLetter(row: Row): DeadLetter {
  return {
    id: row.id,
    subscription: row.subscription,
    topic: row.topic,
    partition: row.partition,
    offset: row.offset,
    key: row.record_key,
    headers: row.headers,
    value: row.value,
    eventId: row.event_id,
    eventType: row.event_type,
    conversationId: row.conversation_id,
    failureClass: row.failure_class,
    errorCode: row.error_code,
    errorMessage: row.error_message,
    errorStack: row.error_stack,
    attempts: row.attempts,
    firstFailedAt: row.first_failed_at,
    lastFailedAt: row.last_failed_at,
    status: row.status,
    statusChangedAt: row.status_changed_at,
    statusChangedBy: row.status_changed_by,
    statusReason: row.status_reason,
    replayCount: row.replay_count,
    lastReplayError: row.last_replay_error,
    createdAt: row.created_at,
  };
}

/** The column list `toDeadLetter` expects, for modules that select dead letters themselves. */
export const deadLetterColumns = columns;

/**
 * Stores a dead letter. Idempotent on (subscription, topic, partition, offset): a
 * record dead-lettered again (redelivered after a crash) updates the failure details
 * and keeps the one row and its status. Resolves with the row id and whether it is new.
 */
export async function recordDeadLetter(
  pool: Queryable,
  input: DeadLetterInput,
): Promise<{ id: string; created: boolean }> {
  const { rows } = await pool.query<{ id: string; created: boolean }>(
    `INSERT INTO dead_letters (subscription, topic, partition, "offset", record_key, headers, value, event_id,
       event_type, conversation_id, failure_class, error_code, error_message, error_stack, attempts,
       first_failed_at, last_failed_at, handlers_succeeded)
     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)
     ON CONFLICT (subscription, topic, partition, "offset") DO UPDATE SET
       handlers_succeeded = EXCLUDED.handlers_succeeded,
       error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message,
       error_stack = EXCLUDED.error_stack, failure_class = EXCLUDED.failure_class,
       attempts = GREATEST(dead_letters.attempts, EXCLUDED.attempts),
       last_failed_at = GREATEST(dead_letters.last_failed_at, EXCLUDED.last_failed_at)
     RETURNING id::text AS id, (xmax = 0) AS created`,
    [
      input.subscription,
      input.topic,
      input.partition,
      input.offset,
      storableOrNull(input.key),
      storable(JSON.stringify(input.headers)),
      input.value,
      storableOrNull(input.eventId),
      storableOrNull(input.eventType),
      storableOrNull(input.conversationId),
      input.failureClass,
      storable(input.errorCode),
      storable(input.errorMessage),
      storableOrNull(input.errorStack),
      input.attempts,
      input.firstFailedAt,
      input.lastFailedAt,
      input.handlersSucceeded ?? [],
    ],
  );
  return rows[0]!;
}

const statuses: readonly DeadLetterStatus[] = ["waiting", "replaying", "replayed", "discarded"];

/**
 * Dead letters, newest first (by id, which only grows), optionally of one
 * subscription and status; paginated by cursor. The cursor is the last id of a page
 * and the next page starts strictly below it, so paging visits every dead letter that
 * existed when it started exactly once, in strictly descending order, even while new
 * ones are recorded (they get higher ids: a new listing shows them first). A dead
 * letter whose status changes mid-way leaves or enters a status-filtered listing.
 */
export async function listDeadLetters(pool: Queryable, filter: DeadLetterFilter): Promise<DeadLetterPage> {
  const { subscription, status, limit, cursor } = filter;
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
    throw new ValidationError("limit", "range", `\`limit\` must be an integer from 1 to 1000; got ${limit}.`);
  }
  if (status !== undefined && !statuses.includes(status)) {
    throw new ValidationError(
      "status",
      "enum",
      `\`status\` must be one of ${statuses.join(", ")}; got ${JSON.stringify(status)}.`,
    );
  }
  if (
    cursor !== undefined &&
    cursor !== null &&
    (!/^\d{1,19}$/.test(cursor) || BigInt(cursor) > 9_223_372_036_854_775_807n)
  ) {
    throw new ValidationError(
      "cursor",
      "format",
      "`cursor` must be the nextCursor of a previous page (digits).",
    );
  }
  // Only the filters given, so that the planner picks the primary key or
  // dead_letters_by_subscription_status instead of a generic plan over `$1 IS NULL OR ...`.
  const params: unknown[] = [];
  const where: string[] = [];
  const param = (value: unknown) => {
    params.push(value);
    return `$${params.length}`;
  };
  if (subscription !== undefined) where.push(`subscription = ${param(subscription)}`);
  if (status !== undefined) where.push(`status = ${param(status)}`);
  if (cursor !== undefined && cursor !== null) where.push(`id < ${param(cursor)}::bigint`);
  const { rows } = await pool.query<Row>(
    // `dead_letters.id`, not `id`: the select list renames `id::text AS id`, and ORDER BY
    // would take that text alias (then "997" sorts above "12000" and the cursor skips rows).
    `SELECT ${columns} FROM dead_letters ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""}
     ORDER BY dead_letters.id DESC LIMIT ${param(limit)}`,
    params,
  );
  const items = rows.map(toDeadLetter);
  return { items, nextCursor: items.length === limit ? items[items.length - 1]!.id : null };
}

/** One dead letter by id, or null. */
export async function getDeadLetter(pool: Queryable, id: string): Promise<DeadLetter | null> {
  checkId(id);
  const { rows } = await pool.query<Row>(`SELECT ${columns} FROM dead_letters WHERE id = $1`, [id]);
  return rows[0] ? toDeadLetter(rows[0]) : null;
}

function checkId(id: string): void {
  if (typeof id !== "string" || !/^\d{1,19}$/.test(id)) {
    throw new ValidationError(
      "id",
      "format",
      `a dead letter id is a positive integer; got ${JSON.stringify(id)}.`,
    );
  }
}

async function transition(
  pool: Queryable,
  id: string,
  to: DeadLetterStatus,
  action: string,
  by: string,
  reason: string | null,
  allHandlers = false,
): Promise<DeadLetter> {
  checkId(id);
  if (typeof by !== "string" || by.length === 0) {
    throw new ValidationError("by", "required", "`by` must name who does this (an operator or service).");
  }
  const { rows } = await pool.query<Row>(
    `UPDATE dead_letters SET status = $2, status_changed_at = now(), status_changed_by = $3,
       status_reason = $4, claimed_by = NULL, claimed_at = NULL, replay_all_handlers = $5
     WHERE id = $1 AND status = 'waiting'
     RETURNING ${columns}`,
    [id, to, by, reason, allHandlers],
  );
  if (rows[0]) return toDeadLetter(rows[0]);
  const existing = await getDeadLetter(pool, id);
  if (!existing) throw new DeadLetterNotFoundError(id);
  throw new DeadLetterStateError(id, existing.status, action);
}

/** Options of a replay. */
export interface ReplayOptions {
  /** Who asks (an operator or service). */
  by: string;
  /**
   * Run every handler of the subscription again, also those that had already
   * succeeded for the event (default false: only those that had not).
   */
  allHandlers?: boolean;
}

/**
 * Asks the dead letter's own subscription to handle it again: the row becomes
 * `replaying`; the runtime instance that owns the record's partition picks it up
 * (within about a second), runs it in the conversation's queue (never at the same
 * time as a live event of that conversation), runs once each handler that had not
 * succeeded (every handler with `allHandlers`), and marks it `replayed` (or `waiting`
 * again with `lastReplayError`). Only `waiting` dead letters can be replayed.
 */
export function replayDeadLetter(pool: Queryable, id: string, options: ReplayOptions): Promise<DeadLetter> {
  if (options.allHandlers !== undefined && typeof options.allHandlers !== "boolean") {
    throw new ValidationError("allHandlers", "type", "`allHandlers` must be true or false.");
  }
  return transition(pool, id, "replaying", "replayed", options.by, null, options.allHandlers === true);
}

/** Marks a waiting dead letter `discarded`, recording who did it and why. Never deletes. */
export function discardDeadLetter(
  pool: Queryable,
  id: string,
  options: { by: string; reason?: string },
): Promise<DeadLetter> {
  return transition(pool, id, "discarded", "discarded", options.by, options.reason ?? null);
}

/** Replays every waiting dead letter of one subscription; resolves with how many. */
export async function replayAllDeadLetters(
  pool: Queryable,
  subscription: string,
  options: ReplayOptions,
): Promise<{ count: number }> {
  if (typeof options.by !== "string" || options.by.length === 0) {
    throw new ValidationError("by", "required", "`by` must name who does this (an operator or service).");
  }
  const result = await pool.query(
    `UPDATE dead_letters SET status = 'replaying', status_changed_at = now(), status_changed_by = $2,
       status_reason = NULL, claimed_by = NULL, claimed_at = NULL, replay_all_handlers = $3
     WHERE subscription = $1 AND status = 'waiting'`,
    [subscription, options.by, options.allHandlers === true],
  );
  return { count: result.rowCount ?? 0 };
}

/** Waiting dead letters per subscription (for gauges and the subscriptions view). */
export async function countWaitingDeadLetters(pool: Queryable): Promise<Record<string, number>> {
  const { rows } = await pool.query<{ subscription: string; n: number }>(
    "SELECT subscription, count(*)::int AS n FROM dead_letters WHERE status = 'waiting' GROUP BY subscription",
  );
  return Object.fromEntries(rows.map((r) => [r.subscription, r.n]));
}

// ---- replay claims ----------------------------------------------------------------
//
// A `replaying` dead letter is claimed by one instance (`claimed_by`, `claimed_at`)
// before it is run again; a claim not renewed within its time to live can be taken
// by another instance. The runtime and the materialiser both replay through these.

/** A dead letter claimed for replay: what it takes to run the record again. */
export interface ReplayClaim {
  id: string;
  record_key: string | null;
  headers: Record<string, string>;
  value: Buffer | null;
  partition: number;
  offset: string;
  conversation_id: string | null;
  handlers_succeeded: number[];
  replay_all_handlers: boolean;
}

/** Which `replaying` dead letters `claimReplays` may take. */
export interface ClaimFilter {
  subscription: string;
  /** Who claims (an instance id); the claim is released and marked by it only. */
  instanceId: string;
  /** A claim older than this (ms) was abandoned and may be taken again. */
  claimTtlMs: number;
  /** Only dead letters of this topic and these partitions (the ones this instance owns). */
  topic?: string;
  partitions?: number[];
  /** Ids not to claim (held already). */
  exclude?: string[];
  /** At most this many (default 20). */
  limit?: number;
}

/**
 * Claims `replaying` dead letters of a subscription that nobody holds (or whose
 * claim expired), oldest first; concurrent claimers skip each other's rows.
 */
export async function claimReplays(pool: Queryable, filter: ClaimFilter): Promise<ReplayClaim[]> {
  const params: unknown[] = [filter.subscription, filter.instanceId, filter.claimTtlMs];
  const param = (value: unknown) => {
    params.push(value);
    return `$${params.length}`;
  };
  // Only the filters given, as in listDeadLetters: no generic plan over `$n IS NULL OR ...`.
  const where = ["subscription = $1", "status = 'replaying'"];
  if (filter.topic !== undefined) where.push(`topic = ${param(filter.topic)}`);
  if (filter.partitions !== undefined) where.push(`partition = ANY(${param(filter.partitions)}::int[])`);
  where.push(
    "(claimed_at IS NULL OR claimed_at < now() - make_interval(secs => $3::double precision / 1000))",
  );
  if (filter.exclude !== undefined) where.push(`NOT (id::text = ANY(${param(filter.exclude)}::text[]))`);
  const { rows } = await pool.query<ReplayClaim>(
    `UPDATE dead_letters d SET claimed_by = $2, claimed_at = now()
     FROM (SELECT id FROM dead_letters WHERE ${where.join(" AND ")}
           ORDER BY id LIMIT ${param(filter.limit ?? 20)} FOR UPDATE SKIP LOCKED) c
     WHERE d.id = c.id
     RETURNING d.id::text AS id, d.record_key, d.headers, d.value, d.partition, d."offset"::text AS "offset",
       d.conversation_id, d.handlers_succeeded, d.replay_all_handlers`,
    params,
  );
  return rows;
}

/** Renews `instanceId`'s claims on these dead letters, so that a long replay is never claimed twice. */
export async function renewReplayClaims(pool: Queryable, ids: string[], instanceId: string): Promise<void> {
  await pool.query(
    "UPDATE dead_letters SET claimed_at = now() WHERE id::text = ANY($1::text[]) AND claimed_by = $2 AND status = 'replaying'",
    [ids, instanceId],
  );
}

/** Gives `instanceId`'s claims back: another claimer (the partition's owner) takes them at once. */
export async function releaseReplayClaims(pool: Queryable, ids: string[], instanceId: string): Promise<void> {
  await pool.query(
    "UPDATE dead_letters SET claimed_by = NULL, claimed_at = NULL WHERE id::text = ANY($1::text[]) AND claimed_by = $2",
    [ids, instanceId],
  );
}

/**
 * Writes a replay's outcome (`replayed`, or `waiting` again with the error) and
 * releases the claim; only while `instanceId` still holds it.
 */
export async function markReplayOutcome(
  pool: Queryable,
  id: string,
  instanceId: string,
  status: "replayed" | "waiting",
  error: string | null,
): Promise<void> {
  await pool.query(
    `UPDATE dead_letters SET status = $2, status_changed_at = now(), replay_count = replay_count + 1,
       last_replay_error = $3, claimed_by = NULL, claimed_at = NULL
     WHERE id = $1 AND claimed_by = $4 AND status = 'replaying'`,
    [id, status, error, instanceId],
  );
}
