/**
 * @chatbus/consumer-runtime: run chat event handlers with per-conversation order,
 * retries, circuit breakers and dead letters.
 *
 * The conversation materialiser is `@chatbus/consumer-runtime/materialiser`; the
 * operator functions (subscription status, dead letters, skips) are
 * `@chatbus/consumer-runtime/operator`. Anything not exported here is internal.
 */

export type { MigrationResult } from "./database/migrate.ts";
export { ensureDatabase, migrate } from "./database/migrate.ts";
export type {
  DeadLetter,
  DeadLetterFilter,
  DeadLetterPage,
  DeadLetterStatus,
  FailureClass,
} from "./dead-letters/types.ts";
/** The runtime's error catalogue: every code, and the union of its error classes. */
export type { RuntimeError, RuntimeErrorCode } from "./errors.ts";
export {
  BusinessError,
  DeadLetterNotFoundError,
  DeadLetterStateError,
  DeadLetterWriteError,
  DependencyUnavailableError,
  RuntimeStateError,
  runtimeErrorCodes,
} from "./errors.ts";
export type { RuntimeProcess } from "./process.ts";
export { startRuntimeProcess } from "./process.ts";
export type { Alert } from "./runtime/alerts.ts";
export type { BreakerOptions, BreakerState } from "./runtime/circuit-breaker.ts";
export { BreakerOpenError, breakerDefaults } from "./runtime/circuit-breaker.ts";
export type { AbortReason } from "./runtime/handler-call.ts";
export { HandlerTimeoutError } from "./runtime/handler-call.ts";
export type { RuntimeMetrics } from "./runtime/metrics.ts";
export { latencyBuckets, runtimeMetrics } from "./runtime/metrics.ts";
export type { RegistrationOptions, RuntimeOptions } from "./runtime/options.ts";
export { runtimeDefaults } from "./runtime/options.ts";
export type { BusinessRetryOptions, SystemRetryOptions } from "./runtime/retry.ts";
export { businessRetryDefaults, systemRetryDefaults } from "./runtime/retry.ts";
export type { Handler, HandlerContext, Runtime } from "./runtime/runtime.ts";
export { createRuntime } from "./runtime/runtime.ts";
export type { ShutdownOptions, Stoppable } from "./runtime/shutdown.ts";
export { stopOnSignals } from "./runtime/shutdown.ts";
