/**
 * The runtime's types: the public ones (a handler, its context, the runtime) and the
 * internal ones its modules share (a registration, one event in a queue, one
 * partition's work).
 */
import type { ChatEvent, ChatEventType, DecodeResult } from "@chatbus/producer-sdk";
import type { KafkaMessage } from "kafkajs";
import type { Logger } from "pino";
import type { ReplayClaim } from "../dead-letters/store.ts";
import type { DeadLetterInput } from "../dead-letters/types.ts";
import type { SkipRequest } from "../status/skips.ts";
import type { SubscriptionState } from "../status/store.ts";
import type { BreakerState } from "./circuit-breaker.ts";
import type { KeyQueues, Step } from "./key-queues.ts";
import type { OffsetTracker } from "./offset-tracker.ts";
import type { RegistrationOptions } from "./options.ts";
import type { BusinessRetryOptions } from "./retry.ts";

/** What a handler gets besides the event. */
export interface HandlerContext {
  /** The subscription (consumer group) running the handler. */
  subscription: string;
  conversationId: string;
  partition: number;
  /** Kafka offset of the record (decimal string). */
  offset: string;
  /** 1 on the first run of this handler for this event, then 2, 3, ... (per event). */
  attempt: number;
  /** True when an operator replayed the event from the dead letters. */
  replay: boolean;
  /** A child logger carrying subscription, conversation, partition, offset and event id. */
  logger: Logger;
  /**
   * Aborted when this call is given up: at its deadline (`handlerTimeoutMs`), when
   * the group rebalances or the consumer restarts, or when `stop()` passes the
   * shutdown deadline. Pass it to your I/O; a result after the abort is ignored.
   */
  signal: AbortSignal;
}

/** A handler: resolve = handled; throw BusinessError = business failure; throw anything else = system failure. */
export type Handler<T extends ChatEventType = ChatEventType> = (
  event: ChatEvent<T>,
  context: HandlerContext,
) => Promise<void> | void;

/** A running (or ready to run) subscription. */
export interface Runtime {
  /** The subscription name (= consumer group). */
  readonly subscription: string;
  /** This process's instance id (a row of `subscription_status`). */
  readonly instanceId: string;
  /** Current breaker state. */
  readonly breakerState: BreakerState;
  /** Registers a handler for one event type or all (`"*"`); only before `start`. */
  on<T extends ChatEventType>(type: T | "*", handler: Handler<T>, options?: RegistrationOptions): Runtime;
  /** Connects, joins the group and starts handling; resolves once the group is joined. */
  start(): Promise<void>;
  /** Graceful stop: stop fetching, let in-flight handlers finish (up to `shutdownTimeoutMs`), commit, leave. */
  stop(): Promise<void>;
  /** The state this instance publishes to `subscription_status`. */
  state(): SubscriptionState;
}

/** Where a runtime is in its life: `stop()` moves a starting or running one to stopping. */
export type Phase = "idle" | "starting" | "running" | "stopping" | "stopped";

/** One `on(...)` call. */
export interface Registration {
  type: ChatEventType | "*";
  handler: Handler<ChatEventType>;
  businessRetry: BusinessRetryOptions;
  /** Deadline of one call (ms): the registration's, else the subscription's. */
  handlerTimeoutMs: number;
}

/** One event (or one replayed dead letter) in its conversation's queue. */
export interface Item {
  work: PartitionWork;
  /** The conversation id (or the record key of a poison record). */
  key: string;
  offset: bigint;
  message: KafkaMessage;
  decoded: DecodeResult;
  /** Handlers still to succeed for this event (null until first run). */
  remaining: Registration[] | null;
  /**
   * Runs of the handler at the head of `remaining` (handlers run in order, and only
   * the head runs): plain numbers, not a Map per event.
   */
  attempts: number;
  /** Runs of the handlers that already succeeded for this event. */
  earlierAttempts: number;
  businessFailures: Map<Registration, number> | null;
  /** Consecutive system failures of this event; reset by a success (kafkajs #1592). */
  systemFailures: number;
  firstFailedAt: Date | null;
  lastError: unknown;
  pendingDeadLetter: DeadLetterInput | null;
  deadLetterWriteFailures: number;
  /** When the event first started running (ms since epoch), for the oldest in-flight age. */
  startedAt: number | null;
  /** First system failure of the current streak (null after a success): the stuck clock. */
  systemSince: Date | null;
  /** Wakes the item from a back-off early (an operator skip). */
  wake: (() => void) | null;
  /** An operator asked to skip this record (applied at its next run). */
  skip: SkipRequest | null;
  /** Already waited once for a fenced call of its key from a previous generation. */
  waitedForFenced: boolean;
  /** Set for a dead-letter replay run in the conversation's queue (not a tracked offset). */
  replay: {
    row: ReplayClaim;
    /** The outcome to write once the handlers ran (kept so that a failed write never re-runs them). */
    mark: { status: "replayed" | "waiting"; error: string | null } | { step: Step } | null;
  } | null;
}

/** One assigned partition's queued work, for one generation of the assignment. */
export interface PartitionWork {
  partition: number;
  generation: number;
  queues: KeyQueues<Item>;
  tracker: OffsetTracker;
  highest: bigint | null;
  backPressure: boolean;
}

/** The queue key of a poison record without a record key. */
export const noKey = "\u0000no-key";

/** Every handler run for the item so far (dead letters, stuck records). */
export function totalAttempts(item: Item): number {
  return item.earlierAttempts + item.attempts;
}

/** The head handler of `item.remaining` succeeded: its runs move to `earlierAttempts`. */
export function headSucceeded(item: Item): void {
  item.remaining!.shift();
  item.earlierAttempts += item.attempts;
  item.attempts = 0;
}

/** A fresh item for a record of `work`'s partition. */
export function newItem(
  work: PartitionWork,
  key: string,
  offset: bigint,
  message: KafkaMessage,
  decoded: DecodeResult,
): Item {
  return {
    work,
    key,
    offset,
    message,
    decoded,
    remaining: null,
    attempts: 0,
    earlierAttempts: 0,
    businessFailures: null,
    systemFailures: 0,
    firstFailedAt: null,
    lastError: undefined,
    pendingDeadLetter: null,
    deadLetterWriteFailures: 0,
    startedAt: null,
    systemSince: null,
    wake: null,
    skip: null,
    waitedForFenced: false,
    replay: null,
  };
}
