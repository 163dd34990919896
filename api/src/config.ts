/**
 * The API's settings: one strict schema, compiled once, defaults in one object with
 * units, read from the environment by `loadConfig`. In production the server
 * refuses to start without its secrets and names the one that is missing.
 */
import { randomBytes } from "node:crypto";
import { type Static, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { ConfigError } from "./errors.ts";

/** Settings of the realtime (SSE) streams. */
export const SseConfigSchema = Type.Object(
  {
    heartbeatMs: Type.Integer({ minimum: 10, description: "Comment line on idle streams, ms." }),
    maxBufferedBytes: Type.Integer({
      minimum: 1024,
      description:
        "Bytes a client may have unread in its socket; past them its stream falls behind and is written from the event log as the client reads.",
    }),
    stalledClientMs: Type.Integer({
      minimum: 10,
      description: "A client that is behind and reads nothing for this long is disconnected (to resume), ms.",
    }),
    presenceGraceMs: Type.Integer({ minimum: 0, description: "Delay before announcing offline, ms." }),
    roomBroadcastMaxStreams: Type.Integer({
      minimum: 0,
      description:
        "Presence and other members' receipts are streamed only in conversations with at most this many open streams here.",
    }),
    deliveredFlushMs: Type.Integer({ minimum: 10, description: "Batch window of delivered receipts, ms." }),
    deliveredReceiptsMaxMembers: Type.Integer({
      minimum: 0,
      description:
        "Delivered receipts are recorded per member only in conversations with at most this many members (CHATBUS_SSE_DELIVERED_RECEIPTS_MAX_MEMBERS).",
    }),
    deliveredMemberCountTtlMs: Type.Integer({
      minimum: 0,
      description:
        "How long a conversation's member count is trusted for the delivered-receipts bound, ms: a group that crosses the bound is noticed within it.",
    }),
    resumeMaxEvents: Type.Integer({
      minimum: 1,
      description: "A Last-Event-ID further behind than this many events gets a reset event.",
    }),
    streamsPerUser: Type.Integer({
      minimum: 1,
      description:
        "Open streams per user on one process (CHATBUS_SSE_STREAMS_PER_USER); one more closes the oldest.",
    }),
    streamConversationsMax: Type.Integer({
      minimum: 1,
      description:
        "Conversations (most recent first) a stream follows (CHATBUS_SSE_STREAM_CONVERSATIONS_MAX).",
    }),
    presenceProcessTimeoutMs: Type.Integer({
      minimum: 100,
      description: "An API process silent this long no longer keeps its users online, ms.",
    }),
  },
  { additionalProperties: false },
);

/**
 * Write rate limits, shared by every API process through PostgreSQL (see
 * write-limits.ts and docs/decisions.md). Buckets hold `rate * burstSeconds` tokens.
 */
export const RateLimitConfigSchema = Type.Object(
  {
    enabled: Type.Boolean(),
    directMessagesPerSecond: Type.Number({
      exclusiveMinimum: 0,
      description: "Messages/s into one direct conversation.",
    }),
    groupMessagesPerSecond: Type.Number({ exclusiveMinimum: 0, description: "Messages/s into one group." }),
    userMessagesPerSecond: Type.Number({
      exclusiveMinimum: 0,
      description: "Messages/s one user sends, all conversations together.",
    }),
    userWritesPerSecond: Type.Number({
      exclusiveMinimum: 0,
      description:
        "Other writes/s of one user: creating conversations, member changes, edits, recalls, read receipts.",
    }),
    conversationWritesPerSecond: Type.Number({
      exclusiveMinimum: 0,
      description: "Member changes, edits, recalls and read receipts/s in one conversation.",
    }),
    burstSeconds: Type.Number({ minimum: 1, description: "Bucket size in seconds of its rate." }),
    lowPriorityReserve: Type.Number({
      minimum: 0,
      maximum: 0.9,
      description: "Share of a conversation's bucket that low-priority messages may not use.",
    }),
  },
  { additionalProperties: false },
);

/** Every setting of the API process. */
export const ApiConfigSchema = Type.Object(
  {
    nodeEnv: Type.Union([Type.Literal("development"), Type.Literal("production"), Type.Literal("test")]),
    host: Type.String({ minLength: 1 }),
    port: Type.Integer({ minimum: 0, maximum: 65_535 }),
    kafkaBrokers: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
    databaseUrl: Type.String({ minLength: 1 }),
    topic: Type.String({ minLength: 1 }),
    jwtSecret: Type.String({ minLength: 16 }),
    tokenTtlSeconds: Type.Integer({ minimum: 1 }),
    serviceKeys: Type.Array(Type.String({ minLength: 16 })),
    operatorKey: Type.String({ minLength: 16 }),
    bodyLimitBytes: Type.Integer({ minimum: 1024 }),
    historyMaxLimit: Type.Integer({ minimum: 1 }),
    /** Inbox page size limit (`GET /v1/me/conversations?limit=`). */
    inboxMaxLimit: Type.Integer({ minimum: 1 }),
    /** Members a group may have; adding one more is refused with 409. */
    maxGroupMembers: Type.Integer({ minimum: 2 }),
    /** Entries of the membership cache (a conversation, and each member known, are one each); 0 turns it off. */
    membershipCacheSize: Type.Integer({ minimum: 0 }),
    /** Estimated bytes of the history cache's newest pages; 0 turns it off. */
    historyCacheBytes: Type.Integer({ minimum: 0 }),
    /** `POST /v1/dev/login` is served only when this is true (`CHATBUS_DEV_LOGIN=1`). */
    devLogin: Type.Boolean(),
    rateLimits: RateLimitConfigSchema,
    sse: SseConfigSchema,
  },
  { additionalProperties: false },
);

/** The API's settings, validated. */
export type ApiConfig = Static<typeof ApiConfigSchema>;

/** Defaults, units in comments. Secrets have no defaults (see `loadConfig`). */
export const configDefaults = {
  nodeEnv: "development",
  host: "0.0.0.0",
  port: 3000,
  kafkaBrokers: ["127.0.0.1:9092"],
  databaseUrl: "postgres://postgres@127.0.0.1:5432/chatbus",
  topic: "chat.events",
  tokenTtlSeconds: 3600, // 1 h; SSE tokens travel in the URL, so keep them short-lived
  serviceKeys: [] as string[],
  bodyLimitBytes: 65_536, // 64 KiB: a 16 KiB text in UTF-8 JSON fits with room
  historyMaxLimit: 200, // messages per history page; a larger `limit` is a 400
  inboxMaxLimit: 1000, // conversations per inbox page; a larger `limit` is a 400
  maxGroupMembers: 10_000, // members per group
  membershipCacheSize: 100_000, // entries (conversations + members known), roughly 10–20 MB at most
  historyCacheBytes: 33_554_432, // 32 MiB of newest pages, ~1,000 pages of 50 short messages
  devLogin: false, // opt-in only: a token for any name must never be on by accident
  rateLimits: {
    enabled: true,
    directMessagesPerSecond: 10, // the SDK's default for a direct conversation
    groupMessagesPerSecond: 40, // the SDK's default for a group
    userMessagesPerSecond: 20, // one person typing in many conversations at once
    userWritesPerSecond: 10,
    conversationWritesPerSecond: 20,
    burstSeconds: 5, // bursts (a client catching up on read receipts) pass
    lowPriorityReserve: 0.2,
  },
  sse: {
    heartbeatMs: 15_000, // 15 s, below common proxy idle timeouts (30–60 s)
    maxBufferedBytes: 1_048_576, // 1 MiB unread per client
    stalledClientMs: 30_000, // 30 s: two heartbeats' worth without reading while behind
    presenceGraceMs: 5_000, // 5 s: a reconnect within this does not flap
    roomBroadcastMaxStreams: 200, // streams: in bigger rooms presence and receipts would cost streams² writes
    deliveredFlushMs: 1_000, // 1 s batch window for chat.receipt.delivered
    deliveredReceiptsMaxMembers: 1_000, // bigger groups: no per-member delivered receipts (docs/decisions.md)
    deliveredMemberCountTtlMs: 60_000, // 60 s: one count query per conversation per minute at most
    resumeMaxEvents: 10_000, // further behind than this → reset event
    streamsPerUser: 10, // streams per user per process; the 11th closes the oldest
    streamConversationsMax: 1000, // conversations one stream follows, most recent first
    presenceProcessTimeoutMs: 15_000, // 15 s without a heartbeat: a killed process's users go offline
  },
} satisfies Omit<ApiConfig, "jwtSecret" | "operatorKey">;

const check = TypeCompiler.Compile(ApiConfigSchema);

/** Validates a complete config object; throws a ConfigError naming the first bad field. */
export function validateConfig(config: unknown): ApiConfig {
  const first = check.Errors(config).First();
  if (first) {
    const field = first.path.split("/").filter(Boolean).join(".") || "(config)";
    throw new ConfigError(field, `config \`${field}\` ${first.message}.`);
  }
  return config as ApiConfig;
}

/** What `loadConfig` noticed that a person should know about (logged at startup). */
export interface ConfigNotes {
  warnings: string[];
}

function decimal(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+(\.\d+)?$/.test(raw)) throw new ConfigError(name, `${name} must be a number; got "${raw}".`);
  return Number(raw);
}

/** The rate-limit settings from `CHATBUS_RATE_*` variables (`CHATBUS_RATE_LIMITS=0` turns them off). */
function rateLimits(env: NodeJS.ProcessEnv): ApiConfig["rateLimits"] {
  const d = configDefaults.rateLimits;
  return {
    enabled: env.CHATBUS_RATE_LIMITS !== "0",
    directMessagesPerSecond: decimal(env, "CHATBUS_RATE_DIRECT_PER_SECOND", d.directMessagesPerSecond),
    groupMessagesPerSecond: decimal(env, "CHATBUS_RATE_GROUP_PER_SECOND", d.groupMessagesPerSecond),
    userMessagesPerSecond: decimal(env, "CHATBUS_RATE_USER_MESSAGES_PER_SECOND", d.userMessagesPerSecond),
    userWritesPerSecond: decimal(env, "CHATBUS_RATE_USER_WRITES_PER_SECOND", d.userWritesPerSecond),
    conversationWritesPerSecond: decimal(
      env,
      "CHATBUS_RATE_CONVERSATION_WRITES_PER_SECOND",
      d.conversationWritesPerSecond,
    ),
    burstSeconds: decimal(env, "CHATBUS_RATE_BURST_SECONDS", d.burstSeconds),
    lowPriorityReserve: d.lowPriorityReserve,
  };
}

function integer(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw)) throw new ConfigError(name, `${name} must be a whole number; got "${raw}".`);
  return Number(raw);
}

/**
 * Reads the settings from environment variables. In production `CHATBUS_JWT_SECRET`,
 * `CHATBUS_OPERATOR_KEY` and `CHATBUS_SERVICE_KEYS` are required; in development a
 * missing secret is replaced by a random one for this process, with a warning.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): { config: ApiConfig; notes: ConfigNotes } {
  const warnings: string[] = [];
  const nodeEnv = (env.NODE_ENV || "development") as ApiConfig["nodeEnv"];
  if (!["development", "production", "test"].includes(nodeEnv)) {
    throw new ConfigError("NODE_ENV", `NODE_ENV must be development, production or test; got "${nodeEnv}".`);
  }
  const production = nodeEnv === "production";
  const secret = (name: string, what: string): string => {
    const value = env[name];
    if (value) return value;
    if (production) {
      throw new ConfigError(
        name,
        `${name} is not set; in production the API needs it (${what}). Set it to a random string of at least 32 characters.`,
      );
    }
    warnings.push(`${name} is not set: using a random value for this process only (${what}).`);
    return randomBytes(32).toString("base64url");
  };
  const jwtSecret = secret("CHATBUS_JWT_SECRET", "it signs user tokens; tokens die with the process");
  const operatorKey = secret("CHATBUS_OPERATOR_KEY", "it guards the operator endpoints");
  const serviceKeys = (env.CHATBUS_SERVICE_KEYS ?? "")
    .split(",")
    .map((key) => key.trim())
    .filter(Boolean);
  if (production && serviceKeys.length === 0) {
    throw new ConfigError(
      "CHATBUS_SERVICE_KEYS",
      "CHATBUS_SERVICE_KEYS is not set; in production the send endpoint needs at least one service key (comma-separated, each at least 16 characters).",
    );
  }
  const devLogin = env.CHATBUS_DEV_LOGIN === "1";
  if (devLogin) {
    warnings.push(
      "CHATBUS_DEV_LOGIN=1: POST /v1/dev/login gives anyone a token for any user name; never set it on a server others can reach.",
    );
  }
  const config = {
    ...configDefaults,
    devLogin,
    historyMaxLimit: integer(env, "CHATBUS_HISTORY_MAX_LIMIT", configDefaults.historyMaxLimit),
    inboxMaxLimit: integer(env, "CHATBUS_INBOX_MAX_LIMIT", configDefaults.inboxMaxLimit),
    maxGroupMembers: integer(env, "CHATBUS_MAX_GROUP_MEMBERS", configDefaults.maxGroupMembers),
    membershipCacheSize: integer(env, "CHATBUS_MEMBERSHIP_CACHE_SIZE", configDefaults.membershipCacheSize),
    historyCacheBytes: integer(env, "CHATBUS_HISTORY_CACHE_BYTES", configDefaults.historyCacheBytes),
    rateLimits: rateLimits(env),
    nodeEnv,
    host: env.HOST || configDefaults.host,
    port: integer(env, "PORT", configDefaults.port),
    kafkaBrokers: (env.KAFKA_BROKERS || configDefaults.kafkaBrokers.join(","))
      .split(",")
      .map((b) => b.trim()),
    databaseUrl: env.DATABASE_URL || configDefaults.databaseUrl,
    topic: env.CHATBUS_TOPIC || configDefaults.topic,
    jwtSecret,
    tokenTtlSeconds: integer(env, "CHATBUS_TOKEN_TTL_SECONDS", configDefaults.tokenTtlSeconds),
    serviceKeys,
    operatorKey,
    sse: {
      ...configDefaults.sse,
      streamsPerUser: integer(env, "CHATBUS_SSE_STREAMS_PER_USER", configDefaults.sse.streamsPerUser),
      deliveredReceiptsMaxMembers: integer(
        env,
        "CHATBUS_SSE_DELIVERED_RECEIPTS_MAX_MEMBERS",
        configDefaults.sse.deliveredReceiptsMaxMembers,
      ),
      streamConversationsMax: integer(
        env,
        "CHATBUS_SSE_STREAM_CONVERSATIONS_MAX",
        configDefaults.sse.streamConversationsMax,
      ),
    },
  };
  try {
    return { config: validateConfig(config), notes: { warnings } };
  } catch (error) {
    if (error instanceof ConfigError && error.variable === "jwtSecret") {
      throw new ConfigError("CHATBUS_JWT_SECRET", "CHATBUS_JWT_SECRET must be at least 16 characters long.");
    }
    if (error instanceof ConfigError && error.variable === "operatorKey") {
      throw new ConfigError(
        "CHATBUS_OPERATOR_KEY",
        "CHATBUS_OPERATOR_KEY must be at least 16 characters long.",
      );
    }
    if (error instanceof ConfigError && error.variable.startsWith("serviceKeys")) {
      throw new ConfigError(
        "CHATBUS_SERVICE_KEYS",
        "each key in CHATBUS_SERVICE_KEYS must be at least 16 characters long.",
      );
    }
    throw error;
  }
}
