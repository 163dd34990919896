/**
 * The producer's Kafka plumbing that does not depend on a bus: the kafkajs client
 * with timeouts that fit inside `sendTimeoutMs`, its logs through pino, mapping Kafka
 * failures (of either producer backend) to our errors, and provisioning the topic
 * before the first send (always through kafkajs's admin client).
 */
import { Kafka, logLevel as KafkaLogLevel, type LogEntry } from "kafkajs";
import type { Logger } from "pino";
import { BrokerUnavailableError, ChatBusError, describeError, ProduceRejectedError } from "./errors.ts";
import type { ResolvedOptions } from "./options.ts";
import { ensureTopic } from "./topic.ts";

/**
 * kafkajs logs through pino: its errors during retries are warnings for us (it
 * retries them; what it gives up on reaches the caller as an error), its info is
 * our debug. Also the consumer runtime's (exported from `@chatbus/producer-sdk/internal`).
 */
export function kafkaLogCreator(logger: Logger | undefined) {
  return () =>
    ({ level, log }: LogEntry) => {
      if (!logger) return;
      const { message, ...extra } = log;
      const entry = { ...extra, component: "kafkajs" };
      if (level <= KafkaLogLevel.WARN) logger.warn(entry, message);
      else if (level === KafkaLogLevel.INFO) logger.debug(entry, message);
      else logger.trace(entry, message);
    };
}

/** A @platformatic/kafka error: its `code` is a string with this prefix. */
const platformaticCodePrefix = "PLT_KFK_";

/** The part of a @platformatic/kafka error the mapping reads (GenericError, MultipleErrors). */
interface PlatformaticError extends Error {
  code: string;
  errors?: unknown[];
  /** The first error in the chain (itself, or one in `errors`) whose `property` is `value`. */
  findBy?(property: string, value: unknown): (Error & { code?: string; serverErrorMessage?: string }) | null;
}

function isPlatformaticError(error: unknown): error is PlatformaticError {
  const code = (error as { code?: unknown })?.code;
  return error instanceof Error && typeof code === "string" && code.startsWith(platformaticCodePrefix);
}

/**
 * A @platformatic/kafka failure as one of our errors. It retries what the broker
 * marks retriable and gives up on the first refusal that is not (`canRetry: false`),
 * wrapping attempts in a MultipleErrors: a protocol error that cannot be retried is
 * a refusal, anything else (network, timeouts, retries used up) is unavailability.
 */
function fromPlatformatic(options: ResolvedOptions, error: PlatformaticError): ChatBusError {
  const refusal = error.findBy?.("canRetry", false);
  if (refusal?.code === `${platformaticCodePrefix}PROTOCOL`) {
    const detail = refusal.serverErrorMessage
      ? `${refusal.message} (${refusal.serverErrorMessage})`
      : refusal.message;
    return new ProduceRejectedError(options.topic, detail, error);
  }
  // "produce failed 9 times." says little: the last attempt's error says why.
  const last = error.errors?.at(-1);
  const detail =
    last instanceof Error ? `${error.message} Last: ${describeError(last)}` : describeError(error);
  return new BrokerUnavailableError(options.brokers, detail, error);
}

/** A Kafka failure (kafkajs or @platformatic/kafka) as one of our errors: unreachable brokers versus a refusal. */
export function toChatBusError(options: ResolvedOptions, error: unknown): ChatBusError {
  if (error instanceof ChatBusError) return error;
  if (isPlatformaticError(error)) return fromPlatformatic(options, error);
  // kafkajs wraps a refusal it will not retry in KafkaJSNonRetriableError; judge the cause.
  const cause = (error as { cause?: unknown })?.cause;
  const root =
    (error as { name?: string })?.name === "KafkaJSNonRetriableError" && cause instanceof Error
      ? cause
      : error;
  const name = (root as { name?: string })?.name ?? "";
  if (name === "KafkaJSProtocolError" && (root as { retriable?: boolean }).retriable === false) {
    return new ProduceRejectedError(options.topic, describeError(root), error);
  }
  return new BrokerUnavailableError(options.brokers, describeError(error), error);
}

/**
 * Waits for `promise` at most `ms`: settles as it does when it is in time, else as
 * `onTimeout()` does (its return value, or what it throws). The timer is cleared
 * either way. The SDK throws from `onTimeout` (`timedOut`); the consumer runtime
 * returns `false` to go on without a step that hangs (exported from
 * `@chatbus/producer-sdk/internal`).
 */
export async function within<T, U>(promise: Promise<T>, ms: number, onTimeout: () => U): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  }).then(onTimeout);
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Throws the error of a step that did not finish within `sendTimeoutMs` (an `onTimeout` of `within`). */
export function timedOut(options: ResolvedOptions, what: string): () => never {
  return () => {
    throw new BrokerUnavailableError(
      options.brokers,
      `${what} did not finish within ${options.sendTimeoutMs} ms`,
    );
  };
}

/** Kafka client settings that keep every step inside `sendTimeoutMs`. */
export function kafkaClient(options: ResolvedOptions): Kafka {
  const budget = options.sendTimeoutMs;
  return new Kafka({
    clientId: options.clientId,
    brokers: options.brokers,
    connectionTimeout: Math.min(3000, Math.max(100, Math.floor(budget / 4))),
    requestTimeout: Math.max(1000, budget),
    retry: { initialRetryTime: 100, maxRetryTime: Math.min(2000, budget), retries: 8 },
    logLevel: options.logger ? KafkaLogLevel.INFO : KafkaLogLevel.NOTHING,
    logCreator: kafkaLogCreator(options.logger),
  });
}

/**
 * Makes sure the topic exists with the expected partition count (when
 * `ensureTopic` is on), through a short-lived admin client. Throws a ChatBusError.
 */
export async function provisionTopic(kafka: Kafka, options: ResolvedOptions): Promise<void> {
  if (!options.ensureTopic) return;
  const { topic, partitions, sendTimeoutMs } = options;
  const admin = kafka.admin();
  try {
    await within(admin.connect(), sendTimeoutMs, timedOut(options, "connecting"));
    await within(
      ensureTopic(admin, {
        topic,
        partitions,
        replicationFactor: options.replicationFactor,
        logger: options.logger,
        timeoutMs: sendTimeoutMs * 2,
      }),
      sendTimeoutMs * 2 + 1000,
      timedOut(options, `checking topic "${topic}"`),
    );
  } catch (error) {
    throw toChatBusError(options, error);
  } finally {
    await admin.disconnect().catch(() => {});
  }
}
