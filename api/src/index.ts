/** @chatbus/api: the HTTP API, realtime SSE and the operator command line. */

export type { ApiApp, ApiDeps, ReadinessCheck } from "./app.ts";
export type { Principal } from "./auth.ts";
export { buildApp } from "./build-app.ts";
export type { ApiConfig } from "./config.ts";
export { configDefaults, loadConfig, validateConfig } from "./config.ts";
/** The API package's error catalogue: codes, HTTP statuses, classes. */
export type { ApiErrorCode, HttpErrorCode } from "./errors.ts";
export { ApiError, apiErrorCodes, CliError, ConfigError, httpErrors, UsageError } from "./errors.ts";
export type { ApiMetrics } from "./metrics.ts";
export { createApiMetrics } from "./metrics.ts";
export type { EventSender, SendReceipt } from "./types.ts";
