/**
 * `@chatbus/consumer-runtime/operator`: what an operator does to running
 * subscriptions, as the API's operator routes and the `chatbus` command do it:
 * read their status, list, replay and discard dead letters, request skips.
 * Writing a dead letter (`recordDeadLetter`) is the runtime's own business.
 */

export type { ReplayOptions } from "../dead-letters/store.ts";
export {
  countWaitingDeadLetters,
  discardDeadLetter,
  getDeadLetter,
  listDeadLetters,
  replayAllDeadLetters,
  replayDeadLetter,
} from "../dead-letters/store.ts";
export type {
  DeadLetter,
  DeadLetterFilter,
  DeadLetterPage,
  DeadLetterStatus,
  FailureClass,
} from "../dead-letters/types.ts";
export { DeadLetterNotFoundError, DeadLetterStateError } from "../errors.ts";
export type { SkipRequest } from "../status/skips.ts";
export { getSkip, markSkipApplied, pendingSkips, requestSkip } from "../status/skips.ts";
export type {
  PartitionStatus,
  StuckRecord,
  SubscriptionState,
  SubscriptionStatusRow,
} from "../status/store.ts";
export { listSubscriptionStatus } from "../status/store.ts";
