/**
 * The operator routes (the operator key): subscription status summed across instances,
 * operator skips (subscription-skips.ts) and dead letters (dead-letters.ts).
 */
import {
  countWaitingDeadLetters,
  listSubscriptionStatus,
  type PartitionStatus,
  pendingSkips,
  type StuckRecord,
  type SubscriptionStatusRow,
} from "@chatbus/consumer-runtime/operator";
import { Type } from "@sinclair/typebox";
import type pg from "pg";
import type { ApiApp } from "../app.ts";
import { registerDeadLetterRoutes } from "./dead-letters.ts";
import { commonErrors } from "./schemas.ts";
import { registerSkipRoutes, type SkipJson, skipJson } from "./subscription-skips.ts";

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

/** A subscription with dead letters waiting but no status row: none of its instances runs. */
function stoppedSummary(subscription: string, waiting: number): ReturnType<typeof summariseSubscription> {
  return {
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
    deadLettersWaiting: waiting,
    instances: [],
  };
}

/** Every subscription's summary, those with dead letters but no status row included. */
async function listSubscriptions(pool: pg.Pool): Promise<ReturnType<typeof summariseSubscription>[]> {
  const [rows, waiting] = await Promise.all([listSubscriptionStatus(pool), countWaitingDeadLetters(pool)]);
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
    if (!bySubscription.has(subscription)) subscriptions.push(stoppedSummary(subscription, n));
  }
  return subscriptions;
}

/** Subscriptions and dead letters, for operators (the operator key). Every change records who made it. */
export function registerOperatorRoutes(app: ApiApp, deps: { pool: pg.Pool }): void {
  const { pool } = deps;
  const operator = { access: "operator" } as const;
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
    async () => ({ subscriptions: await listSubscriptions(pool) }),
  );
  registerSkipRoutes(app, { pool, who });
  registerDeadLetterRoutes(app, { pool, who });
}
