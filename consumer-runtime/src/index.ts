/** @chatbus/consumer-runtime: handler runtime, dead letters, and the conversation materialiser. */

export type { ReplayOptions } from "./dead-letters/store.ts";
export {
  countWaitingDeadLetters,
  discardDeadLetter,
  getDeadLetter,
  listDeadLetters,
  recordDeadLetter,
  replayAllDeadLetters,
  replayDeadLetter,
} from "./dead-letters/store.ts";

// Consumer runtime: dead letters, subscription status, errors.
export type {
  DeadLetter,
  DeadLetterFilter,
  DeadLetterInput,
  DeadLetterPage,
  DeadLetterStatus,
  FailureClass,
} from "./dead-letters/types.ts";
export {
  BusinessError,
  DeadLetterNotFoundError,
  DeadLetterStateError,
  DeadLetterWriteError,
  DependencyUnavailableError,
  RuntimeStateError,
} from "./errors.ts";
export * from "./materialiser/index.ts";
export type { RuntimeProcess } from "./process.ts";
export { startRuntimeProcess } from "./process.ts";
export type { Alert } from "./runtime/alerts.ts";
export type { BreakerOptions, BreakerState } from "./runtime/circuit-breaker.ts";
export { breakerDefaults } from "./runtime/circuit-breaker.ts";
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
export type { SkipRequest } from "./status/skips.ts";
export { getSkip, markSkipApplied, pendingSkips, requestSkip } from "./status/skips.ts";
export type {
  PartitionStatus,
  StuckRecord,
  SubscriptionState,
  SubscriptionStatusRow,
} from "./status/store.ts";
export { listSubscriptionStatus } from "./status/store.ts";
