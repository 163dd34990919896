/**
 * Topic provisioning: the chat topic exists, with the partition count everyone routes
 * by, and keeps its records forever (`retention.ms=-1`): it is the source of truth
 * that the projection and every new subscription are rebuilt from.
 */
import kafkajs, { type Admin } from "kafkajs";

import type { Logger } from "pino";
import { TopicMismatchError } from "./errors.ts";

// kafkajs is CommonJS and Node's ESM loader does not see `ConfigResourceTypes` as a
// named export (vitest's transform does, which hid this): read it off the default.
const { ConfigResourceTypes } = kafkajs;

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

/** `retention.ms` of a new chat topic: never delete (docs/materialiser.md, "Retention"). */
export const chatTopicRetentionMs = -1;

/**
 * The topic's `retention.ms` as the broker reports it (its own or the broker's
 * default): -1 means forever. Null when the broker does not say.
 */
export async function topicRetentionMs(admin: Admin, topic: string): Promise<number | null> {
  const described = await admin.describeConfigs({
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ["retention.ms"] }],
    includeSynonyms: false,
  });
  const value = described.resources[0]?.configEntries.find(
    (e) => e.configName === "retention.ms",
  )?.configValue;
  if (value === undefined || value === null || !/^-?\d+$/.test(value)) return null;
  return Number(value);
}

/**
 * The one warning line for a chat topic whose records expire (null when they do
 * not): after that time a projection rebuild or a new subscription silently starts
 * from a partial history.
 */
export function retentionWarning(topic: string, retentionMs: number | null): string | null {
  if (retentionMs === null || retentionMs < 0) return null;
  const days = (retentionMs / 86_400_000).toFixed(retentionMs < 86_400_000 ? 2 : 0);
  return (
    `topic "${topic}" deletes records after retention.ms=${retentionMs} (${days} ${days === "1" ? "day" : "days"}): projection rebuilds and new ` +
    `subscriptions will miss older events; keep them forever with: kafka-configs.sh --bootstrap-server <broker> ` +
    `--alter --entity-type topics --entity-name ${topic} --add-config retention.ms=-1`
  );
}

/**
 * Creates `topic` with `partitions` partitions when it is missing and waits for its
 * leaders. When it exists with another partition count, throws TopicMismatchError
 * naming both counts: keys would land on other partitions than consumers and other
 * producers expect, so carrying on silently is never right. Throws a plain Error when
 * the partitions have no leaders within `timeoutMs`. A new topic keeps its records
 * forever (`retention.ms=-1`); an existing one that deletes them gets one warning
 * line (the logger's, or stderr without one) and is left as it is: changing a
 * cluster's retention is the operator's decision.
 * Resolves `"created"` or `"exists"`.
 */
export async function ensureTopic(admin: Admin, options: EnsureTopicOptions): Promise<"created" | "exists"> {
  const { topic, partitions } = options;
  // Leaders are awaited below: kafkajs's own wait fails on a busy broker with
  // UNKNOWN_TOPIC_OR_PARTITION while the new topic's metadata propagates.
  const created = await admin.createTopics({
    topics: [
      {
        topic,
        numPartitions: partitions,
        replicationFactor: options.replicationFactor ?? -1,
        configEntries: [{ name: "retention.ms", value: String(chatTopicRetentionMs) }],
      },
    ],
    waitForLeaders: false,
  });
  await waitForPartitionLeaders(admin, topic, partitions, options.timeoutMs ?? 30_000, (found) => {
    if (!created && found > 0 && found !== partitions) {
      throw new TopicMismatchError(
        `topic "${topic}" has ${found} partitions but this bus expects ${partitions} (CHATBUS_PARTITIONS); ` +
          `set CHATBUS_PARTITIONS=${found} (or the partitions option) to match it, or use another topic.`,
      );
    }
  });
  if (created) {
    options.logger?.info(
      { topic, partitions, retentionMs: chatTopicRetentionMs },
      "chatbus: created the chat topic",
    );
    return "created";
  }
  await warnOnFiniteRetention(admin, topic, options.logger);
  return "exists";
}

/**
 * Polls the topic's metadata until it has `partitions` partitions, each with a leader.
 * kafkajs's own `waitForLeaders` gives up on UNKNOWN_TOPIC_OR_PARTITION, which a busy
 * broker answers while a new topic's metadata propagates; here any retriable error
 * means "not yet". `check` sees each answer's partition count and may throw.
 * Throws a plain Error (an unhealthy cluster, not a shape problem) after `timeoutMs`.
 */
export async function waitForPartitionLeaders(
  admin: Admin,
  topic: string,
  partitions: number,
  timeoutMs: number,
  check: (found: number) => void = () => {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const metadata = await admin.fetchTopicMetadata({ topics: [topic] }).catch((error: unknown) => {
      if ((error as { retriable?: boolean }).retriable) return undefined;
      throw error;
    });
    const found = metadata?.topics.find((t) => t.name === topic)?.partitions ?? [];
    check(found.length);
    if (found.length === partitions && found.every((p) => p.leader >= 0)) return;
    if (Date.now() > deadline) {
      const led = found.filter((p) => p.leader >= 0).length;
      throw new Error(`topic "${topic}" has a leader for ${led} of ${partitions} partitions after waiting`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function warnOnFiniteRetention(admin: Admin, topic: string, logger: Logger | undefined): Promise<void> {
  let retentionMs: number | null;
  try {
    retentionMs = await topicRetentionMs(admin, topic);
  } catch (error) {
    // A user without DescribeConfigs rights can still produce: say so, do not fail.
    logger?.info({ topic, err: error }, "chatbus: could not read the chat topic's retention.ms");
    return;
  }
  const warning = retentionWarning(topic, retentionMs);
  if (!warning) return;
  if (logger) logger.warn({ topic, retentionMs }, `chatbus: ${warning}`);
  else console.warn(`chatbus: ${warning}`);
}
