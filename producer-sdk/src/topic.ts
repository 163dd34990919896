/** Topic provisioning: the chat topic exists, with the partition count everyone routes by. */
import type { Admin } from "kafkajs";
import type { Logger } from "pino";
import { TopicMismatchError } from "./errors.ts";

/** What `ensureTopic` needs to know. */
export interface EnsureTopicOptions {
  topic: string;
  partitions: number;
  /** Replication factor for a new topic; the broker's default when omitted. */
  replicationFactor?: number | undefined;
  logger?: Logger | undefined;
}

/**
 * Creates `topic` with `partitions` partitions when it is missing and waits for its
 * leaders. When it exists with another partition count, throws TopicMismatchError
 * naming both counts: keys would land on other partitions than consumers and other
 * producers expect, so carrying on silently is never right.
 * Resolves `"created"` or `"exists"`.
 */
export async function ensureTopic(admin: Admin, options: EnsureTopicOptions): Promise<"created" | "exists"> {
  const { topic, partitions } = options;
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: partitions, replicationFactor: options.replicationFactor ?? -1 }],
    waitForLeaders: true,
  });
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] });
  const actual = metadata.topics.find((t) => t.name === topic)?.partitions.length ?? 0;
  if (actual !== partitions) {
    throw new TopicMismatchError(
      `topic "${topic}" has ${actual} partitions but this bus expects ${partitions} (CHATBUS_PARTITIONS); ` +
        `set CHATBUS_PARTITIONS=${actual} (or the partitions option) to match it, or use another topic.`,
    );
  }
  if (created) options.logger?.info({ topic, partitions }, "chatbus: created the chat topic");
  return created ? "created" : "exists";
}
