/**
 * The failure policy of one handler call, as a pure decision (watermill keeps retry
 * and poison handling as small policies of their own; this is ours): given what a
 * handler threw and how many failures of that kind the event has had, retry after a
 * delay, dead-letter, or hold (the breaker refused the call: nothing failed, wait for
 * it). No Kafka, no PostgreSQL, no clock: the runtime counts the failures (business
 * ones in PostgreSQL, so that redelivery does not reset them, review R3), asks here,
 * and does the logging, metrics and writes itself.
 */

import type { FailureClass } from "../dead-letters/types.ts";
import { BusinessError } from "../errors.ts";
import { BreakerOpenError } from "./circuit-breaker.ts";
import {
  type BusinessRetryOptions,
  businessRetryDelay,
  type SystemRetryOptions,
  systemRetryDelay,
} from "./retry.ts";

/** The retry settings that apply to one handler call. */
export interface FailurePolicy {
  /** The subscription's back-off of system failures. */
  systemRetry: SystemRetryOptions;
  /** The registration's business retry. */
  businessRetry: BusinessRetryOptions;
  /** Source of the back-off jitter (0..1); injectable for tests. */
  random?: () => number;
}

/** What to do after a failed call. */
export type FailureDecision =
  /** Run the event again after `delayMs`; the conversation waits. */
  | { action: "retry"; failureClass: "business" | "system"; delayMs: number }
  /** Give up: the event becomes a dead letter with this code, message and stack. */
  | {
      action: "dead-letter";
      failureClass: Extract<FailureClass, "business" | "system">;
      code: string;
      message: string;
      stack: string | null;
    }
  /** Not a failure of the handler (the breaker refused the call): wait, count nothing. */
  | { action: "hold" };

/**
 * Which failure counter an error advances: `business` for a BusinessError, `hold`
 * for a call the breaker refused (no counter), `system` for anything else (a
 * timeout, a crash, a dependency down).
 */
export function failureKind(error: unknown): "business" | "system" | "hold" {
  if (error instanceof BreakerOpenError) return "hold";
  if (error instanceof BusinessError) return "business";
  return "system";
}

/**
 * Decides after a failed call. `attempt` is the number of failures of the error's
 * kind (see `failureKind`) this event has had, this one included (1 = the first):
 * business failures per registration, system failures in a row (a success resets
 * them; kafkajs #1592).
 */
export function decideFailure(error: unknown, attempt: number, policy: FailurePolicy): FailureDecision {
  const kind = failureKind(error);
  if (kind === "hold") return { action: "hold" };
  if (kind === "business") {
    const business = error as BusinessError;
    const delayMs = businessRetryDelay(attempt, policy.businessRetry);
    if (delayMs !== null) return { action: "retry", failureClass: "business", delayMs };
    return {
      action: "dead-letter",
      failureClass: "business",
      code: business.code,
      message: business.message,
      stack: business.stack ?? null,
    };
  }
  const max = policy.systemRetry.maxAttempts;
  if (max > 0 && attempt >= max) {
    const e = error as { code?: unknown; message?: unknown; stack?: unknown };
    return {
      action: "dead-letter",
      failureClass: "system",
      code: typeof e?.code === "string" ? e.code : "CHATBUS_SYSTEM_FAILURE",
      message: typeof e?.message === "string" ? e.message : String(error),
      stack: typeof e?.stack === "string" ? e.stack : null,
    };
  }
  return {
    action: "retry",
    failureClass: "system",
    delayMs: systemRetryDelay(attempt, policy.systemRetry, policy.random),
  };
}
