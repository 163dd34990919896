/**
 * Write rate limits that hold across every API process: token buckets kept in
 * PostgreSQL (`api_rate_buckets`, migration 006) and taken with one call of
 * `chatbus_take_tokens_batch` (migration 009), which takes a token from every bucket
 * of a write or from none. Writes that arrive together share one round trip (group
 * commit); why PostgreSQL and what it costs the send path is in docs/decisions.md
 * ("Rate limits across API processes").
 *
 * Buckets: each user has one for messages and one for other writes (creating
 * conversations, member changes, edits, recalls, read receipts); each conversation
 * has one for messages (its direct or group rate) and one for other writes.
 */
import type { Priority } from "@chatbus/producer-sdk";
import type pg from "pg";
import type { Logger } from "pino";
import type { ApiConfig } from "./config.ts";
import { rateLimited, unavailable } from "./errors.ts";

/** What one write asks of the limits. */
export type WriteRequest =
  | {
      what: "message";
      /** The user who sends; absent for a service key (only the conversation is limited). */
      userId?: string;
      conversationId: string;
      conversationKind: "direct" | "group";
      priority: Priority;
    }
  | {
      what: "write";
      userId: string;
      /** Absent when the write creates the conversation. */
      conversationId?: string;
      /** Named in the 429 message, e.g. "read receipts". */
      action: string;
    };

/** Admits writes or throws the 429 (`Retry-After`) that names the limit. */
export interface WriteLimiter {
  admit(request: WriteRequest): Promise<void>;
  /** Stops the periodic clean-up of idle buckets. */
  close(): void;
}

interface Bucket {
  key: string;
  rate: number;
  needed: number;
  /** The limit in words, for the 429. */
  label: string;
}

/** A limiter that admits everything (`rateLimits.enabled: false`). */
export const unlimited: WriteLimiter = { admit: async () => {}, close: () => {} };

/** Buckets idle longer than this are full again, so forgetting them changes nothing. */
const idleBucketMs = 10 * 60_000;

/** The buckets a write takes from, sorted by key (the lock order). */
export function bucketsOf(request: WriteRequest, limits: ApiConfig["rateLimits"]): Bucket[] {
  const buckets: Bucket[] = [];
  if (request.what === "message") {
    const perConversation =
      request.conversationKind === "group" ? limits.groupMessagesPerSecond : limits.directMessagesPerSecond;
    // A service's high-priority notice passes (the SPEC: high is let through); users cannot ask for it.
    if (request.priority !== "high") {
      const reserve =
        request.priority === "low" ? perConversation * limits.burstSeconds * limits.lowPriorityReserve : 0;
      buckets.push({
        key: `conversation:${request.conversationId}:messages`,
        rate: perConversation,
        needed: 1 + reserve,
        label: `${perConversation} messages/s in this ${request.conversationKind} conversation`,
      });
    }
    if (request.userId !== undefined) {
      buckets.push({
        key: `user:${request.userId}:messages`,
        rate: limits.userMessagesPerSecond,
        needed: 1,
        label: `${limits.userMessagesPerSecond} messages/s per user`,
      });
    }
  } else {
    buckets.push({
      key: `user:${request.userId}:writes`,
      rate: limits.userWritesPerSecond,
      needed: 1,
      label: `${limits.userWritesPerSecond} ${request.action} and other writes/s per user`,
    });
    if (request.conversationId !== undefined) {
      buckets.push({
        key: `conversation:${request.conversationId}:writes`,
        rate: limits.conversationWritesPerSecond,
        needed: 1,
        label: `${limits.conversationWritesPerSecond} ${request.action} and other writes/s per conversation`,
      });
    }
  }
  return buckets.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** A write waiting for the next batch. */
interface Pending {
  buckets: Bucket[];
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * Most writes one `chatbus_take_tokens_batch` call decides. Bounds the statement's
 * arrays; a busier process sends the rest in the next call.
 */
const maxBatch = 512;

/**
 * The shared limiter. `pool` is the chatbus database; every API process of a
 * deployment must use the same one (they do: it holds the projection).
 *
 * Group commit: at most one `chatbus_take_tokens_batch` call is in flight per
 * process; writes that arrive meanwhile wait and go together in the next call, which
 * decides them in arrival order exactly as one call per write would (migration 009).
 * Under load that is one round trip and one lock of each hot row per batch instead
 * of per write; alone, a write pays the same single round trip as before.
 */
export function createWriteLimiter(
  pool: pg.Pool,
  limits: ApiConfig["rateLimits"],
  logger: Logger,
): WriteLimiter {
  if (!limits.enabled) return unlimited;
  const sweep = setInterval(() => {
    pool
      .query("DELETE FROM api_rate_buckets WHERE updated_at < now() - $1::interval", [
        `${idleBucketMs} milliseconds`,
      ])
      .catch((error: unknown) => logger.warn({ err: error }, "clearing idle rate-limit buckets failed"));
  }, idleBucketMs / 2);
  sweep.unref();
  let queue: Pending[] = [];
  let inFlight = false;

  const flush = () => {
    if (inFlight || queue.length === 0) return;
    const batch = queue.length > maxBatch ? queue.slice(0, maxBatch) : queue;
    queue = queue.length > maxBatch ? queue.slice(maxBatch) : [];
    inFlight = true;
    decide(pool, limits, batch)
      .then(
        (verdicts) => settle(batch, verdicts),
        (error: unknown) => {
          logger.warn(
            { err: error, writes: batch.length },
            "the rate-limit check failed: PostgreSQL is down, or migration 009 (chatbus_take_tokens_batch) is not applied yet (start the runtime or run migrate)",
          );
          for (const write of batch) {
            write.reject(
              unavailable(
                "CHATBUS_POSTGRES_UNAVAILABLE",
                "the rate limits (kept in PostgreSQL) could not be checked; retry shortly.",
                error,
              ),
            );
          }
        },
      )
      .finally(() => {
        inFlight = false;
        flush();
      });
  };

  return {
    admit(request) {
      const buckets = bucketsOf(request, limits);
      if (buckets.length === 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        queue.push({ buckets, resolve, reject });
        flush();
      });
    },
    close() {
      clearInterval(sweep);
    },
  };
}

/** One write's verdict: `wait` 0 when admitted, else seconds and the short buckets. */
interface Verdict {
  wait: number;
  short: string[];
}

/** One round trip: the batch's verdicts, in the batch's order. */
async function decide(pool: pg.Pool, limits: ApiConfig["rateLimits"], batch: Pending[]): Promise<Verdict[]> {
  const slotOf = new Map<string, number>();
  const keys: string[] = [];
  const rates: number[] = [];
  const capacities: number[] = [];
  const requests: number[] = [];
  const slots: number[] = [];
  const needed: number[] = [];
  batch.forEach((write, index) => {
    for (const bucket of write.buckets) {
      let slot = slotOf.get(bucket.key);
      if (slot === undefined) {
        keys.push(bucket.key);
        rates.push(bucket.rate);
        capacities.push(Math.max(1, bucket.rate * limits.burstSeconds));
        slot = keys.length; // 1-based, as PostgreSQL arrays
        slotOf.set(bucket.key, slot);
      }
      requests.push(index + 1);
      slots.push(slot);
      needed.push(bucket.needed);
    }
  });
  const { rows } = await pool.query<{ request: number; wait: number; short: string[] }>(
    "SELECT request, wait, short FROM chatbus_take_tokens_batch($1::text[], $2::float8[], $3::float8[], $4::int4[], $5::int4[], $6::float8[])",
    [keys, rates, capacities, requests, slots, needed],
  );
  const verdicts: Verdict[] = new Array(batch.length);
  for (const row of rows) verdicts[row.request - 1] = row;
  if (rows.length !== batch.length) throw new Error(`${rows.length} verdicts for ${batch.length} writes`);
  return verdicts;
}

/** Admits or refuses each write of a decided batch. */
function settle(batch: Pending[], verdicts: Verdict[]): void {
  batch.forEach((write, index) => {
    const verdict = verdicts[index]!;
    if (verdict.wait <= 0) {
      write.resolve();
      return;
    }
    const names = write.buckets
      .filter((b) => verdict.short.includes(b.key))
      .map((b) => b.label)
      .join(" and ");
    write.reject(
      rateLimited(
        `over the rate limit of ${names || "this write"}; retry after the Retry-After seconds.`,
        Math.ceil(verdict.wait * 1000),
      ),
    );
  });
}
