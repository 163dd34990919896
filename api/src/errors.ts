/**
 * The API package's error catalogue. Every error is a `ChatBusError` (the SDK's base)
 * with a stable `CHATBUS_*` code from `apiErrorCodes`, says whether retrying can help
 * (`retryable`) and reads as a sentence a person can act on. An `ApiError` also has
 * the HTTP status its code maps to; the error handler turns it into
 * `{ error: { code, message } }`. `ConfigError`, `CliError` and `UsageError` are the
 * server's and the `chatbus` command's own failures.
 */
import { ChatBusError } from "@chatbus/producer-sdk";

/** The codes the API answers with over HTTP, with their status and `retryable`. */
export const httpErrors = {
  CHATBUS_VALIDATION: { status: 400, retryable: false },
  CHATBUS_BAD_REQUEST: { status: 400, retryable: false },
  CHATBUS_UNAUTHORIZED: { status: 401, retryable: false },
  CHATBUS_TOKEN_EXPIRED: { status: 401, retryable: false },
  CHATBUS_FORBIDDEN: { status: 403, retryable: false },
  CHATBUS_NOT_FOUND: { status: 404, retryable: false },
  CHATBUS_CONFLICT: { status: 409, retryable: false },
  CHATBUS_PAYLOAD_TOO_LARGE: { status: 413, retryable: false },
  CHATBUS_UNSUPPORTED_MEDIA_TYPE: { status: 415, retryable: false },
  CHATBUS_RATE_LIMITED: { status: 429, retryable: true },
  CHATBUS_INTERNAL: { status: 500, retryable: false },
  CHATBUS_POSTGRES_UNAVAILABLE: { status: 503, retryable: true },
  CHATBUS_NOT_READY: { status: 503, retryable: true },
} as const satisfies Record<string, { status: number; retryable: boolean }>;

/** A code the API answers with over HTTP. */
export type HttpErrorCode = keyof typeof httpErrors;

/**
 * Every code of the API package's errors: those answered over HTTP (`ApiError`), then
 * those of the processes: `ConfigError` (the server cannot start), `CliError` (a
 * `chatbus` command failed) and `UsageError` (a `chatbus` command was called wrongly).
 * Errors of the SDK and the runtime keep their own codes when the API passes them on
 * (e.g. `CHATBUS_BROKER_UNAVAILABLE`, 503).
 */
export const apiErrorCodes = [
  ...(Object.keys(httpErrors) as HttpErrorCode[]),
  "CHATBUS_CONFIG",
  "CHATBUS_CLI",
  "CHATBUS_USAGE",
] as const;

/** A code of the API package's errors. */
export type ApiErrorCode = (typeof apiErrorCodes)[number];

/**
 * An error the API answers with: its HTTP status and `retryable` follow from its code
 * (`httpErrors`), so that a code always means the same answer.
 */
export class ApiError<Code extends HttpErrorCode = HttpErrorCode> extends ChatBusError<Code> {
  /** The HTTP status this error is answered with. */
  readonly statusCode: number;
  /** Dotted path of the offending field for validation errors, e.g. `content.text`. */
  readonly field: string | undefined;

  constructor(code: Code, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(code, message, { retryable: httpErrors[code].retryable, cause: options.cause });
    this.statusCode = httpErrors[code].status;
    this.field = options.field;
  }
}

/** 400: a field of the request broke its schema; nothing was sent. */
export function invalidField(field: string, message: string): ApiError {
  return new ApiError("CHATBUS_VALIDATION", message, { field });
}

/** 401: no credentials, or credentials that are not valid (tampered, unknown key). */
export function unauthorized(
  message: string,
  code: "CHATBUS_UNAUTHORIZED" | "CHATBUS_TOKEN_EXPIRED" = "CHATBUS_UNAUTHORIZED",
): ApiError {
  return new ApiError(code, message);
}

/** 403: valid credentials that do not allow this request. */
export function forbidden(message: string): ApiError {
  return new ApiError("CHATBUS_FORBIDDEN", message);
}

/**
 * 403 for a conversation the caller may not see. One message whether or not the
 * conversation exists, so that non-members learn nothing about it.
 */
export function notAMember(): ApiError {
  return forbidden(
    "you are not a member of this conversation (or it does not exist); ask a member to add you.",
  );
}

/** 404: the thing named in the path does not exist (only for callers allowed to know). */
export function notFound(message: string): ApiError {
  return new ApiError("CHATBUS_NOT_FOUND", message);
}

/** 409: the request conflicts with the current state (e.g. replaying a discarded dead letter). */
export function conflict(message: string): ApiError {
  return new ApiError("CHATBUS_CONFLICT", message);
}

/** 429: over the conversation's rate limit; `Retry-After` says when to try again. */
export function rateLimited(message: string, retryAfterMs: number): ApiError & { retryAfterMs: number } {
  return Object.assign(new ApiError("CHATBUS_RATE_LIMITED", message), {
    retryAfterMs,
  });
}

/** 503: a dependency (Kafka, PostgreSQL) did not answer. */
export function unavailable(
  code: "CHATBUS_POSTGRES_UNAVAILABLE" | "CHATBUS_NOT_READY",
  message: string,
  cause?: unknown,
): ApiError {
  return new ApiError(code, message, { cause });
}

/** The process cannot start: a required setting is missing or invalid. */
export class ConfigError extends ChatBusError<"CHATBUS_CONFIG"> {
  /** The environment variable (or config field) at fault. */
  readonly variable: string;

  constructor(variable: string, message: string) {
    super("CHATBUS_CONFIG", message, { retryable: false });
    this.variable = variable;
  }
}

/**
 * A `chatbus` command failed; its message is shown as one line (exit code 1).
 * Retryable when the API did not answer or answered 429 or 5xx.
 */
export class CliError extends ChatBusError<"CHATBUS_CLI"> {
  constructor(message: string, options: { retryable?: boolean; cause?: unknown } = {}) {
    super("CHATBUS_CLI", message, { retryable: options.retryable ?? false, cause: options.cause });
  }
}

/** A `chatbus` command was called wrongly; shown with the command's usage (exit code 2). */
export class UsageError extends ChatBusError<"CHATBUS_USAGE"> {
  constructor(message: string) {
    super("CHATBUS_USAGE", message, { retryable: false });
  }
}
