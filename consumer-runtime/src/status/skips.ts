/**
 * Operator skip requests (`subscription_skips`): an operator asks that the record a
 * subscription keeps retrying become a dead letter of class `operator`. The API and
 * CLI insert requests; the instance that owns the partition reads the pending ones
 * for its subscription with each status publish and marks them applied.
 */
import type { Queryable } from "../dead-letters/store.ts";

/** One skip request. */
export interface SkipRequest {
  id: string;
  subscription: string;
  topic: string;
  partition: number;
  /** Decimal string. */
  offset: string;
  requestedBy: string;
  requestedAt: Date;
  appliedAt: Date | null;
  appliedBy: string | null;
  deadLetterId: string | null;
}

interface SkipRow {
  id: string;
  subscription: string;
  topic: string;
  partition: number;
  offset: string;
  requested_by: string;
  requested_at: Date;
  applied_at: Date | null;
  applied_by: string | null;
  dead_letter_id: string | null;
}

const columns = `id::text, subscription, topic, partition, "offset"::text AS "offset", requested_by,
  requested_at, applied_at, applied_by, dead_letter_id::text`;

function toSkip(r: SkipRow): SkipRequest {
  return {
    id: r.id,
    subscription: r.subscription,
    topic: r.topic,
    partition: r.partition,
    offset: r.offset,
    requestedBy: r.requested_by,
    requestedAt: r.requested_at,
    appliedAt: r.applied_at,
    appliedBy: r.applied_by,
    deadLetterId: r.dead_letter_id,
  };
}

/** Records a skip request; a repeated request for the same record returns the first. */
export async function requestSkip(
  db: Queryable,
  input: { subscription: string; topic: string; partition: number; offset: string; requestedBy: string },
): Promise<SkipRequest> {
  const { rows } = await db.query<SkipRow>(
    `WITH inserted AS (
       INSERT INTO subscription_skips (subscription, topic, partition, "offset", requested_by)
       VALUES ($1, $2, $3, $4::bigint, $5)
       ON CONFLICT (subscription, topic, partition, "offset") DO NOTHING
       RETURNING ${columns})
     SELECT * FROM inserted
     UNION ALL
     SELECT ${columns} FROM subscription_skips
      WHERE subscription = $1 AND topic = $2 AND partition = $3 AND "offset" = $4::bigint
     LIMIT 1`,
    [input.subscription, input.topic, input.partition, input.offset, input.requestedBy],
  );
  return toSkip(rows[0] as SkipRow);
}

/** Pending (not yet applied) requests of one subscription, oldest first. */
export async function pendingSkips(db: Queryable, subscription: string): Promise<SkipRequest[]> {
  const { rows } = await db.query<SkipRow>(
    `SELECT ${columns} FROM subscription_skips WHERE subscription = $1 AND applied_at IS NULL ORDER BY subscription_skips.id`,
    [subscription],
  );
  return rows.map(toSkip);
}

/** One request by id (null when none). */
export async function getSkip(db: Queryable, id: string): Promise<SkipRequest | null> {
  const { rows } = await db.query<SkipRow>(`SELECT ${columns} FROM subscription_skips WHERE id = $1`, [id]);
  return rows[0] ? toSkip(rows[0]) : null;
}

/** Marks a request applied by `instanceId`, with the dead letter it became. */
export async function markSkipApplied(
  db: Queryable,
  id: string,
  instanceId: string,
  deadLetterId: string | null,
): Promise<void> {
  await db.query(
    "UPDATE subscription_skips SET applied_at = now(), applied_by = $2, dead_letter_id = $3 WHERE id = $1 AND applied_at IS NULL",
    [id, instanceId, deadLetterId],
  );
}
