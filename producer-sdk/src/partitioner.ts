/** Which partition holds a conversation: the same answer as Kafka's Java clients give. */
import { Partitioners } from "kafkajs";

/**
 * A key → partition function for a topic of `partitions` partitions, using kafkajs's
 * DefaultPartitioner: murmur2 of the key bytes, made positive, modulo the partition
 * count, exactly as the Java client's built-in partitioner does for keyed records.
 * The bus sets each record's partition from it, so it knows the partition (and
 * thus the offset) of every record it sends.
 */
export function createKeyPartitioner(partitions: number): (key: string) => number {
  const partitioner = Partitioners.DefaultPartitioner();
  const partitionMetadata = Array.from({ length: partitions }, (_, partitionId) => ({
    partitionId,
    leader: 0,
    replicas: [0],
    isr: [0],
    partitionErrorCode: 0,
  }));
  return (key) => partitioner({ topic: "", partitionMetadata, message: { key, value: null } });
}
