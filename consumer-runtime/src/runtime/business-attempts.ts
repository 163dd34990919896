/**
 * Business-failure counts per (subscription, record, handler) in PostgreSQL
 * (`business_attempts`, migration 004). In memory they reset whenever a rebalance or
 * restart redelivers the record, so an event that keeps failing was never
 * dead-lettered and held its conversation for ever (review R3).
 */
import type { Queryable } from "../dead-letters/store.ts";

/** Identifies one handler's attempts at one record. */
export interface AttemptKey {
  subscription: string;
  topic: string;
  partition: number;
  /** Decimal string. */
  offset: string;
  /** The registration's index in the subscription. */
  handler: number;
}

/** Counts one more business failure and resolves with the total so far. */
export async function countBusinessFailure(db: Queryable, key: AttemptKey): Promise<number> {
  const { rows } = await db.query<{ failures: number }>(
    `INSERT INTO business_attempts (subscription, topic, partition, "offset", handler, failures)
     VALUES ($1, $2, $3, $4::bigint, $5, 1)
     ON CONFLICT (subscription, topic, partition, "offset", handler)
     DO UPDATE SET failures = business_attempts.failures + 1, updated_at = now()
     RETURNING failures`,
    [key.subscription, key.topic, key.partition, key.offset, key.handler],
  );
  return rows[0]!.failures;
}

/** Forgets a record's counts (it succeeded or became a dead letter). */
export async function clearBusinessFailures(
  db: Queryable,
  record: Omit<AttemptKey, "handler">,
): Promise<void> {
  await db.query(
    `DELETE FROM business_attempts WHERE subscription = $1 AND topic = $2 AND partition = $3 AND "offset" = $4::bigint`,
    [record.subscription, record.topic, record.partition, record.offset],
  );
}
