/**
 * `createRuntime` options: one strict schema (unknown keys rejected, errors name the
 * field), compiled once; every default in `runtimeDefaults`, with units.
 */
import { hostname } from "node:os";
import { ValidationError } from "@chatbus/producer-sdk";
import { type Static, type TSchema, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { ValueErrorType } from "@sinclair/typebox/errors";
import type pg from "pg";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import { type BreakerOptions, breakerDefaults } from "./circuit-breaker.ts";
import {
  type BusinessRetryOptions,
  businessRetryDefaults,
  type SystemRetryOptions,
  systemRetryDefaults,
} from "./retry.ts";

const positiveInt = (description: string) => Type.Integer({ minimum: 1, description });
const nonNegativeInt = (description: string) => Type.Integer({ minimum: 0, description });
const strict = { additionalProperties: false } as const;

const SystemRetrySchema = Type.Object(
  {
    initialDelayMs: Type.Optional(nonNegativeInt("Delay before the first retry (ms).")),
    maxDelayMs: Type.Optional(nonNegativeInt("Upper bound of a delay (ms).")),
    multiplier: Type.Optional(Type.Number({ minimum: 1 })),
    jitter: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
    maxAttempts: Type.Optional(nonNegativeInt("Dead-letter after this many attempts; 0 = never.")),
  },
  strict,
);

const BreakerSchema = Type.Object(
  {
    errorThresholdPercentage: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 100 })),
    volumeThreshold: Type.Optional(nonNegativeInt("Calls in the window before it can open.")),
    rollingWindowMs: Type.Optional(positiveInt("Rolling window length (ms).")),
    rollingBuckets: Type.Optional(positiveInt("Buckets in the window.")),
    resetTimeoutMs: Type.Optional(positiveInt("Open time before a probe (ms).")),
  },
  strict,
);

const objectOf = (what: string) => Type.Object({}, { description: what });

const RuntimeOptionsSchema = Type.Object(
  {
    group: Type.String({ minLength: 1, maxLength: 200, pattern: "^[A-Za-z0-9._-]+$" }),
    topic: Type.Optional(Type.String({ minLength: 1, maxLength: 249, pattern: "^[A-Za-z0-9._-]+$" })),
    brokers: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })),
    clientId: Type.Optional(Type.String({ minLength: 1 })),
    databaseUrl: Type.Optional(Type.String({ minLength: 1 })),
    pool: Type.Optional(objectOf("a pg.Pool")),
    logger: Type.Optional(objectOf("a pino logger")),
    registry: Type.Optional(objectOf("a prom-client Registry")),
    instanceId: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    concurrency: Type.Optional(positiveInt("Handlers running at once across all partitions.")),
    maxQueuedPerPartition: Type.Optional(positiveInt("Events held per partition before it is paused.")),
    fromBeginning: Type.Optional(Type.Boolean()),
    systemRetry: Type.Optional(SystemRetrySchema),
    breaker: Type.Optional(BreakerSchema),
    shutdownTimeoutMs: Type.Optional(nonNegativeInt("How long stop() lets in-flight handlers finish (ms).")),
    sessionTimeoutMs: Type.Optional(positiveInt("Kafka group session timeout (ms).")),
    heartbeatIntervalMs: Type.Optional(positiveInt("Kafka heartbeat interval (ms).")),
    rebalanceTimeoutMs: Type.Optional(positiveInt("Kafka rebalance timeout (ms).")),
    commitIntervalMs: Type.Optional(positiveInt("Commit of events finished outside a batch (ms).")),
    statusIntervalMs: Type.Optional(positiveInt("Status table refresh (ms).")),
    replayPollMs: Type.Optional(positiveInt("Poll for dead letters to replay (ms).")),
    maxBytesPerPartition: Type.Optional(positiveInt("Bytes one fetch returns per partition at most.")),
    kafkaRetries: Type.Optional(nonNegativeInt("kafkajs retries of one request before it gives up.")),
    kafkaInitialRetryTimeMs: Type.Optional(positiveInt("kafkajs first retry delay (ms).")),
    deadLetterTopic: Type.Optional(Type.String({ minLength: 1, maxLength: 249 })),
    alertWebhook: Type.Optional(Type.String({ minLength: 1 })),
    alertMinIntervalMs: Type.Optional(nonNegativeInt("At most one alert of a kind per window (ms).")),
    handlerTimeoutMs: Type.Optional(
      positiveInt("Deadline of one handler call (ms); a registration may override it."),
    ),
    stuckAfterMs: Type.Optional(
      positiveInt("A record retried for a system failure this long is published as stuck (ms)."),
    ),
  },
  strict,
);

/** Options of `createRuntime`; only `group` is required. */
export type RuntimeOptions = Omit<Static<typeof RuntimeOptionsSchema>, "pool" | "logger" | "registry"> & {
  /** PostgreSQL pool for dead letters and status; made from `databaseUrl` when omitted. */
  pool?: pg.Pool;
  /** pino logger; a new one at LOG_LEVEL when omitted. */
  logger?: Logger;
  /** prom-client registry for the metrics; a private one when omitted. */
  registry?: Registry;
};

/** Options with every default applied. */
export interface ResolvedRuntimeOptions {
  group: string;
  topic: string;
  brokers: string[];
  clientId: string;
  databaseUrl: string;
  pool: pg.Pool | undefined;
  logger: Logger | undefined;
  registry: Registry | undefined;
  instanceId: string;
  concurrency: number;
  maxQueuedPerPartition: number;
  fromBeginning: boolean;
  systemRetry: SystemRetryOptions;
  breaker: BreakerOptions;
  shutdownTimeoutMs: number;
  sessionTimeoutMs: number;
  heartbeatIntervalMs: number;
  rebalanceTimeoutMs: number;
  commitIntervalMs: number;
  statusIntervalMs: number;
  replayPollMs: number;
  maxBytesPerPartition: number;
  kafkaRetries: number;
  kafkaInitialRetryTimeMs: number;
  deadLetterTopic: string;
  alertWebhook: string | undefined;
  alertMinIntervalMs: number;
  handlerTimeoutMs: number;
  stuckAfterMs: number;
}

/** Defaults of everything but names and addresses (those come from env, see `resolveRuntimeOptions`). */
export const runtimeDefaults = {
  concurrency: 64, // handlers at once, all partitions together
  maxQueuedPerPartition: 2000, // events; pause above, resume at half
  fromBeginning: true, // a new group reads the topic from its start
  shutdownTimeoutMs: 10_000, // 10 s for in-flight handlers on stop()
  sessionTimeoutMs: 30_000, // 30 s
  heartbeatIntervalMs: 3_000, // 3 s
  rebalanceTimeoutMs: 60_000, // 60 s
  commitIntervalMs: 1_000, // 1 s
  statusIntervalMs: 2_000, // 2 s
  replayPollMs: 1_000, // 1 s
  alertMinIntervalMs: 60_000, // 1 min per (subscription, kind)
  maxBytesPerPartition: 1_048_576, // 1 MiB per partition per fetch (kafkajs's default)
  kafkaRetries: 5, // kafkajs's default
  kafkaInitialRetryTimeMs: 300, // 0.3 s, kafkajs's default
  handlerTimeoutMs: 30_000, // 30 s per handler call, then ctx.signal aborts and it is a system failure
  stuckAfterMs: 60_000, // 1 min of system-failure retries before a record is published as stuck
} as const;

const compiled = TypeCompiler.Compile(RuntimeOptionsSchema);

/** Throws a ValidationError naming the first bad field of an options object. */
export function checkOptions<T extends TSchema>(
  check: ReturnType<typeof TypeCompiler.Compile<T>>,
  value: unknown,
  what: string,
): void {
  const first = check.Errors(value).First();
  if (!first) return;
  const field = first.path.replace(/^\//, "").replaceAll("/", ".") || "(options)";
  const unknownKey = first.type === ValueErrorType.ObjectAdditionalProperties;
  const message = unknownKey
    ? `${what}: unknown option \`${field}\`; check its spelling against the documented options.`
    : `${what}: \`${field}\` ${first.message.toLowerCase()}; got ${JSON.stringify(first.value)}.`;
  throw new ValidationError(field, String(first.type), message);
}

/** Validates options and applies defaults (env: CHATBUS_TOPIC, KAFKA_BROKERS, DATABASE_URL, CHATBUS_ALERT_WEBHOOK). */
export function resolveRuntimeOptions(options: RuntimeOptions): ResolvedRuntimeOptions {
  checkOptions(compiled, options, "createRuntime");
  const env = process.env;
  const topic = options.topic ?? env.CHATBUS_TOPIC ?? "chat.events";
  return {
    ...runtimeDefaults,
    ...options,
    topic,
    brokers: options.brokers ?? (env.KAFKA_BROKERS ?? "127.0.0.1:9092").split(","),
    clientId: options.clientId ?? `chatbus-${options.group}`,
    databaseUrl: options.databaseUrl ?? env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/chatbus",
    pool: options.pool,
    logger: options.logger,
    registry: options.registry,
    instanceId:
      options.instanceId ?? `${hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`,
    systemRetry: { ...systemRetryDefaults, ...options.systemRetry },
    breaker: { ...breakerDefaults, ...options.breaker },
    deadLetterTopic: options.deadLetterTopic ?? `${topic}.dlq`,
    alertWebhook: options.alertWebhook ?? (env.CHATBUS_ALERT_WEBHOOK || undefined),
  };
}

const RegistrationSchema = Type.Object(
  {
    businessRetry: Type.Optional(
      Type.Object(
        {
          attempts: positiveInt("Total attempts including the first; 1 = no retry."),
          backoffMs: Type.Optional(Type.Array(nonNegativeInt("Delay before retry i+1 (ms)."))),
        },
        strict,
      ),
    ),
    handlerTimeoutMs: Type.Optional(positiveInt("Deadline of one call of this handler (ms).")),
  },
  strict,
);

/** Options of `runtime.on(...)`. */
export type RegistrationOptions = Static<typeof RegistrationSchema>;

const compiledRegistration = TypeCompiler.Compile(RegistrationSchema);

/** A registration's resolved policy: business retry and the call deadline (null = the subscription's). */
export interface ResolvedRegistration {
  businessRetry: BusinessRetryOptions;
  handlerTimeoutMs: number | null;
}

/** Validates registration options; resolves the business retry policy and the deadline. */
export function resolveRegistration(options: RegistrationOptions | undefined): ResolvedRegistration {
  checkOptions(compiledRegistration, options ?? {}, "runtime.on");
  const retry = options?.businessRetry;
  return {
    businessRetry: retry
      ? { attempts: retry.attempts, backoffMs: retry.backoffMs ?? [] }
      : businessRetryDefaults,
    handlerTimeoutMs: options?.handlerTimeoutMs ?? null,
  };
}
