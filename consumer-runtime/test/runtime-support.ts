/**
 * Helpers of the runtime's integration tests: produce numbered messages per
 * conversation with the real codec, wait with deadlines, quiet loggers.
 */
import { type ChatEvent, encodeEvent } from "@chatbus/producer-sdk";
import { Kafka, logLevel, type Producer } from "kafkajs";
import { pino } from "pino";
import { kafkaBrokers } from "../../test/support/env.ts";

export const quietLogger = () => pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });

export function kafkaClient(brokers = kafkaBrokers()): Kafka {
  return new Kafka({ clientId: "chatbus-runtime-test", brokers, logLevel: logLevel.NOTHING });
}

export async function connectProducer(brokers = kafkaBrokers()): Promise<Producer> {
  const producer = kafkaClient(brokers).producer({ idempotent: true });
  await producer.connect();
  return producer;
}

/** The `n` carried in the text of a message produced by `produceNumbered`. */
export function numberOf(event: ChatEvent): number {
  if (event.type !== "chat.message.sent" || event.data.content.type !== "text") return -1;
  return Number(event.data.content.text.split(":")[1]);
}

/**
 * Produces `perConversation` messages to each of `conversations` conversations,
 * interleaved (round-robin), text `n:<i>`. Returns the conversation ids.
 */
export async function produceNumbered(
  producer: Producer,
  topic: string,
  conversations: number,
  perConversation: number,
  prefix = "conv",
  /** Records per send (= per record batch on the broker). */
  chunk = 1000,
): Promise<string[]> {
  const ids = Array.from({ length: conversations }, (_, i) => `${prefix}-${i}`);
  const messages = [];
  for (let n = 0; n < perConversation; n++) {
    for (const id of ids) {
      const { record } = encodeEvent(
        id,
        { type: "chat.message.sent", senderId: "tester", content: { type: "text", text: `n:${n}` } },
        { source: "/test" },
      );
      messages.push(record);
    }
  }
  for (let i = 0; i < messages.length; i += chunk) {
    await producer.send({ topic, acks: -1, messages: messages.slice(i, i + chunk) });
  }
  return ids;
}

/** Polls `check` until it is true; fails naming `what` after `timeoutMs`. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Asserts each conversation's numbers are 0..n-1 in order (duplicates allowed when `allowRepeats`). */
export function orderProblems(
  seen: Map<string, number[]>,
  perConversation: number,
  allowRepeats = false,
): string[] {
  const problems: string[] = [];
  for (const [id, numbers] of seen) {
    let expected = 0;
    for (const n of numbers) {
      if (n === expected) expected++;
      else if (!(allowRepeats && n < expected)) {
        problems.push(`${id}: got ${n} when ${expected} was due (${numbers.join(",")})`);
        break;
      }
    }
    if (expected !== perConversation && problems.length === 0) {
      problems.push(`${id}: ended at ${expected} of ${perConversation}`);
    }
  }
  return problems;
}
