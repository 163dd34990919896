/**
 * The API's error catalogue. Every error has a stable `CHATBUS_*` code, the HTTP
 * status it maps to, says whether retrying can help, and reads as a sentence a
 * person can act on. The error handler turns each into `{ error: { code, message } }`.
 */

/** Base of every error the API answers with. */
export class ApiError extends Error {
  /** Stable, prefixed code, e.g. `CHATBUS_FORBIDDEN`. */
  readonly code: string;
  /** The HTTP status this error is answered with. */
  readonly statusCode: number;
  /** True when the same request may succeed later unchanged. */
  readonly retryable: boolean;
  /** Dotted path of the offending field for validation errors, e.g. `content.text`. */
  readonly field: string | undefined;

  constructor(
    code: string,
    statusCode: number,
    message: string,
    options: { retryable?: boolean; field?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ApiError";
    this.code = code;
    this.statusCode = statusCode;
    this.retryable = options.retryable ?? false;
    this.field = options.field;
  }
}

/** 400: a field of the request broke its schema; nothing was sent. */
export function invalidField(field: string, message: string): ApiError {
  return new ApiError("CHATBUS_VALIDATION", 400, message, { field });
}

/** 401: no credentials, or credentials that are not valid (tampered, unknown key). */
export function unauthorized(message: string, code = "CHATBUS_UNAUTHORIZED"): ApiError {
  return new ApiError(code, 401, message);
}

/** 403: valid credentials that do not allow this request. */
export function forbidden(message: string): ApiError {
  return new ApiError("CHATBUS_FORBIDDEN", 403, message);
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
  return new ApiError("CHATBUS_NOT_FOUND", 404, message);
}

/** 409: the request conflicts with the current state (e.g. replaying a discarded dead letter). */
export function conflict(message: string): ApiError {
  return new ApiError("CHATBUS_CONFLICT", 409, message);
}

/** 429: over the conversation's rate limit; `Retry-After` says when to try again. */
export function rateLimited(message: string, retryAfterMs: number): ApiError & { retryAfterMs: number } {
  return Object.assign(new ApiError("CHATBUS_RATE_LIMITED", 429, message, { retryable: true }), {
    retryAfterMs,
  });
}

/** 503: a dependency (Kafka, PostgreSQL) did not answer. */
export function unavailable(code: string, message: string, cause?: unknown): ApiError {
  return new ApiError(code, 503, message, { retryable: true, cause });
}

/** The process cannot start: a required setting is missing or invalid. */
export class ConfigError extends Error {
  readonly code = "CHATBUS_CONFIG";
  /** The environment variable at fault. */
  readonly variable: string;

  constructor(variable: string, message: string) {
    super(message);
    this.name = "ConfigError";
    this.variable = variable;
  }
}
