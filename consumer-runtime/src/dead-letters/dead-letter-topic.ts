/**
 * The dead-letter topic (`<topic>.dlq` by default): the original record, byte for
 * byte, with the reason in `chatbus_dlq_*` headers, for tools that read Kafka rather
 * than PostgreSQL. PostgreSQL stays the record operators replay from.
 */
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

/** Creates the dead-letter topic when missing (same partition count as the source topic). */
export async function ensureDeadLetterTopic(admin: Admin, source: string, topic: string): Promise<void> {
  const existing = await admin.listTopics();
  if (existing.includes(topic)) return;
  let partitions = 1;
  if (existing.includes(source)) {
    const metadata = await admin.fetchTopicMetadata({ topics: [source] });
    partitions = metadata.topics[0]?.partitions.length ?? 1;
  }
  await admin.createTopics({ topics: [{ topic, numPartitions: partitions }], waitForLeaders: true });
}
