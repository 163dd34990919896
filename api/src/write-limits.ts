/**
 * Write rate limits that hold across every API process: token buckets kept in
 * PostgreSQL (`api_rate_buckets`, migration 006) and taken with one call of
 * `chatbus_take_tokens`, which takes a token from every bucket of a write or from
 * none. One round trip per write; why PostgreSQL and what it costs the send path is
 * in docs/decisions.md ("Rate limits across API processes").
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

/**
 * The shared limiter. `pool` is the chatbus database; every API process of a
 * deployment must use the same one (they do: it holds the projection).
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
  return {
    async admit(request) {
      const buckets = bucketsOf(request, limits);
      if (buckets.length === 0) return;
      let verdict: { wait: number; short: string[] } | undefined;
      try {
        const { rows } = await pool.query<{ wait: number; short: string[] }>(
          "SELECT wait, short FROM chatbus_take_tokens($1::text[], $2::float8[], $3::float8[], $4::float8[])",
          [
            buckets.map((b) => b.key),
            buckets.map((b) => b.rate),
            buckets.map((b) => Math.max(1, b.rate * limits.burstSeconds)),
            buckets.map((b) => b.needed),
          ],
        );
        verdict = rows[0];
      } catch (error) {
        logger.warn(
          { err: error },
          "the rate-limit check failed: PostgreSQL is down, or migration 006 (api_rate_buckets) is not applied yet (start the runtime or run migrate)",
        );
        throw unavailable(
          "CHATBUS_POSTGRES_UNAVAILABLE",
          "the rate limits (kept in PostgreSQL) could not be checked; retry shortly.",
          error,
        );
      }
      if (verdict && verdict.wait > 0) {
        const names = buckets
          .filter((b) => verdict.short.includes(b.key))
          .map((b) => b.label)
          .join(" and ");
        throw rateLimited(
          `over the rate limit of ${names || "this write"}; retry after the Retry-After seconds.`,
          Math.ceil(verdict.wait * 1000),
        );
      }
    },
    close() {
      clearInterval(sweep);
    },
  };
}
