/** @chatbus/consumer-runtime: handler runtime, dead letters, and the conversation materialiser. */

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
export type { PartitionStatus, SubscriptionState, SubscriptionStatusRow } from "./status/store.ts";
export { listSubscriptionStatus } from "./status/store.ts";
