/**
 * The consumer runtime's error catalogue. Every error has a stable `CHATBUS_*` code,
 * says whether retrying can help (`retryable`) and reads as a sentence a person can
 * act on. Builds on the producer SDK's `ChatBusError` so that callers can catch one base.
 */
import { ChatBusError } from "@chatbus/producer-sdk";

/**
 * Thrown by a handler to say "this event cannot be handled as it is" (a business rule
 * refused it). Retried only as the registration's `businessRetry` says (default: not
 * at all), then dead-lettered. Any other thrown value is a system failure, retried
 * with back-off and never dead-lettered for that reason alone.
 */
export class BusinessError extends ChatBusError {
  constructor(message: string, options: { code?: string; cause?: unknown } = {}) {
    super(options.code ?? "CHATBUS_BUSINESS", message, { retryable: false, cause: options.cause });
  }
}

/** A dead letter id that does not exist (in this schema). */
export class DeadLetterNotFoundError extends ChatBusError {
  readonly id: string;
  constructor(id: string) {
    super("CHATBUS_DEAD_LETTER_NOT_FOUND", `dead letter ${id} does not exist; list them to find the id.`, {
      retryable: false,
    });
    this.id = id;
  }
}

/** The dead letter is not in a status that allows the requested change. */
export class DeadLetterStateError extends ChatBusError {
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
export class DeadLetterWriteError extends ChatBusError {
  /** Why the event became a dead letter. */
  readonly original: unknown;
  /** Why storing it failed. */
  readonly writeError: unknown;
  constructor(where: string, original: unknown, writeError: unknown) {
    super(
      "CHATBUS_DEAD_LETTER_WRITE",
      `writing a dead letter to ${where} failed (${describe(writeError)}) while dead-lettering an event that failed with: ${describe(original)}. The runtime retries the write; check ${where}.`,
      { retryable: true, cause: writeError },
    );
    this.original = original;
    this.writeError = writeError;
  }
}

/** The runtime was used in a way its lifecycle does not allow (e.g. `on` after `start`). */
export class RuntimeStateError extends ChatBusError {
  constructor(message: string) {
    super("CHATBUS_RUNTIME_STATE", message, { retryable: false });
  }
}

/** A dependency (Kafka, PostgreSQL) could not be reached at start. */
export class DependencyUnavailableError extends ChatBusError {
  constructor(message: string, cause?: unknown) {
    super("CHATBUS_DEPENDENCY_UNAVAILABLE", message, { retryable: true, cause });
  }
}

/** One line describing any thrown value. */
export function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === "string" ? `${code}: ${error.message}` : `${error.name}: ${error.message}`;
  }
  return String(error);
}
