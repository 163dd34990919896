/**
 * The dead-letter topic (`<topic>.dlq` by default): the original record, byte for
 * byte, with the reason in `chatbus_dlq_*` headers, for tools that read Kafka rather
 * than PostgreSQL. PostgreSQL stays the record operators replay from, so the topic
 * keeps its records for a long but finite time (`CHATBUS_DLQ_RETENTION_MS`, default
 * 365 days) rather than forever like the chat topic.
 */
import { waitForPartitionLeaders } from "@chatbus/producer-sdk/internal";
import type { Admin, Producer } from "kafkajs";
import type { DeadLetterInput } from "./types.ts";

/** Headers added to the original ones. */
export function deadLetterHeaders(input: DeadLetterInput): Record<string, string> {
  return {
    ...input.headers,
    chatbus_dlq_subscription: input.subscription,
    chatbus_dlq_failure_class: input.failureClass,
    chatbus_dlq_error_code: input.errorCode,
    chatbus_dlq_reason: input.errorMessage.slice(0, 4000),
    chatbus_dlq_source_topic: input.topic,
    chatbus_dlq_source_partition: String(input.partition),
    chatbus_dlq_source_offset: input.offset,
    chatbus_dlq_attempts: String(input.attempts),
    chatbus_dlq_failed_at: input.lastFailedAt.toISOString(),
  };
}

/** Writes one dead letter to the topic; acknowledged by all in-sync replicas. */
export async function publishDeadLetter(
  producer: Producer,
  topic: string,
  input: DeadLetterInput,
): Promise<void> {
  await producer.send({
    topic,
    acks: -1,
    messages: [{ key: input.key, value: input.value, headers: deadLetterHeaders(input) }],
  });
}

/** Default `retention.ms` of a new dead-letter topic: 365 days. */
export const defaultDeadLetterRetentionMs = 365 * 86_400_000;

/**
 * `CHATBUS_DLQ_RETENTION_MS`: a whole number of milliseconds of at least one hour, or
 * -1 (forever); the default when unset. Throws naming the variable otherwise.
 */
export function deadLetterRetentionMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.CHATBUS_DLQ_RETENTION_MS;
  if (raw === undefined || raw === "") return defaultDeadLetterRetentionMs;
  const value = Number(raw);
  if (!/^-?\d+$/.test(raw) || !Number.isSafeInteger(value) || (value !== -1 && value < 3_600_000)) {
    throw new Error(
      `CHATBUS_DLQ_RETENTION_MS must be milliseconds, at least 3600000 (one hour), or -1 (forever); got ${JSON.stringify(raw)}.`,
    );
  }
  return value;
}

/**
 * Creates the dead-letter topic when missing (same partition count as the source
 * topic), keeping records `retentionMs` (default: `CHATBUS_DLQ_RETENTION_MS`, else
 * 365 days). An existing topic is left as it is.
 */
export async function ensureDeadLetterTopic(
  admin: Admin,
  source: string,
  topic: string,
  options: { retentionMs?: number } = {},
): Promise<void> {
  const retentionMs = options.retentionMs ?? deadLetterRetentionMs();
  const existing = await admin.listTopics();
  if (existing.includes(topic)) return;
  let partitions = 1;
  if (existing.includes(source)) {
    const metadata = await admin.fetchTopicMetadata({ topics: [source] });
    partitions = metadata.topics[0]?.partitions.length ?? 1;
  }
  await admin.createTopics({
    topics: [
      {
        topic,
        numPartitions: partitions,
        configEntries: [{ name: "retention.ms", value: String(retentionMs) }],
      },
    ],
    // kafkajs's waitForLeaders fails on UNKNOWN_TOPIC_OR_PARTITION while a busy
    // broker propagates the new topic: poll instead.
    waitForLeaders: false,
  });
  await waitForPartitionLeaders(admin, topic, partitions, 30_000);
}
