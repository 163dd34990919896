/**
 * The dead-letter write: the row in PostgreSQL (`dead_letters`, the operator's
 * view) first, then the copy on the dead-letter topic. When either fails, the error
 * names where and carries both the original failure and the write's (watermill's
 * poison queue reports both rather than dropping one); the runtime retries the write
 * with back-off and never moves past the record until it is written.
 */
import type { Producer } from "kafkajs";
import { DeadLetterWriteError } from "../errors.ts";
import { publishDeadLetter } from "./dead-letter-topic.ts";
import { type Queryable, recordDeadLetter } from "./store.ts";
import type { DeadLetterInput } from "./types.ts";

/**
 * Stores and publishes one dead letter; resolves with its row id. Rejects with a
 * DeadLetterWriteError whose `original` is `original` (what the handler threw, else
 * the dead letter's message) and whose `writeError` is what the write hit.
 */
export async function writeDeadLetter(
  pool: Queryable,
  producer: Producer,
  deadLetterTopic: string,
  input: DeadLetterInput,
  original: unknown,
): Promise<string> {
  let id: string;
  try {
    id = (await recordDeadLetter(pool, input)).id;
  } catch (error) {
    throw new DeadLetterWriteError("PostgreSQL table dead_letters", original ?? input.errorMessage, error);
  }
  try {
    await publishDeadLetter(producer, deadLetterTopic, input);
  } catch (error) {
    throw new DeadLetterWriteError(`Kafka topic ${deadLetterTopic}`, original ?? input.errorMessage, error);
  }
  return id;
}
