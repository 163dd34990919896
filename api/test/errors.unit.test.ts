/**
 * The API package's error catalogue: every code of `apiErrorCodes` has its class, each
 * error is a ChatBusError with the HTTP status and `retryable` that docs/api.md
 * documents, and the factories the routes use answer with the documented codes.
 */
import { ChatBusError } from "@chatbus/producer-sdk";
import { describe, expect, it } from "vitest";
import { callApi } from "../src/cli/operator-client.ts";
import {
  ApiError,
  type ApiErrorCode,
  apiErrorCodes,
  CliError,
  ConfigError,
  conflict,
  forbidden,
  type HttpErrorCode,
  httpErrors,
  invalidField,
  notFound,
  rateLimited,
  UsageError,
  unauthorized,
  unavailable,
} from "../src/errors.ts";

/** The table of docs/api.md, "Errors": code, HTTP status, retryable. */
const documented: [HttpErrorCode, number, boolean][] = [
  ["CHATBUS_VALIDATION", 400, false],
  ["CHATBUS_BAD_REQUEST", 400, false],
  ["CHATBUS_UNAUTHORIZED", 401, false],
  ["CHATBUS_TOKEN_EXPIRED", 401, false],
  ["CHATBUS_FORBIDDEN", 403, false],
  ["CHATBUS_NOT_FOUND", 404, false],
  ["CHATBUS_CONFLICT", 409, false],
  ["CHATBUS_PAYLOAD_TOO_LARGE", 413, false],
  ["CHATBUS_UNSUPPORTED_MEDIA_TYPE", 415, false],
  ["CHATBUS_RATE_LIMITED", 429, true],
  ["CHATBUS_INTERNAL", 500, false],
  ["CHATBUS_POSTGRES_UNAVAILABLE", 503, true],
  ["CHATBUS_NOT_READY", 503, true],
];

/** One error of each class outside HTTP, with its documented `retryable`. */
const processErrors: [ChatBusError<ApiErrorCode>, ApiErrorCode, boolean][] = [
  [new ConfigError("CHATBUS_JWT_SECRET", "CHATBUS_JWT_SECRET is not set."), "CHATBUS_CONFIG", false],
  [new CliError("CHATBUS_OPERATOR_KEY is not set."), "CHATBUS_CLI", false],
  [new UsageError('unknown command "frob"'), "CHATBUS_USAGE", false],
];

describe("the API error catalogue", () => {
  it.each(documented)("%s answers %i, retryable %s", (code, status, retryable) => {
    const error = new ApiError(code, "a message a person can act on.", { field: "content.text" });
    expect(error).toBeInstanceOf(ChatBusError);
    expect(error.name).toBe("ApiError");
    expect(error.code).toBe(code);
    expect(error.statusCode).toBe(status);
    expect(error.retryable).toBe(retryable);
    expect(error.field).toBe("content.text");
  });

  it.each(processErrors)("%s has its code and retryable", (error, code, retryable) => {
    expect(error).toBeInstanceOf(ChatBusError);
    expect(error.name).toBe(error.constructor.name);
    expect(error.code).toBe(code);
    expect(error.retryable).toBe(retryable);
  });

  it("has a class for every code of apiErrorCodes, each code once", () => {
    const covered = [...documented.map(([code]) => code), ...processErrors.map(([, code]) => code)];
    expect(covered.sort()).toEqual([...apiErrorCodes].sort());
    expect(Object.keys(httpErrors).sort()).toEqual(documented.map(([code]) => code).sort());
  });

  it("answers with the documented code from each factory", () => {
    expect([
      invalidField("limit", "too large").code,
      unauthorized("no token").code,
      unauthorized("expired", "CHATBUS_TOKEN_EXPIRED").statusCode,
      forbidden("no").statusCode,
      notFound("none").statusCode,
      conflict("not waiting").statusCode,
      rateLimited("slow down", 1500).retryAfterMs,
      unavailable("CHATBUS_POSTGRES_UNAVAILABLE", "down").retryable,
    ]).toEqual(["CHATBUS_VALIDATION", "CHATBUS_UNAUTHORIZED", 401, 403, 404, 409, 1500, true]);
  });

  it("marks a CLI failure retryable when the API did not answer", async () => {
    // Port 1 on loopback: nothing listens, so the connection is refused at once.
    const env = { apiUrl: "http://127.0.0.1:1", operatorKey: "k".repeat(16), operator: "test" };
    const failure = await callApi(env, "GET", "/v1/subscriptions").catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(CliError);
    expect((failure as CliError).retryable).toBe(true);
  });
});
