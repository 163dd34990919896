/**
 * The `subscription_status` table: each running subscription instance upserts its
 * state every ~2 s; readers (the API, the CLI) list it without talking to the process.
 */
import type { Queryable } from "../dead-letters/store.ts";

/** One partition of a subscription as its instance sees it. */
export interface PartitionStatus {
  partition: number;
  /** Next offset to consume as committed in Kafka (decimal string; "-1" when none). */
  committedOffset: string;
  /** The partition's end offset (decimal string). */
  highWatermark: string;
  /** Records not yet committed: highWatermark − committedOffset. */
  lag: number;
  /** Paused by back-pressure or an open breaker. */
  paused: boolean;
}

/**
 * A record that the instance has retried for a system failure for longer than the
 * subscription's `stuckAfterMs` (default 60 s): shown to operators, who can skip it.
 */
export interface StuckRecord {
  partition: number;
  /** Decimal string. */
  offset: string;
  eventType: string | null;
  conversationId: string | null;
  /** The last error's message. */
  error: string;
  attempts: number;
  /** ISO time of the first failure. */
  since: string;
}

/** The `state` JSON each instance publishes (shape fixed by the team contract). */
export interface SubscriptionState {
  group: string;
  topic: string;
  breaker: "closed" | "open" | "halfOpen";
  inFlight: number;
  /** Age in ms of the oldest event started but not finished (null when none). */
  oldestInFlightMs?: number | null;
  /** Records retried for longer than the stuck threshold (empty when none). */
  stuck?: StuckRecord[];
  processed: number;
  failed: number;
  deadLettered: number;
  /** ISO time the instance started. */
  startedAt: string;
  partitions: PartitionStatus[];
}

/** One row of `subscription_status`. */
export interface SubscriptionStatusRow {
  subscription: string;
  instanceId: string;
  state: SubscriptionState;
  lastSeenAt: Date;
  /** True when the instance reported within `staleAfterMs` (default 10 s). */
  live: boolean;
}

/** Upserts one instance's state (called by the runtime every ~2 s). */
export async function publishSubscriptionStatus(
  pool: Queryable,
  subscription: string,
  instanceId: string,
  state: SubscriptionState,
): Promise<void> {
  await pool.query(
    `INSERT INTO subscription_status (subscription, instance_id, state, last_seen_at)
     VALUES ($1, $2, $3, now())
     ON CONFLICT (subscription, instance_id) DO UPDATE SET state = EXCLUDED.state, last_seen_at = now()`,
    [subscription, instanceId, JSON.stringify(state)],
  );
}

/** Removes an instance's row (on graceful stop). */
export async function removeSubscriptionStatus(
  pool: Queryable,
  subscription: string,
  instanceId: string,
): Promise<void> {
  await pool.query("DELETE FROM subscription_status WHERE subscription = $1 AND instance_id = $2", [
    subscription,
    instanceId,
  ]);
}

/**
 * Every published status, by subscription then instance. Rows older than
 * `staleAfterMs` are returned with `live: false` (a crashed instance) so that the
 * caller decides whether to show them.
 */
export async function listSubscriptionStatus(
  pool: Queryable,
  options: { staleAfterMs?: number } = {},
): Promise<SubscriptionStatusRow[]> {
  const staleAfterMs = options.staleAfterMs ?? 10_000;
  const { rows } = await pool.query<{
    subscription: string;
    instance_id: string;
    state: SubscriptionState;
    last_seen_at: Date;
    live: boolean;
  }>(
    `SELECT subscription, instance_id, state, last_seen_at,
       last_seen_at > now() - make_interval(secs => $1::double precision / 1000) AS live
     FROM subscription_status ORDER BY subscription, instance_id`,
    [staleAfterMs],
  );
  return rows.map((r) => ({
    subscription: r.subscription,
    instanceId: r.instance_id,
    state: r.state,
    lastSeenAt: r.last_seen_at,
    live: r.live,
  }));
}
