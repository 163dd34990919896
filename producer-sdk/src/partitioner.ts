/** Which partition holds a conversation: the same answer as Kafka's Java clients give. */

const seed = 0x9747b28c | 0;
const m = 0x5bd1e995;

/**
 * Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`) in 32-bit integer
 * arithmetic. kafkajs's DefaultPartitioner computes the same hash with a 64-bit Long
 * emulation, several microseconds a key; this is a fraction of that. Hashes the first
 * `length` bytes of `data`.
 */
export function murmur2(data: Uint8Array, length = data.length): number {
  let h = seed ^ length;
  const length4 = length >> 2;
  for (let i = 0; i < length4; i++) {
    const i4 = i << 2;
    let k = data[i4]! | (data[i4 + 1]! << 8) | (data[i4 + 2]! << 16) | (data[i4 + 3]! << 24);
    k = Math.imul(k, m);
    k ^= k >>> 24;
    k = Math.imul(k, m);
    h = Math.imul(h, m) ^ k;
  }
  const tail = length & ~3;
  switch (length & 3) {
    // biome-ignore lint/suspicious/noFallthroughSwitchClause: murmur2 mixes the tail bytes by falling through
    case 3:
      h ^= data[tail + 2]! << 16;
    // biome-ignore lint/suspicious/noFallthroughSwitchClause: see above
    case 2:
      h ^= data[tail + 1]! << 8;
    case 1:
      h ^= data[tail]!;
      h = Math.imul(h, m);
  }
  h ^= h >>> 13;
  h = Math.imul(h, m);
  h ^= h >>> 15;
  return h;
}

/**
 * Where keys are encoded for hashing: one buffer reused for every key that surely
 * fits (a UTF-16 unit is at most 3 UTF-8 bytes), instead of a Buffer.from per send,
 * which cost as much as the hash itself. Encoding is synchronous, so sharing is safe.
 */
const scratch = Buffer.allocUnsafe(3 * 256);

/**
 * A key → partition function for a topic of `partitions` partitions: murmur2 of the
 * key's UTF-8 bytes, made positive, modulo the partition count — exactly what the Java
 * client's built-in partitioner (and kafkajs's DefaultPartitioner) does for keyed
 * records. The bus sets each record's partition from it, so it knows the partition
 * (and thus the offset) of every record it sends.
 */
export function createKeyPartitioner(partitions: number): (key: string) => number {
  return (key) => {
    const hash =
      key.length <= 256 ? murmur2(scratch, scratch.write(key, "utf8")) : murmur2(Buffer.from(key, "utf8"));
    return (hash & 0x7fffffff) % partitions;
  };
}
