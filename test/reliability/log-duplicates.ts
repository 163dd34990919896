/**
 * Reads a whole topic back and counts how often each event id (`ce_id` header) is
 * stored in the log, and counts handler invocations per event id. Used by the
 * failover test: a UNIQUE column in PostgreSQL cannot show a duplicate (the second
 * insert is refused or ignored), so duplicates are counted where they can happen:
 * in the Kafka log (a producer retry without idempotence) and in handler calls
 * (at-least-once redelivery after a rebalance or a lost commit).
 */
import { randomBytes } from "node:crypto";
import { Kafka, logLevel } from "kafkajs";

/** One record as read back. */
export interface LoggedRecord {
  partition: number;
  offset: string;
  ceId: string | null;
  ceType: string | null;
}

/** Copies per key: how many keys appear more than once, and the extra copies in all. */
export interface DuplicateCount {
  distinct: number;
  total: number;
  /** Keys seen more than once. */
  duplicated: number;
  /** Copies beyond the first, summed. */
  extra: number;
  /** Up to five duplicated keys with their counts, for the failure message. */
  examples: [string, number][];
}

/** Counts repeated keys in `counts` (key → occurrences). */
export function countDuplicates(counts: Map<string, number>): DuplicateCount {
  let total = 0;
  let extra = 0;
  const repeated: [string, number][] = [];
  for (const [key, n] of counts) {
    total += n;
    if (n > 1) {
      extra += n - 1;
      repeated.push([key, n]);
    }
  }
  return { distinct: counts.size, total, duplicated: repeated.length, extra, examples: repeated.slice(0, 5) };
}

/** Occurrences per value. */
export function tally(values: Iterable<string>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const value of values) counts.set(value, (counts.get(value) ?? 0) + 1);
  return counts;
}

/**
 * Reads every record of `topic` from offset 0 up to the end offsets at the time of
 * the call, with a throwaway consumer group. Rejects after `timeoutMs`.
 */
export async function readWholeTopic(
  brokers: string[],
  topic: string,
  timeoutMs = 120_000,
): Promise<LoggedRecord[]> {
  const kafka = new Kafka({ clientId: "log-reader", brokers, logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(topic).finally(() => admin.disconnect());
  const remaining = new Map(
    ends.filter((p) => BigInt(p.high) > BigInt(p.low)).map((p) => [p.partition, BigInt(p.high) - 1n]),
  );
  const records: LoggedRecord[] = [];
  if (remaining.size === 0) return records;
  const consumer = kafka.consumer({ groupId: `log-reader-${randomBytes(6).toString("hex")}` });
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new Error(
              `read ${records.length} records of ${topic}; partitions ${[...remaining.keys()]} unfinished`,
            ),
          ),
        timeoutMs,
      );
      consumer
        .run({
          autoCommit: false,
          eachMessage: async ({ partition, message }) => {
            const header = (name: string) => {
              const value = message.headers?.[name];
              return value === undefined ? null : String(Array.isArray(value) ? value[0] : value);
            };
            const last = remaining.get(partition);
            if (last === undefined || BigInt(message.offset) > last) return;
            records.push({
              partition,
              offset: message.offset,
              ceId: header("ce_id"),
              ceType: header("ce_type"),
            });
            if (BigInt(message.offset) === last) remaining.delete(partition);
            if (remaining.size === 0) {
              clearTimeout(timer);
              resolve();
            }
          },
        })
        .catch(reject);
    });
  } finally {
    await consumer.disconnect();
  }
  return records;
}
