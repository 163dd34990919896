/**
 * The consumer runtime's error catalogue. Every error has a stable `CHATBUS_*` code,
 * says whether retrying can help (`retryable`) and reads as a sentence a person can
 * act on. Builds on the producer SDK's `ChatBusError` so that callers can catch one base.
 *
 * `runtimeErrorCodes` lists every code and `RuntimeError` is the union of the classes,
 * so a `switch (error.code)` over it is checked by the compiler. Most classes live
 * here; four live beside their only thrower (`HandlerTimeoutError`, `BreakerOpenError`,
 * and the materialiser's `OffsetMovedError`, `OffsetGapError`, `RebuildError`), and
 * errors.unit.test.ts holds the whole catalogue together.
 */
import { ChatBusError, describeError } from "@chatbus/producer-sdk";
import type { OffsetGapError } from "./materialiser/apply-batch.ts";
import type { OffsetMovedError } from "./materialiser/projection-writer.ts";
import type { RebuildError } from "./materialiser/rebuild.ts";
import type { BreakerOpenError } from "./runtime/circuit-breaker.ts";
import type { HandlerTimeoutError } from "./runtime/handler-call.ts";

/** Every code of the runtime's errors (a `BusinessError` may carry its handler's own code instead). */
export const runtimeErrorCodes = [
  "CHATBUS_BUSINESS",
  "CHATBUS_DEAD_LETTER_NOT_FOUND",
  "CHATBUS_DEAD_LETTER_STATE",
  "CHATBUS_DEAD_LETTER_WRITE",
  "CHATBUS_RUNTIME_STATE",
  "CHATBUS_DEPENDENCY_UNAVAILABLE",
  "CHATBUS_HANDLER_TIMEOUT",
  "CHATBUS_BREAKER_OPEN",
  "CHATBUS_OFFSET_MOVED",
  "CHATBUS_OFFSET_GAP",
  "CHATBUS_REBUILD_FAILED",
] as const;

/** A code of the runtime's errors. */
export type RuntimeErrorCode = (typeof runtimeErrorCodes)[number];

/** An error of the consumer runtime itself (every class of the catalogue). */
export type RuntimeError =
  | BusinessError
  | DeadLetterNotFoundError
  | DeadLetterStateError
  | DeadLetterWriteError
  | RuntimeStateError
  | DependencyUnavailableError
  | HandlerTimeoutError
  | BreakerOpenError
  | OffsetMovedError
  | OffsetGapError
  | RebuildError;

/**
 * Thrown by a handler to say "this event cannot be handled as it is" (a business rule
 * refused it). Retried only as the registration's `businessRetry` says (default: not
 * at all), then dead-lettered. Any other thrown value is a system failure, retried
 * with back-off and never dead-lettered for that reason alone.
 */
export class BusinessError<Code extends string = "CHATBUS_BUSINESS"> extends ChatBusError<Code> {
  /**
   * `options.code` is the handler's own code for the refusal (e.g. `ACCOUNT_CLOSED`),
   * stored with the dead letter; without one the code is `CHATBUS_BUSINESS`.
   */
  constructor(message: string, options: { code?: Code; cause?: unknown } = {}) {
    super(options.code ?? ("CHATBUS_BUSINESS" as Code), message, { retryable: false, cause: options.cause });
  }
}

/** A dead letter id that does not exist (in this schema). */
export class DeadLetterNotFoundError extends ChatBusError<"CHATBUS_DEAD_LETTER_NOT_FOUND"> {
  readonly id: string;
  constructor(id: string) {
    super("CHATBUS_DEAD_LETTER_NOT_FOUND", `dead letter ${id} does not exist; list them to find the id.`, {
      retryable: false,
    });
    this.id = id;
  }
}

/** The dead letter is not in a status that allows the requested change. */
export class DeadLetterStateError extends ChatBusError<"CHATBUS_DEAD_LETTER_STATE"> {
  readonly id: string;
  readonly status: string;
  constructor(id: string, status: string, action: string) {
    super(
      "CHATBUS_DEAD_LETTER_STATE",
      `dead letter ${id} is ${status}; only a waiting dead letter can be ${action}.`,
      { retryable: false },
    );
    this.id = id;
    this.status = status;
  }
}

/**
 * Writing a dead letter failed. Carries both the failure that made the event a dead
 * letter and the failure of the write, so that neither is lost; the runtime retries
 * the write (the event is not committed meanwhile).
 */
export class DeadLetterWriteError extends ChatBusError<"CHATBUS_DEAD_LETTER_WRITE"> {
  /** Why the event became a dead letter. */
  readonly original: unknown;
  /** Why storing it failed. */
  readonly writeError: unknown;
  constructor(where: string, original: unknown, writeError: unknown) {
    super(
      "CHATBUS_DEAD_LETTER_WRITE",
      `writing a dead letter to ${where} failed (${describeError(writeError)}) while dead-lettering an event that failed with: ${describeError(original)}. The runtime retries the write; check ${where}.`,
      { retryable: true, cause: writeError },
    );
    this.original = original;
    this.writeError = writeError;
  }
}

/** The runtime was used in a way its lifecycle does not allow (e.g. `on` after `start`). */
export class RuntimeStateError extends ChatBusError<"CHATBUS_RUNTIME_STATE"> {
  constructor(message: string) {
    super("CHATBUS_RUNTIME_STATE", message, { retryable: false });
  }
}

/** A dependency (Kafka, PostgreSQL) could not be reached at start. */
export class DependencyUnavailableError extends ChatBusError<"CHATBUS_DEPENDENCY_UNAVAILABLE"> {
  constructor(message: string, cause?: unknown) {
    super("CHATBUS_DEPENDENCY_UNAVAILABLE", message, { retryable: true, cause });
  }
}
