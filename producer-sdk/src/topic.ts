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
  /** How long to wait for every partition to have a leader. Default: 30 s. */
  timeoutMs?: number | undefined;
}

/**
 * Creates `topic` with `partitions` partitions when it is missing and waits for its
 * leaders. When it exists with another partition count, throws TopicMismatchError
 * naming both counts: keys would land on other partitions than consumers and other
 * producers expect, so carrying on silently is never right. Throws a plain Error when
 * the partitions have no leaders within `timeoutMs`.
 * Resolves `"created"` or `"exists"`.
 */
export async function ensureTopic(admin: Admin, options: EnsureTopicOptions): Promise<"created" | "exists"> {
  const { topic, partitions } = options;
  // Leaders are awaited below: kafkajs's own wait fails on a busy broker with
  // UNKNOWN_TOPIC_OR_PARTITION while the new topic's metadata propagates.
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: partitions, replicationFactor: options.replicationFactor ?? -1 }],
    waitForLeaders: false,
  });
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  for (;;) {
    const metadata = await admin.fetchTopicMetadata({ topics: [topic] }).catch((error: unknown) => {
      if ((error as { retriable?: boolean }).retriable) return undefined;
      throw error;
    });
    const found = metadata?.topics.find((t) => t.name === topic)?.partitions ?? [];
    if (!created && found.length > 0 && found.length !== partitions) {
      throw new TopicMismatchError(
        `topic "${topic}" has ${found.length} partitions but this bus expects ${partitions} (CHATBUS_PARTITIONS); ` +
          `set CHATBUS_PARTITIONS=${found.length} (or the partitions option) to match it, or use another topic.`,
      );
    }
    if (found.length === partitions && found.every((p) => p.leader >= 0)) break;
    if (Date.now() > deadline) {
      // Not a shape problem but an unhealthy cluster: the caller reports the brokers.
      const led = found.filter((p) => p.leader >= 0).length;
      throw new Error(`topic "${topic}" has a leader for ${led} of ${partitions} partitions after waiting`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  if (created) options.logger?.info({ topic, partitions }, "chatbus: created the chat topic");
  return created ? "created" : "exists";
}
