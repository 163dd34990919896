/** Options of `startMaterialiser`: one strict schema, compiled once, defaults in one object. */
import { type Static, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";

/** The JSON part of the options (the pool, logger and registry are checked by type only). */
export const MaterialiserSettings = Type.Object(
  {
    brokers: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })),
    topic: Type.Optional(Type.String({ minLength: 1 })),
    groupId: Type.Optional(Type.String({ minLength: 1 })),
    subscription: Type.Optional(Type.String({ minLength: 1 })),
    instanceId: Type.Optional(Type.String({ minLength: 1 })),
    clientId: Type.Optional(Type.String({ minLength: 1 })),
    retryInitialMs: Type.Optional(Type.Integer({ minimum: 1 })),
    retryMaxMs: Type.Optional(Type.Integer({ minimum: 1 })),
    statusIntervalMs: Type.Optional(Type.Integer({ minimum: 100 })),
    replayIntervalMs: Type.Optional(Type.Integer({ minimum: 50 })),
    partitionsConsumedConcurrently: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    transactionsAtOnce: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    maxBytesPerPartition: Type.Optional(Type.Integer({ minimum: 1024 })),
    sessionTimeoutMs: Type.Optional(Type.Integer({ minimum: 6000 })),
    measureLatency: Type.Optional(Type.Boolean()),
    notify: Type.Optional(Type.Boolean()),
    stuckAfterMs: Type.Optional(Type.Integer({ minimum: 100 })),
    statementTimeoutMs: Type.Optional(Type.Integer({ minimum: 100 })),
  },
  { additionalProperties: false },
);
export type MaterialiserSettings = Static<typeof MaterialiserSettings>;

/** Defaults; env vars are read when the option is absent. */
export const materialiserDefaults = {
  brokers: () => (process.env.KAFKA_BROKERS ?? "127.0.0.1:9092").split(","),
  topic: () => process.env.CHATBUS_TOPIC ?? "chat.events",
  groupId: () => process.env.CHATBUS_MATERIALISER_GROUP ?? "chatbus-materialiser",
  subscription: "materialiser",
  clientId: "chatbus-materialiser",
  retryInitialMs: 100, // 100 ms, doubled per failed attempt, with full jitter
  retryMaxMs: 10_000, // 10 s
  statusIntervalMs: 2_000, // 2 s between subscription_status upserts
  replayIntervalMs: 1_000, // 1 s between polls for dead letters to replay
  partitionsConsumedConcurrently: 12, // partition batches applied at once (one connection each)
  // Transactions on the happy path at once (each may take several partitions); a
  // partition retrying a failure, or a transaction slower than 1 s, gives its turn up.
  transactionsAtOnce: 2,
  maxBytesPerPartition: 4 * 1024 * 1024, // 4 MiB per partition fetch
  sessionTimeoutMs: 30_000, // 30 s
  // A partition lane holding more fetched records than this holds the fetch loop
  // (back-pressure; about 4 MiB of 1 KiB messages per partition).
  maxQueuedRecordsPerPartition: 4_000,
  // Consecutive queued batches of a partition are applied as one transaction up to this size.
  maxRecordsPerApply: 2_000,
  measureLatency: true, // observe chatbus_end_to_end_latency_seconds (off for rebuilds)
  stuckAfterMs: 60_000, // a record retried (system failures) this long is published as stuck
  statementTimeoutMs: 30_000, // every statement of the materialiser's connections
} as const;

const check = TypeCompiler.Compile(MaterialiserSettings);

/** Throws a RangeError naming the first bad field. */
export function validateMaterialiserSettings(settings: unknown): asserts settings is MaterialiserSettings {
  const error = check.Errors(settings).First();
  if (error) {
    const field = error.path.replace(/^\//, "").replaceAll("/", ".") || "(options)";
    throw new RangeError(
      `materialiser option \`${field}\` ${error.message.toLowerCase()}; got ${JSON.stringify(error.value)}.`,
    );
  }
}
