/**
 * Options of `createChatBus`: one strict schema (unknown keys are rejected), compiled
 * once; defaults in one object; environment variables fill what the caller omits.
 */
import { type Static, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import { ValidationError } from "./errors.ts";
import type { ConversationKind } from "./events.ts";
import { firstError } from "./validation.ts";

const positiveRate = (description: string) => Type.Number({ exclusiveMinimum: 0, description });

/** Per-conversation limits for `chat.message.sent`; other event types are never limited. */
export const RateLimitOptionsSchema = Type.Object(
  {
    enabled: Type.Optional(Type.Boolean({ description: "False turns rate limiting off." })),
    directPerSecond: Type.Optional(positiveRate("Messages per second in a direct conversation.")),
    groupPerSecond: Type.Optional(positiveRate("Messages per second in a group conversation.")),
    burstSeconds: Type.Optional(
      Type.Number({
        minimum: 1,
        description: "Bucket size in seconds of the rate: how big a burst an idle conversation may send.",
      }),
    ),
    lowPriorityReserve: Type.Optional(
      Type.Number({
        minimum: 0,
        maximum: 0.9,
        description:
          "Share of the bucket kept for normal messages: low ones are shed once fewer tokens remain.",
      }),
    ),
    maxConversations: Type.Optional(
      Type.Integer({
        minimum: 1,
        description: "Conversations whose buckets and kinds are kept; idle ones are dropped beyond it.",
      }),
    ),
  },
  { additionalProperties: false },
);

/** The schema of `createChatBus`'s options. */
export const ChatBusOptionsSchema = Type.Object(
  {
    brokers: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })),
    topic: Type.Optional(Type.String({ minLength: 1, maxLength: 249, pattern: "^[A-Za-z0-9._-]+$" })),
    partitions: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000 })),
    replicationFactor: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
    ensureTopic: Type.Optional(Type.Boolean()),
    clientId: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
    source: Type.Optional(Type.String({ minLength: 1, maxLength: 500 })),
    lingerMs: Type.Optional(Type.Number({ minimum: 0, maximum: 1000 })),
    maxBatchSize: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
    maxBatchBytes: Type.Optional(Type.Integer({ minimum: 1024 })),
    sendTimeoutMs: Type.Optional(Type.Integer({ minimum: 100 })),
    producer: Type.Optional(Type.Union([Type.Literal("kafkajs"), Type.Literal("platformatic")])),
    rateLimit: Type.Optional(RateLimitOptionsSchema),
    conversationKind: Type.Optional(Type.Function([Type.String()], Type.Any())),
    registry: Type.Optional(Type.Object({}, { additionalProperties: true })),
    logger: Type.Optional(Type.Object({}, { additionalProperties: true })),
  },
  { additionalProperties: false },
);

/** Options of `createChatBus`; every one is optional. */
export interface ChatBusOptions {
  /** Bootstrap brokers, `host:port`. Default: `KAFKA_BROKERS` (comma-separated) or `127.0.0.1:9092`. */
  brokers?: string[];
  /** Topic of every event. Default: `CHATBUS_TOPIC` or `chat.events`. */
  topic?: string;
  /** Partitions the topic must have (and is created with). Default: `CHATBUS_PARTITIONS` or 12. */
  partitions?: number;
  /** Replication factor when the bus creates the topic. Default: the broker's `default.replication.factor`. */
  replicationFactor?: number;
  /** Create the topic when missing and check its partition count. Default: true. */
  ensureTopic?: boolean;
  /** Kafka client id. Default: `chatbus-producer`. */
  clientId?: string;
  /** `ce_source` of every event, e.g. `/services/chat-api`. Default: `/chatbus/<clientId>`. */
  source?: string;
  /** How long the first send waits for others to share its produce request. Default: 2 ms. */
  lingerMs?: number;
  /** Most records in one produce request. Default: 1000. */
  maxBatchSize?: number;
  /** Most key+value+header bytes of one partition in one produce request. Default: 900,000 (under the broker's 1 MiB `message.max.bytes`). */
  maxBatchBytes?: number;
  /** How long a send may wait for Kafka before it fails with BrokerUnavailableError. Default: 10,000 ms. */
  sendTimeoutMs?: number;
  /**
   * The Kafka client that produces: `kafkajs` (a dependency) or `platformatic`
   * (`@platformatic/kafka`, an optional peer dependency you install yourself; cheaper
   * per event than kafkajs in some benchmark runs, see docs/benchmarks.md). Both send
   * the same records idempotently with acks=all. Default: `CHATBUS_PRODUCER` or `kafkajs`.
   */
  producer?: ProducerBackend;
  /** Per-conversation rate limits of `chat.message.sent`. */
  rateLimit?: {
    /** Default: true. */
    enabled?: boolean;
    /** Default: 10 messages/s. */
    directPerSecond?: number;
    /** Default: 40 messages/s. */
    groupPerSecond?: number;
    /** Bucket size, in seconds of the rate. Default: 1 s. */
    burstSeconds?: number;
    /** Share of the bucket that low-priority messages may not use. Default: 0.5. */
    lowPriorityReserve?: number;
    /** Conversations tracked at most (buckets and kinds). Default: 100,000. */
    maxConversations?: number;
  };
  /**
   * Tells the bus whether a conversation is direct or group, for its rate limit, when
   * neither a `kind` hint on `send` nor a `chat.conversation.created` sent through this
   * bus said so. Unknown conversations get the direct (stricter) limit.
   */
  conversationKind?: (conversationId: string) => ConversationKind | undefined;
  /** prom-client registry for the producer metrics; no metrics without one. */
  registry?: Registry;
  /** pino logger; silent without one. */
  logger?: Logger;
}

/** The Kafka clients a bus can produce with. */
export const producerBackends = ["kafkajs", "platformatic"] as const;
/** One of `producerBackends`. */
export type ProducerBackend = (typeof producerBackends)[number];

/** Options after defaults and environment were applied. */
export interface ResolvedOptions {
  brokers: string[];
  topic: string;
  partitions: number;
  replicationFactor: number | undefined;
  ensureTopic: boolean;
  clientId: string;
  source: string;
  lingerMs: number;
  maxBatchSize: number;
  maxBatchBytes: number;
  sendTimeoutMs: number;
  producer: ProducerBackend;
  rateLimit: Required<NonNullable<ChatBusOptions["rateLimit"]>>;
  conversationKind: ChatBusOptions["conversationKind"];
  registry: Registry | undefined;
  logger: Logger | undefined;
}

/** Every default in one place. */
export const defaults = {
  brokers: ["127.0.0.1:9092"],
  topic: "chat.events",
  partitions: 12,
  ensureTopic: true,
  clientId: "chatbus-producer",
  lingerMs: 2, // ms
  maxBatchSize: 1000, // records
  maxBatchBytes: 900_000, // bytes per partition and request
  sendTimeoutMs: 10_000, // 10 s
  producer: "kafkajs",
  rateLimit: {
    enabled: true,
    directPerSecond: 10, // messages/s
    groupPerSecond: 40, // messages/s
    burstSeconds: 1, // s of the rate
    lowPriorityReserve: 0.5, // share of the bucket
    maxConversations: 100_000,
  },
} as const;

const check = TypeCompiler.Compile(ChatBusOptionsSchema);

/** Types and narrows `value` for the schema, naming the option on failure. */
function validated(value: unknown, name: string): asserts value is Static<typeof ChatBusOptionsSchema> {
  const error = firstError(check, value, name);
  if (error) throw error;
}

function envInteger(env: NodeJS.ProcessEnv, name: string): number | undefined {
  const text = env[name];
  if (text === undefined || text === "") return undefined;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    throw new ValidationError(
      name,
      "type",
      `environment variable ${name} must be a positive integer; got "${text}".`,
    );
  }
  return value;
}

function envProducer(env: NodeJS.ProcessEnv): ProducerBackend | undefined {
  const text = env.CHATBUS_PRODUCER;
  if (text === undefined || text === "") return undefined;
  if ((producerBackends as readonly string[]).includes(text)) return text as ProducerBackend;
  throw new ValidationError(
    "CHATBUS_PRODUCER",
    "enum",
    `environment variable CHATBUS_PRODUCER must be one of ${producerBackends.join(", ")}; got "${text}".`,
  );
}

/**
 * Validates `options` strictly and fills defaults, environment first: `KAFKA_BROKERS`,
 * `CHATBUS_TOPIC`, `CHATBUS_PARTITIONS`, `CHATBUS_PRODUCER`. Throws ValidationError naming the option.
 */
export function resolveOptions(
  options: ChatBusOptions = {},
  env: NodeJS.ProcessEnv = process.env,
): ResolvedOptions {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new ValidationError(
      "options",
      "type",
      `\`options\` must be an object; got ${JSON.stringify(options)}.`,
    );
  }
  validated(options, "options");
  const clientId = options.clientId ?? defaults.clientId;
  const brokers =
    options.brokers ??
    (env.KAFKA_BROKERS
      ? env.KAFKA_BROKERS.split(",")
          .map((b) => b.trim())
          .filter(Boolean)
      : [...defaults.brokers]);
  return {
    brokers,
    topic: options.topic ?? (env.CHATBUS_TOPIC || defaults.topic),
    partitions: options.partitions ?? envInteger(env, "CHATBUS_PARTITIONS") ?? defaults.partitions,
    replicationFactor: options.replicationFactor,
    ensureTopic: options.ensureTopic ?? defaults.ensureTopic,
    clientId,
    source: options.source ?? `/chatbus/${clientId}`,
    lingerMs: options.lingerMs ?? defaults.lingerMs,
    maxBatchSize: options.maxBatchSize ?? defaults.maxBatchSize,
    maxBatchBytes: options.maxBatchBytes ?? defaults.maxBatchBytes,
    sendTimeoutMs: options.sendTimeoutMs ?? defaults.sendTimeoutMs,
    producer: options.producer ?? envProducer(env) ?? defaults.producer,
    rateLimit: { ...defaults.rateLimit, ...options.rateLimit },
    conversationKind: options.conversationKind,
    registry: options.registry,
    logger: options.logger,
  };
}
