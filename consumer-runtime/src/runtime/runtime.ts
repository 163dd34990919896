/**
 * The consumer runtime: one subscription (consumer group) with handlers per event
 * type, per-conversation order with concurrency across conversations, system and
 * business retry, a circuit breaker, dead letters, status and metrics.
 *
 * How the pieces fit (see docs/consumer-runtime.md):
 * - kafkajs `eachBatch` only feeds records into key-level queues (one queue per
 *   conversation, `KeyQueues`) and waits a little (`batchDetachMs`) for them to run.
 *   It never waits for a slow or hung call: kafkajs fetches again only when every
 *   batch call of a fetch has returned, so one slow conversation would hold them all
 *   (issue 17). Back-pressure is `maxQueuedPerPartition` (the partition is paused).
 * - Every handler call has a deadline (`handlerTimeoutMs`) and its own `ctx.signal`
 *   (handler-call.ts). A call past its deadline is a system failure and is retried.
 * - Handlers run outside kafkajs's batch calls, so the runtime fences them itself
 *   (issue 20): when the group rebalances (or the consumer restarts) no new call
 *   starts, running calls are aborted and awaited (bounded by the rebalance timeout),
 *   finished work is committed, and only then does kafkajs rejoin (the REBALANCING
 *   listener refuses the rejoin until the fence is done; kafkajs retries it). A
 *   result that arrives after the fence began is discarded, never committed.
 * - Offsets are committed per partition up to the lowest unfinished event
 *   (`OffsetTracker`), at the end of each batch and every `commitIntervalMs`, only for
 *   partitions of the current assignment.
 * - Pause and resume (back-pressure, open breaker, shutdown) are driven from here,
 *   never by throwing from a handler callback (kafkajs #1376).
 */

import { setMaxListeners } from "node:events";
import {
  type ChatEvent,
  type ChatEventType,
  type DecodeResult,
  decodeRecord,
  eventTypes,
  ValidationError,
} from "@chatbus/producer-sdk";
import {
  type Admin,
  type Consumer,
  type EachBatchPayload,
  Kafka,
  type KafkaMessage,
  type LogEntry,
  logLevel,
  Partitioners,
  type Producer,
} from "kafkajs";
import pg from "pg";
import { type Logger, pino } from "pino";
import { Registry } from "prom-client";
import { ensureDeadLetterTopic } from "../dead-letters/dead-letter-topic.ts";
import { ReplayPoller, replayClaimTtlMs } from "../dead-letters/replay-poller.ts";
import { countWaitingDeadLetters, markReplayOutcome, type ReplayClaim } from "../dead-letters/store.ts";
import type { DeadLetterInput, FailureClass } from "../dead-letters/types.ts";
import { writeDeadLetter as storeDeadLetter } from "../dead-letters/writer.ts";
import {
  BusinessError,
  DeadLetterWriteError,
  DependencyUnavailableError,
  describe,
  RuntimeStateError,
} from "../errors.ts";
import { markSkipApplied, pendingSkips, type SkipRequest } from "../status/skips.ts";
import type { StuckRecord } from "../status/store.ts";
import {
  type PartitionStatus,
  publishSubscriptionStatus,
  removeSubscriptionStatus,
  type SubscriptionState,
} from "../status/store.ts";
import { createAlertSender } from "./alerts.ts";
import { clearBusinessFailures, countBusinessFailure } from "./business-attempts.ts";
import { type BreakerState, createCircuitBreaker } from "./circuit-breaker.ts";
import { type CallOutcome, HandlerTimeoutError, RunningCalls } from "./handler-call.ts";
import { KeyQueues, Slots, type Step } from "./key-queues.ts";
import { runtimeMetrics } from "./metrics.ts";
import { OffsetTracker } from "./offset-tracker.ts";
import {
  type RegistrationOptions,
  type ResolvedRuntimeOptions,
  type RuntimeOptions,
  resolveRegistration,
  resolveRuntimeOptions,
} from "./options.ts";
import { decideFailure, failureKind } from "./failure-policy.ts";
import { type BusinessRetryOptions, systemRetryDelay } from "./retry.ts";

/**
 * How long a batch call waits for its records to run before it returns (ms). Short
 * handlers finish inside the call; slow ones go on outside it while kafkajs fetches
 * the next batch for everyone else.
 */
const batchDetachMs = 100;

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

interface Registration {
  type: ChatEventType | "*";
  handler: Handler<ChatEventType>;
  businessRetry: BusinessRetryOptions;
  /** Deadline of one call (ms): the registration's, else the subscription's. */
  handlerTimeoutMs: number;
}

interface Item {
  work: PartitionWork;
  /** The conversation id (or the record key of a poison record). */
  key: string;
  offset: bigint;
  message: KafkaMessage;
  decoded: DecodeResult;
  /** Handlers still to succeed for this event (null until first run). */
  remaining: Registration[] | null;
  /** Runs per handler (created on first run: most events have one handler and no failure). */
  attempts: Map<Registration, number> | null;
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

interface PartitionWork {
  partition: number;
  generation: number;
  queues: KeyQueues<Item>;
  tracker: OffsetTracker;
  highest: bigint | null;
  backPressure: boolean;
}

const noKey = "\u0000no-key";

/** The fence of one rebalance or restart: done once running calls settled (bounded) and commits ran. */
interface Fence {
  promise: Promise<void>;
  done: boolean;
  startedAt: number;
}

function isRebalancing(error: unknown): boolean {
  const e = error as { type?: string; name?: string };
  return (
    e?.type === "REBALANCE_IN_PROGRESS" ||
    e?.type === "NOT_COORDINATOR_FOR_GROUP" ||
    e?.type === "ILLEGAL_GENERATION" ||
    e?.type === "UNKNOWN_MEMBER_ID"
  );
}

function headersAsStrings(headers: KafkaMessage["headers"]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    const first = Array.isArray(value) ? value[0] : value;
    if (first !== undefined) out[name] = first.toString();
  }
  return out;
}

/**
 * A handler's context. A class so that the hot path allocates one plain object and
 * no closures; the child logger is made only when a handler asks for it.
 */
class Context implements HandlerContext {
  #parent: Logger;
  #child: Logger | undefined;
  #eventId: string;
  #type: string;
  readonly conversationId: string;

  constructor(
    parent: Logger,
    readonly subscription: string,
    event: ChatEvent,
    readonly partition: number,
    readonly offset: string,
    readonly attempt: number,
    readonly signal: AbortSignal,
    readonly replay: boolean,
  ) {
    this.#parent = parent;
    this.conversationId = event.conversationId;
    this.#eventId = event.id;
    this.#type = event.type;
  }

  get logger(): Logger {
    this.#child ??= this.#parent.child({
      conversationId: this.conversationId,
      partition: this.partition,
      offset: this.offset,
      eventId: this.#eventId,
      type: this.#type,
    });
    return this.#child;
  }
}

/** Calls a handler so that a synchronous throw becomes a rejection. */
async function callHandler(
  handler: Handler<ChatEventType>,
  event: ChatEvent,
  ctx: HandlerContext,
): Promise<void> {
  await handler(event, ctx);
}

/** A sleep that ends early (resolving) when `signal` aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

async function withDeadline(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const result = await Promise.race([promise.then(() => true as const), timeout]);
  clearTimeout(timer);
  return result;
}

function kafkaLogCreator(logger: Logger) {
  return () =>
    ({ level, log }: LogEntry) => {
      const { message, ...extra } = log;
      const fields = { ...extra, component: "kafkajs" };
      if (level === logLevel.ERROR) logger.warn(fields, message);
      else if (level === logLevel.WARN) logger.warn(fields, message);
      else if (level === logLevel.INFO) logger.debug(fields, message);
      else logger.trace(fields, message);
    };
}

/**
 * Creates a subscription runtime. Options are validated at once (a ValidationError
 * names the bad field); nothing connects before `start()`.
 */
export function createRuntime(options: RuntimeOptions): Runtime {
  const config: ResolvedRuntimeOptions = resolveRuntimeOptions(options);
  const { group: subscription, topic, instanceId } = config;
  const logger = (config.logger ?? pino({ level: process.env.LOG_LEVEL ?? "info" })).child({
    subscription,
  });
  const registry = config.registry ?? new Registry();
  const metrics = runtimeMetrics(registry);
  const breaker = createCircuitBreaker(subscription, config.breaker);
  const alerts = createAlertSender({
    url: config.alertWebhook,
    logger,
    minIntervalMs: config.alertMinIntervalMs,
  });
  const slots = new Slots(config.concurrency);
  const registrations: Registration[] = [];

  let started = false;
  let stopping = false;
  let stopped = false;
  let rebalancing = false;
  let rebalanceSettled: { promise: Promise<void>; resolve: () => void } = settled();
  /** The fence of the current rebalance or restart (null while consuming normally). */
  let fence: Fence | null = null;
  const calls = new RunningCalls();
  /** Events that started running and are not finished (oldest in-flight age, stuck, skips). */
  const held = new Set<Item>();
  let generation = 0;
  let probeInFlight = false;
  let restartDelayMs = 1000;
  const restarted = new WeakSet<Consumer>();
  const startedAt = new Date().toISOString();
  const counts = { processed: 0, failed: 0, deadLettered: 0 };
  const assigned = new Set<number>();
  const kafkaPaused = new Set<number>();
  const works = new Map<number, PartitionWork>();
  const stopSleeps = new AbortController();
  // Every conversation waiting on a back-off listens to it: more than Node's default
  // of 10 at once is normal, and sleep() removes its listener when it ends.
  setMaxListeners(0, stopSleeps.signal);
  const timers: NodeJS.Timeout[] = [];
  const lastPartitionStatus = new Map<number, PartitionStatus>();

  let pool: pg.Pool;
  let ownsPool = false;
  let kafka: Kafka;
  let consumer: Consumer;
  let producer: Producer;
  let admin: Admin;

  function settled() {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => {
      resolve = r;
    });
    return { promise, resolve };
  }

  metrics.breakerState.set({ subscription }, 0);
  // Counters start at 0 so that rate() and increase() see their first increment (docs/metrics.md).
  metrics.restarts.inc({ subscription }, 0);
  for (const failure_class of ["poison", "business", "system"]) {
    metrics.failed.inc({ subscription, failure_class }, 0);
    metrics.retried.inc({ subscription, failure_class }, 0);
    metrics.deadLettered.inc({ subscription, failure_class }, 0);
  }
  breaker.onTransition((to, from) => {
    const fields = { breaker: to, from };
    if (to === "open") logger.warn(fields, `circuit breaker of subscription ${subscription} opened`);
    else logger.info(fields, `circuit breaker of subscription ${subscription} is ${to}`);
    metrics.breakerState.set({ subscription }, to === "closed" ? 0 : to === "halfOpen" ? 1 : 2);
    metrics.breakerTransitions.inc({ subscription, to });
    if (to === "open") {
      alerts.send({
        kind: "breaker_opened",
        subscription,
        instanceId,
        message: `The circuit breaker of subscription ${subscription} opened: consumption is paused until a probe succeeds.`,
      });
    } else if (to === "closed") {
      alerts.send({
        kind: "breaker_closed",
        subscription,
        instanceId,
        message: `The circuit breaker of subscription ${subscription} closed: consumption resumed.`,
      });
    }
    applyPause();
  });

  // Labelled children cached per event type: the hot path does no label lookups.
  const byType = new Map<
    string,
    {
      consumed: ReturnType<typeof metrics.consumed.labels>;
      handled: ReturnType<typeof metrics.handled.labels>;
      duration: ReturnType<typeof metrics.handlerDuration.labels>;
    }
  >();
  function typeMetrics(type: string) {
    let found = byType.get(type);
    if (!found) {
      found = {
        consumed: metrics.consumed.labels({ subscription, type }),
        handled: metrics.handled.labels({ subscription, type }),
        duration: metrics.handlerDuration.labels({ subscription, type }),
      };
      byType.set(type, found);
    }
    return found;
  }
  const endToEnd = metrics.endToEndLatency.labels({ subscription });

  function handlersFor(type: ChatEventType): Registration[] {
    return registrations.filter((r) => r.type === type || r.type === "*");
  }

  // ---- pause and resume -------------------------------------------------------------

  function applyPause(): void {
    if (!consumer || stopped) return;
    for (const partition of assigned) {
      const want = stopping || breaker.state === "open" || works.get(partition)?.backPressure === true;
      // kafkajs throws while its consumer group is torn down (crash window, R4): the
      // restart re-applies pauses after the next assignment, so a throw here is harmless.
      try {
        if (want && !kafkaPaused.has(partition)) {
          consumer.pause([{ topic, partitions: [partition] }]);
          kafkaPaused.add(partition);
        } else if (!want && kafkaPaused.has(partition)) {
          consumer.resume([{ topic, partitions: [partition] }]);
          kafkaPaused.delete(partition);
        }
      } catch (error) {
        logger.debug(
          { err: error, partition },
          "pause/resume refused by kafkajs; re-applied at the next assignment",
        );
      }
    }
  }

  function checkBackPressure(work: PartitionWork): void {
    const max = config.maxQueuedPerPartition;
    if (!work.backPressure && work.queues.size >= max) {
      work.backPressure = true;
      logger.debug({ partition: work.partition, queued: work.queues.size }, "partition paused: queue full");
      applyPause();
    } else if (work.backPressure && work.queues.size <= Math.floor(max / 2)) {
      work.backPressure = false;
      logger.debug(
        { partition: work.partition, queued: work.queues.size },
        "partition resumed: queue drained",
      );
      applyPause();
    }
  }

  // ---- assignment -------------------------------------------------------------------

  /** Events fetched and not finished, over every partition of this generation. */
  function inFlightCount(): number {
    let n = 0;
    for (const work of works.values()) n += work.queues.size;
    return n;
  }

  function dropAllWork(): void {
    // Replays that were queued here go back to the pool (the partition's owner claims them).
    void replays.releaseAll();
    for (const work of works.values()) work.queues.close();
    works.clear();
    held.clear();
    metrics.inFlight.set({ subscription }, 0);
  }

  /** How long a fence waits for aborted calls before it gives up on them (ms). */
  function fenceBoundMs(): number {
    return Math.max(1000, config.rebalanceTimeoutMs - 10_000);
  }

  /**
   * Fences in-flight work before the group is rejoined (or the consumer restarted):
   * no new call starts (`rebalancing`), running calls get their signal aborted and are
   * awaited up to `fenceBoundMs`, and what finished before is committed. Results of
   * the aborted calls are discarded (never committed). Idempotent per rebalance.
   */
  function startFence(why: string): Fence {
    if (fence) return fence;
    rebalancing = true;
    const startedAt = Date.now();
    const aborted = calls.abortAll("fence");
    const running = aborted.length;
    const bound = fenceBoundMs();
    const created: Fence = {
      done: false,
      startedAt,
      promise: (async () => {
        const settledInTime = await withDeadline(RunningCalls.whenSettled(aborted), bound);
        if (!settledInTime) {
          logger.warn(
            { running: calls.size, boundMs: bound },
            `handlers ignored their aborted ctx.signal for ${bound} ms; going on (${why}) without them, their results are discarded`,
          );
        }
        await commitQuietly();
      })(),
    };
    void created.promise.then(() => {
      created.done = true;
      logger.info({ why, running, ms: Date.now() - startedAt }, "in-flight work fenced");
    });
    fence = created;
    return created;
  }

  function onAssignment(partitions: number[]): void {
    // Normally fenced already (REBALANCING); an eviction rejoins without that event:
    // abort what still runs so that it cannot overlap the new owner for long.
    if (!fence && calls.size > 0) startFence("assignment");
    fence = null;
    generation++;
    // kafkajs restarts every assigned partition from its committed offset: the
    // queued work of the previous generation would be delivered again, so drop it.
    dropAllWork();
    assigned.clear();
    for (const p of partitions) assigned.add(p);
    for (const p of [...kafkaPaused]) if (!assigned.has(p)) kafkaPaused.delete(p);
    // Make kafkajs's paused set match ours for the new assignment.
    for (const p of assigned) {
      consumer.resume([{ topic, partitions: [p] }]);
      kafkaPaused.delete(p);
    }
    rebalancing = false;
    rebalanceSettled.resolve();
    rebalanceSettled = settled();
    for (const p of lastPartitionStatus.keys()) if (!assigned.has(p)) lastPartitionStatus.delete(p);
    logger.info({ partitions: [...assigned].sort((a, b) => a - b), generation }, "partitions assigned");
    applyPause();
  }

  function workFor(partition: number): PartitionWork {
    let work = works.get(partition);
    if (!work) {
      const created: PartitionWork = {
        partition,
        generation,
        queues: new KeyQueues<Item>(slots, runItem, (item) => finishItem(item)),
        tracker: new OffsetTracker(),
        highest: null,
        backPressure: false,
      };
      works.set(partition, created);
      work = created;
    }
    return work;
  }

  // ---- commits ----------------------------------------------------------------------

  function committable(): { partition: number; offset: string; work: PartitionWork; value: bigint }[] {
    const out = [];
    for (const work of works.values()) {
      if (work.queues.closed || work.generation !== generation || !assigned.has(work.partition)) continue;
      const value = work.tracker.toCommit();
      if (value !== null) out.push({ partition: work.partition, offset: value.toString(), work, value });
    }
    return out;
  }

  async function commit(only?: PartitionWork): Promise<void> {
    const list = committable().filter((c) => !only || c.work === only);
    if (list.length === 0) return;
    await consumer.commitOffsets(list.map(({ partition, offset }) => ({ topic, partition, offset })));
    for (const c of list) c.work.tracker.markCommitted(c.value);
  }

  async function commitQuietly(only?: PartitionWork): Promise<void> {
    try {
      await commit(only);
    } catch (error) {
      logger.debug({ err: error }, "offset commit failed; the next commit covers it");
    }
  }

  // ---- the batch feed ---------------------------------------------------------------

  async function eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale } = payload;
    if (stopping) return;
    if (rebalancing) {
      // A fence is on: accept nothing, and hold kafkajs here (it cannot rejoin while
      // a batch call is open) until the fence is done; its next heartbeat then fails
      // with the rebalance and kafkajs rejoins.
      await fence?.promise;
      return;
    }
    const partition = batch.partition;
    if (!assigned.has(partition)) assigned.add(partition);
    const work = workFor(partition);
    let lastAccepted: string | undefined;
    // Counted per batch, by runs of one type: one counter update instead of one per record.
    let runType = "";
    let runLength = 0;
    if (!isRunning() || isStale()) return;
    for (const message of batch.messages) {
      if (stopping || work.queues.closed) break;
      const offset = BigInt(message.offset);
      if (work.highest !== null && offset <= work.highest) continue;
      work.highest = offset;
      work.tracker.track(offset);
      const decoded = decodeRecord(message);
      const type = decoded.ok ? decoded.event.type : "poison";
      if (type !== runType) {
        if (runLength > 0) typeMetrics(runType).consumed.inc(runLength);
        runType = type;
        runLength = 0;
      }
      runLength++;
      const key = decoded.ok ? decoded.event.conversationId : (message.key?.toString() ?? noKey);
      work.queues.push(key, newItem(work, key, offset, message, decoded));
      lastAccepted = message.offset;
    }
    if (runLength > 0) typeMetrics(runType).consumed.inc(runLength);
    // Once per batch: kafkajs parses every resolved offset into a Long.
    if (lastAccepted !== undefined) resolveOffset(lastAccepted);
    checkBackPressure(work);
    try {
      // Short handlers finish here; slow ones go on after the call returns.
      await withDeadline(work.queues.whenQuiet(), batchDetachMs);
      await heartbeat();
      await commit(work);
    } catch (error) {
      if (!isRebalancing(error)) {
        logger.warn({ err: error, partition }, "batch bookkeeping failed; kafkajs retries");
        throw error;
      }
      // Fence and commit before giving partitions up (kafkajs #28), then rejoin.
      await startFence("rebalance").promise;
      throw error;
    }
  }

  // ---- running one event ------------------------------------------------------------

  function newItem(
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
      attempts: null,
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

  function finishItem(item: Item): void {
    const { work } = item;
    if (item.replay) replays.finished(item.replay.row.id);
    else work.tracker.finish(item.offset);
    held.delete(item);
    if (work.backPressure) checkBackPressure(work);
  }

  function context(item: Item, attempt: number, signal: AbortSignal): HandlerContext {
    const event = (item.decoded as { event: ChatEvent }).event;
    return new Context(
      logger,
      subscription,
      event,
      item.work.partition,
      item.message.offset,
      attempt,
      signal,
      item.replay !== null,
    );
  }

  /** Runs the item again after `ms`, or earlier on stop or when an operator skip wakes it. */
  function later(ms: number, item?: Item): Step {
    if (!item) return { kind: "later", when: sleep(ms, stopSleeps.signal) };
    const woken = new Promise<void>((resolve) => {
      item.wake = resolve;
    });
    return {
      kind: "later",
      when: Promise.race([sleep(ms, stopSleeps.signal), woken]).finally(() => {
        item.wake = null;
      }),
    };
  }

  function deadLetterInput(
    item: Item,
    failureClass: FailureClass,
    code: string,
    message: string,
    stack: string | null,
  ): DeadLetterInput {
    const now = new Date();
    const event = item.decoded.ok ? item.decoded.event : null;
    let attempts = 0;
    for (const n of item.attempts?.values() ?? []) attempts += n;
    return {
      subscription,
      topic,
      partition: item.work.partition,
      offset: item.message.offset,
      key: item.message.key?.toString() ?? null,
      headers: headersAsStrings(item.message.headers),
      value: item.message.value ?? null,
      eventId: event?.id ?? headersAsStrings(item.message.headers).ce_id ?? null,
      eventType: event?.type ?? headersAsStrings(item.message.headers).ce_type ?? null,
      conversationId: event?.conversationId ?? null,
      failureClass,
      errorCode: code,
      errorMessage: message,
      errorStack: stack,
      attempts,
      firstFailedAt: item.firstFailedAt ?? now,
      lastFailedAt: now,
      handlersSucceeded: succeededHandlers(item),
    };
  }

  /** Indexes of the registrations that already succeeded for the event (a replay skips them). */
  function succeededHandlers(item: Item): number[] {
    if (!item.decoded.ok || item.remaining === null) return [];
    const remaining = new Set(item.remaining);
    return handlersFor(item.decoded.event.type)
      .filter((r) => !remaining.has(r))
      .map((r) => registrations.indexOf(r));
  }

  async function writeDeadLetter(item: Item): Promise<Step> {
    const input = item.pendingDeadLetter!;
    let deadLetterId: string;
    try {
      deadLetterId = await storeDeadLetter(pool, producer, config.deadLetterTopic, input, item.lastError);
    } catch (error) {
      const failure = error as DeadLetterWriteError;
      item.deadLetterWriteFailures++;
      logger.error(
        {
          err: failure,
          original: describe(failure.original),
          writeError: describe(failure.writeError),
          partition: input.partition,
          offset: input.offset,
        },
        failure.message,
      );
      return later(systemRetryDelay(item.deadLetterWriteFailures, config.systemRetry));
    }
    if (item.skip) {
      // The skip is applied: record which dead letter it became. A failure here only
      // leaves the request pending; the record is already moving on.
      const skip = item.skip;
      await markSkipApplied(pool, skip.id, instanceId, deadLetterId).catch((error) =>
        logger.warn({ err: error, skipId: skip.id }, "marking an operator skip applied failed"),
      );
    }
    item.pendingDeadLetter = null;
    forgetFailures(item);
    counts.deadLettered++;
    metrics.deadLettered.inc({ subscription, failure_class: input.failureClass });
    logger.warn(
      {
        partition: input.partition,
        offset: input.offset,
        conversationId: input.conversationId,
        failureClass: input.failureClass,
        errorCode: input.errorCode,
        attempts: input.attempts,
      },
      `event dead-lettered: ${input.errorMessage}`,
    );
    alerts.send({
      kind: "dead_lettering_started",
      subscription,
      instanceId,
      message: `Subscription ${subscription} is dead-lettering events (latest: ${input.failureClass} ${input.errorCode}: ${input.errorMessage}).`,
      details: { failureClass: input.failureClass, errorCode: input.errorCode, partition: input.partition },
    });
    return { kind: "done" };
  }

  /**
   * A failed call: counts the failure (business ones in PostgreSQL), asks the policy
   * (failure-policy.ts) and retries after its delay or writes the dead letter.
   */
  async function onFailure(item: Item, registration: Registration, error: unknown): Promise<Step> {
    const now = new Date();
    item.firstFailedAt ??= now;
    item.lastError = error;
    counts.failed++;
    const event = (item.decoded as { event: ChatEvent }).event;
    const fields = {
      partition: item.work.partition,
      offset: item.message.offset,
      conversationId: event.conversationId,
      type: event.type,
      err: error,
    };
    const kind = failureKind(error) === "business" ? "business" : "system";
    metrics.failed.inc({ subscription, failure_class: kind });
    let failures: number;
    if (kind === "business") {
      item.businessFailures ??= new Map();
      const inMemory = (item.businessFailures.get(registration) ?? 0) + 1;
      failures = await persistedFailures(item, registration, inMemory);
      item.businessFailures.set(registration, failures);
    } else {
      failures = ++item.systemFailures;
      item.systemSince ??= new Date();
    }
    const policy = { systemRetry: config.systemRetry, businessRetry: registration.businessRetry };
    const decision = decideFailure(error, failures, policy);
    if (decision.action === "dead-letter") {
      const { failureClass, code, message, stack } = decision;
      const input = deadLetterInput(item, failureClass, code, message, stack);
      if (failureClass === "business") input.attempts = Math.max(input.attempts, failures);
      item.pendingDeadLetter = input;
      return writeDeadLetter(item);
    }
    const delay = decision.action === "retry" ? decision.delayMs : 0;
    metrics.retried.inc({ subscription, failure_class: kind });
    if (kind === "business") {
      logger.info({ ...fields, failures, delayMs: delay }, "business failure; retrying as registered");
      return later(delay, item);
    }
    // Warn on the first failure of an event and every tenth after; the rest at debug,
    // so that an outage does not flood the log (the metrics count every one).
    const level = failures === 1 || failures % 10 === 0 ? "warn" : "debug";
    logger[level](
      { ...fields, failures, delayMs: delay },
      `system failure; retrying in ${delay} ms (conversation held): ${describe(error)}`,
    );
    return later(delay, item);
  }

  /** Business failures are counted in PostgreSQL, so that redelivery does not reset them (R3). */
  async function persistedFailures(
    item: Item,
    registration: Registration,
    inMemory: number,
  ): Promise<number> {
    try {
      const stored = await countBusinessFailure(pool, {
        subscription,
        topic,
        partition: item.work.partition,
        offset: item.message.offset,
        handler: registrations.indexOf(registration),
      });
      return Math.max(stored, inMemory);
    } catch (error) {
      logger.warn(
        { err: error },
        "counting a business failure in PostgreSQL failed; using this instance's count",
      );
      return inMemory;
    }
  }

  function forgetFailures(item: Item): void {
    if (item.businessFailures === null) return;
    const record = { subscription, topic, partition: item.work.partition, offset: item.message.offset };
    void clearBusinessFailures(pool, record).catch((error) =>
      logger.debug({ err: error }, "clearing business-failure counts failed; they are only read on failure"),
    );
  }

  /** An operator skip: the record becomes a dead letter of class `operator` and the key moves on. */
  function applySkip(item: Item, skip: SkipRequest): Promise<Step> {
    const when = skip.requestedAt instanceof Date ? skip.requestedAt.toISOString() : String(skip.requestedAt);
    const last = item.lastError === undefined ? "" : ` (it kept failing with: ${describe(item.lastError)})`;
    item.pendingDeadLetter = deadLetterInput(
      item,
      "operator",
      "CHATBUS_OPERATOR_SKIP",
      `skipped by ${skip.requestedBy} at ${when} (skip request ${skip.id})${last}`,
      null,
    );
    logger.warn(
      { partition: item.work.partition, offset: item.message.offset, skipId: skip.id, by: skip.requestedBy },
      "operator skip: the record becomes a dead letter and its conversation moves on",
    );
    return writeDeadLetter(item);
  }

  /** Logs once that a given-up call finished after all (its result was ignored). */
  function lateCall(item: Item, how: "resolved" | "rejected", reason: string): void {
    logger.warn(
      {
        partition: item.work.partition,
        offset: item.message.offset,
        conversationId: item.key,
        outcome: how,
        reason,
      },
      `a handler call given up (${reason}) ${how} late; its result was ignored`,
    );
  }

  /** Runs one handler call through the breaker, with its deadline and its own signal. */
  async function callOnce(item: Item, registration: Registration, attempt: number): Promise<CallOutcome> {
    const event = (item.decoded as { event: ChatEvent }).event;
    return breaker.fire(async () => {
      const { outcome } = calls.start(
        item.work.partition,
        item.key,
        registration.handlerTimeoutMs,
        (signal) => callHandler(registration.handler, event, context(item, attempt, signal)),
        (how, reason) => lateCall(item, how, reason),
      );
      const result = await outcome;
      // Failures and timeouts reject, so that the breaker counts them.
      if (result.kind === "failed" || result.kind === "timeout") throw result.error;
      return result;
    });
  }

  function onTimeout(item: Item, error: HandlerTimeoutError, timeoutMs: number): void {
    metrics.handlerTimeouts.inc({ subscription });
    logger.warn(
      {
        partition: item.work.partition,
        offset: item.message.offset,
        conversationId: item.key,
        timeoutMs,
        code: error.code,
      },
      `handler timed out after ${timeoutMs} ms; its signal was aborted and the event will be retried`,
    );
  }

  async function runItem(item: Item): Promise<Step> {
    if (stopping || item.work.generation !== generation) return { kind: "abandon" };
    if (rebalancing) return { kind: "later", when: rebalanceSettled.promise };
    if (item.pendingDeadLetter) return writeDeadLetter(item);
    if (!item.waitedForFenced) {
      // A call of this conversation from before the last rebalance still runs (it
      // ignored its aborted signal): wait for it, bounded, so the two never overlap.
      const old = calls.fenced(item.key);
      if (old) {
        item.waitedForFenced = true;
        return { kind: "later", when: Promise.race([old.settled, sleep(fenceBoundMs(), stopSleeps.signal)]) };
      }
    }
    if (item.replay) return runReplay(item, item.replay);
    item.startedAt ??= Date.now();
    held.add(item);
    if (item.skip) return applySkip(item, item.skip);
    const { decoded } = item;
    if (!decoded.ok) {
      counts.failed++;
      metrics.failed.inc({ subscription, failure_class: "poison" });
      item.pendingDeadLetter = deadLetterInput(item, "poison", decoded.code, decoded.reason, null);
      return writeDeadLetter(item);
    }
    const event = decoded.event;
    item.remaining ??= handlersFor(event.type);
    if (item.remaining.length === 0) return { kind: "done" };

    if (breaker.state === "open") return { kind: "later", when: breaker.nextTransition() };
    let probe = false;
    if (breaker.state === "halfOpen") {
      if (probeInFlight) return { kind: "later", when: breaker.nextTransition() };
      probeInFlight = probe = true;
    }
    try {
      while (item.remaining.length > 0) {
        const registration = item.remaining[0]!;
        item.attempts ??= new Map();
        const attempt = (item.attempts.get(registration) ?? 0) + 1;
        item.attempts.set(registration, attempt);
        const duration = typeMetrics(event.type).duration;
        const startedAt = performance.now();
        let outcome: CallOutcome;
        try {
          outcome = await callOnce(item, registration, attempt);
        } catch (error) {
          duration.observe((performance.now() - startedAt) / 1000);
          if (failureKind(error) === "hold") {
            item.attempts.set(registration, attempt - 1);
            return breaker.state === "closed" ? later(50) : { kind: "later", when: breaker.nextTransition() };
          }
          if (error instanceof HandlerTimeoutError) onTimeout(item, error, registration.handlerTimeoutMs);
          if (item.skip) return applySkip(item, item.skip);
          return await onFailure(item, registration, error);
        }
        duration.observe((performance.now() - startedAt) / 1000);
        // Aborted by a fence or a stop: whatever it did, it is not counted as handled.
        if (outcome.kind === "aborted") return { kind: "abandon" };
        item.remaining.shift();
        item.systemFailures = 0;
        item.systemSince = null;
      }
    } finally {
      if (probe) probeInFlight = false;
    }
    forgetFailures(item);
    counts.processed++;
    typeMetrics(event.type).handled.inc();
    endToEnd.observe(Math.max(0, Date.now() - event.time.getTime()) / 1000);
    return { kind: "done" };
  }

  // ---- replay of dead letters -----------------------------------------------------
  //
  // Only the instance that owns a dead letter's partition claims it, and runs it in
  // its conversation's queue: never at the same time as a live event of that
  // conversation (R2). Claims are renewed while held; the final mark is retried in
  // the queue until written, without running the handlers again.

  const replays = new ReplayPoller({
    pool: () => pool,
    subscription,
    topic,
    instanceId,
    logger,
    partitions: () => assigned,
    canPoll: () => !stopping && !rebalancing && breaker.state === "closed",
    enqueue: enqueueReplay,
  });

  function enqueueReplay(row: ReplayClaim): boolean {
    if (!assigned.has(row.partition) || stopping) return false;
    const work = workFor(row.partition);
    const decoded = decodeRecord({ key: row.record_key, headers: row.headers, value: row.value });
    const key = decoded.ok ? decoded.event.conversationId : (row.conversation_id ?? row.record_key ?? noKey);
    const message = {
      key: row.record_key === null ? null : Buffer.from(row.record_key),
      value: row.value,
      headers: row.headers,
      offset: row.offset,
      timestamp: "0",
      attributes: 0,
    } as KafkaMessage;
    const item: Item = {
      ...newItem(work, key, BigInt(row.offset), message, decoded),
      replay: { row, mark: null },
    };
    work.queues.push(key, item);
    checkBackPressure(work);
    return true;
  }

  /** Runs a claimed dead letter in its conversation's queue (see runItem). */
  async function runReplay(item: Item, replay: NonNullable<Item["replay"]>): Promise<Step> {
    const { row } = replay;
    const log = logger.child({ deadLetterId: row.id, partition: row.partition, offset: row.offset });
    if (!replay.mark) replay.mark = await replayHandlers(item, row, log);
    if ("step" in replay.mark) {
      const step = replay.mark.step;
      replay.mark = null;
      return step;
    }
    try {
      await markReplayOutcome(pool, row.id, instanceId, replay.mark.status, replay.mark.error);
    } catch (error) {
      item.deadLetterWriteFailures++;
      log.warn(
        { err: error },
        "writing the replay's outcome failed; retrying (the handlers are not run again)",
      );
      return later(systemRetryDelay(item.deadLetterWriteFailures, config.systemRetry), item);
    }
    if (replay.mark.status === "replayed") {
      metrics.handled.inc({ subscription, type: item.decoded.ok ? item.decoded.event.type : "poison" });
      log.info("dead letter replayed");
    } else log.warn(`replayed dead letter failed again; it is waiting again: ${replay.mark.error}`);
    return { kind: "done" };
  }

  /** Runs the handlers a replay still needs; resolves with the mark to write, or a step. */
  async function replayHandlers(
    item: Item,
    row: ReplayClaim,
    log: Logger,
  ): Promise<{ status: "replayed" | "waiting"; error: string | null } | { step: Step }> {
    const { decoded } = item;
    if (!decoded.ok) return { status: "waiting", error: `${decoded.code}: ${decoded.reason}` };
    const done = new Set(row.replay_all_handlers ? [] : row.handlers_succeeded);
    item.remaining ??= handlersFor(decoded.event.type).filter((r) => !done.has(registrations.indexOf(r)));
    if (breaker.state === "open") return { step: { kind: "later", when: breaker.nextTransition() } };
    while (item.remaining.length > 0) {
      const registration = item.remaining[0]!;
      item.attempts ??= new Map();
      const attempt = (item.attempts.get(registration) ?? 0) + 1;
      item.attempts.set(registration, attempt);
      let outcome: CallOutcome;
      try {
        outcome = await callOnce(item, registration, attempt);
      } catch (error) {
        if (failureKind(error) === "hold") return { step: later(50) };
        if (error instanceof BusinessError)
          return { status: "waiting", error: `${error.code}: ${error.message}` };
        if (error instanceof HandlerTimeoutError) onTimeout(item, error, registration.handlerTimeoutMs);
        // A system failure: retried in the queue with back-off, holding the conversation.
        item.systemFailures++;
        item.systemSince ??= new Date();
        item.lastError = error;
        log.warn({ err: error }, "replay hit a system failure; retrying");
        return { step: later(systemRetryDelay(item.systemFailures, config.systemRetry), item) };
      }
      if (outcome.kind === "aborted") return { step: { kind: "abandon" } };
      item.remaining.shift();
      item.systemFailures = 0;
      item.systemSince = null;
    }
    return { status: "replayed", error: null };
  }

  // ---- status -----------------------------------------------------------------------

  function stuckRecord(item: Item): StuckRecord {
    const event = item.decoded.ok ? item.decoded.event : null;
    let attempts = 0;
    for (const n of item.attempts?.values() ?? []) attempts += n;
    return {
      partition: item.work.partition,
      offset: item.message.offset,
      eventType: event?.type ?? null,
      conversationId: event?.conversationId ?? null,
      error: item.lastError === undefined ? "" : describe(item.lastError),
      attempts,
      since: (item.systemSince ?? new Date()).toISOString(),
    };
  }

  /**
   * Applies pending operator skips of this subscription to records this instance
   * holds in retry: the record is woken and, at its next run, becomes an `operator`
   * dead letter (writeDeadLetter marks the request applied). Requests for partitions
   * this instance does not own, or records it does not hold, are left for the owner.
   */
  async function applyOperatorSkips(): Promise<void> {
    const requests = await pendingSkips(pool, subscription);
    for (const request of requests) {
      if (request.topic !== topic || !assigned.has(request.partition)) continue;
      for (const item of held) {
        if (item.work.partition !== request.partition || item.message.offset !== request.offset) continue;
        if (item.skip || (item.systemSince === null && item.businessFailures === null)) continue;
        item.skip = request;
        item.wake?.();
      }
    }
  }

  let statusBusy = false;
  async function publishStatus(): Promise<void> {
    if (statusBusy || stopped) return;
    statusBusy = true;
    try {
      try {
        const [committed, ends] = await Promise.all([
          admin.fetchOffsets({ groupId: subscription, topics: [topic] }),
          admin.fetchTopicOffsets(topic),
        ]);
        const committedBy = new Map(
          (committed[0]?.partitions ?? []).map((p) => [p.partition, p.offset] as const),
        );
        for (const end of ends) {
          if (!assigned.has(end.partition)) continue;
          const committedOffset = committedBy.get(end.partition) ?? "-1";
          const base = BigInt(committedOffset) < 0n ? BigInt(end.low) : BigInt(committedOffset);
          const lag = Number(BigInt(end.high) - base);
          metrics.lag.set({ subscription, partition: String(end.partition) }, lag);
          lastPartitionStatus.set(end.partition, {
            partition: end.partition,
            committedOffset,
            highWatermark: end.high,
            lag,
            paused: kafkaPaused.has(end.partition),
          });
        }
      } catch (error) {
        logger.debug({ err: error }, "reading Kafka offsets for the status failed");
      }
      const current = state();
      metrics.inFlight.set({ subscription }, current.inFlight);
      metrics.oldestInFlight.set({ subscription }, (current.oldestInFlightMs ?? 0) / 1000);
      await publishSubscriptionStatus(pool, subscription, instanceId, current);
      await applyOperatorSkips();
      const waiting = await countWaitingDeadLetters(pool);
      metrics.deadLettersWaiting.set({ subscription }, waiting[subscription] ?? 0);
    } catch (error) {
      logger.warn({ err: error }, "publishing the subscription status failed; trying again");
    } finally {
      statusBusy = false;
    }
  }

  function state(): SubscriptionState {
    const partitions = [...assigned]
      .sort((a, b) => a - b)
      .map(
        (partition) =>
          ({
            ...(lastPartitionStatus.get(partition) ?? {
              partition,
              committedOffset: "-1",
              highWatermark: "0",
              lag: 0,
            }),
            paused: kafkaPaused.has(partition),
          }) as PartitionStatus,
      );
    const now = Date.now();
    let oldest: number | null = null;
    const stuck: StuckRecord[] = [];
    for (const item of held) {
      if (item.startedAt !== null && (oldest === null || item.startedAt < oldest)) oldest = item.startedAt;
      if (item.systemSince && now - item.systemSince.getTime() >= config.stuckAfterMs)
        stuck.push(stuckRecord(item));
    }
    stuck.sort((a, b) => a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset)));
    return {
      group: subscription,
      topic,
      breaker: breaker.state,
      inFlight: inFlightCount(),
      oldestInFlightMs: oldest === null ? null : now - oldest,
      stuck,
      processed: counts.processed,
      failed: counts.failed,
      deadLettered: counts.deadLettered,
      startedAt,
      partitions,
    };
  }

  // ---- the Kafka consumer -----------------------------------------------------------

  async function startConsumer(): Promise<void> {
    const created = kafka.consumer({
      // The topic is made by its owner (npm start, the SDK): never a 1-partition accident here.
      allowAutoTopicCreation: false,
      groupId: subscription,
      sessionTimeout: config.sessionTimeoutMs,
      heartbeatInterval: config.heartbeatIntervalMs,
      rebalanceTimeout: config.rebalanceTimeoutMs,
      // A fetch waits at most this long for data; it also bounds how long stop() waits for it.
      maxWaitTimeInMs: 1000,
      maxBytesPerPartition: config.maxBytesPerPartition,
    });
    consumer = created;
    created.on(created.events.GROUP_JOIN, ({ payload }) => {
      if (consumer !== created) return;
      restartDelayMs = 1000;
      onAssignment(payload.memberAssignment[topic] ?? []);
    });
    created.on(created.events.REBALANCING, () => {
      if (consumer !== created || stopping) return;
      // kafkajs emits this and rejoins at once; a synchronous throw from this listener
      // makes it retry the rejoin after a short back-off instead (its retrier). So the
      // rejoin waits until running calls are fenced and finished work is committed
      // (kafkajs #28), for as long as kafkajs's retries last (`kafkaRetries`); a fetch
      // in between is held in eachBatch until the fence is done.
      const current = startFence("rebalance");
      if (!current.done) {
        throw new Error("chatbus: fencing in-flight handlers before rejoining the group");
      }
    });
    created.on(created.events.CRASH, ({ payload }) => {
      if (consumer !== created || stopping) return;
      logger.error({ err: payload.error, restart: payload.restart }, "the Kafka consumer crashed");
      restartConsumer(created);
    });
    await created.connect();
    await created.subscribe({ topic, fromBeginning: config.fromBeginning });
    await created.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 32,
      eachBatch,
    });
  }

  /**
   * kafkajs stops for good on some errors (#659, #1545, #1513). The runtime owns every
   * restart (kafkajs's own is off: `restartOnFailure` → false): it drops the queued
   * work (the new consumer starts from the committed offsets), counts the restart,
   * alerts, and starts a new consumer after a back-off (1 s doubling to 30 s, reset
   * once a group is joined). A consumer that crashes again while starting schedules
   * the next attempt the same way.
   */
  function restartConsumer(crashed: Consumer): void {
    if (stopping || consumer !== crashed || restarted.has(crashed)) return;
    restarted.add(crashed);
    metrics.restarts.inc({ subscription });
    alerts.send({
      kind: "consumer_restarted",
      subscription,
      instanceId,
      message: `The Kafka consumer of subscription ${subscription} crashed and is being restarted.`,
    });
    const fenced = startFence("restart");
    generation++;
    dropAllWork();
    assigned.clear();
    kafkaPaused.clear();
    const delay = restartDelayMs;
    restartDelayMs = Math.min(restartDelayMs * 2, 30_000);
    void (async () => {
      await crashed.disconnect().catch(() => {});
      // The new consumer's queues must not overlap calls of the crashed one.
      await Promise.all([fenced.promise, sleep(delay, stopSleeps.signal)]);
      if (stopping || consumer !== crashed) return;
      try {
        await startConsumer();
        logger.info("the Kafka consumer was restarted");
      } catch (error) {
        logger.error({ err: error }, "restarting the Kafka consumer failed; trying again");
        restartConsumer(consumer);
      }
    })();
  }

  // ---- lifecycle --------------------------------------------------------------------

  async function startAll(): Promise<void> {
    if (config.pool) pool = config.pool;
    else {
      pool = new pg.Pool({ connectionString: config.databaseUrl, max: 4 });
      // An idle connection dies when PostgreSQL restarts; without a listener pg's
      // 'error' event would crash the process. The next query reconnects.
      pool.on("error", (error) => logger.warn({ err: error }, "idle PostgreSQL connection closed"));
      ownsPool = true;
    }
    kafka = new Kafka({
      clientId: config.clientId,
      brokers: config.brokers,
      logLevel: logLevel.WARN,
      logCreator: kafkaLogCreator(logger),
      retry: {
        retries: config.kafkaRetries,
        initialRetryTime: config.kafkaInitialRetryTimeMs,
        // The runtime restarts crashed consumers itself (restartConsumer).
        restartOnFailure: async () => false,
      },
    });
    admin = kafka.admin();
    producer = kafka.producer({
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    try {
      await admin.connect();
      await producer.connect();
    } catch (error) {
      throw new DependencyUnavailableError(
        `Kafka at ${config.brokers.join(",")} is not reachable (${describe(error)}); start it or set KAFKA_BROKERS.`,
        error,
      );
    }
    try {
      await pool.query("SELECT 1 FROM dead_letters LIMIT 0");
    } catch (error) {
      throw new DependencyUnavailableError(
        `PostgreSQL for subscription ${subscription} is not usable (${describe(error)}); start it, check DATABASE_URL, and run the migrations (migrate(pool)).`,
        error,
      );
    }
    const topics = await admin.listTopics();
    if (!topics.includes(topic)) {
      throw new DependencyUnavailableError(
        `topic ${topic} does not exist on ${config.brokers.join(",")}; create it (npm start does) or set CHATBUS_TOPIC.`,
      );
    }
    try {
      await ensureDeadLetterTopic(admin, topic, config.deadLetterTopic);
    } catch (error) {
      logger.warn(
        { err: error },
        `could not create the dead-letter topic ${config.deadLetterTopic}; dead letters wait until it exists`,
      );
    }
    await startConsumer();
    timers.push(setInterval(() => void commitQuietly(), config.commitIntervalMs));
    timers.push(setInterval(() => void publishStatus(), config.statusIntervalMs));
    timers.push(setInterval(() => void replays.poll(), config.replayPollMs));
    timers.push(setInterval(() => void replays.renew(), replayClaimTtlMs / 3));
    void publishStatus();
    logger.info(
      { topic, instanceId, concurrency: config.concurrency, handlers: registrations.map((r) => r.type) },
      `subscription ${subscription} started`,
    );
  }

  const runtime: Runtime = {
    subscription,
    instanceId,
    get breakerState() {
      return breaker.state;
    },
    on(type, handler, registrationOptions) {
      if (started) {
        throw new RuntimeStateError(
          `runtime.on("${type}") was called after start(); register every handler before start().`,
        );
      }
      if (type !== "*" && !eventTypes.includes(type)) {
        throw new ValidationError(
          "type",
          "enum",
          `runtime.on: \`type\` must be "*" or one of ${eventTypes.join(", ")}; got ${JSON.stringify(type)}.`,
        );
      }
      if (typeof handler !== "function") {
        throw new ValidationError("handler", "type", "runtime.on: `handler` must be a function.");
      }
      const resolved = resolveRegistration(registrationOptions);
      registrations.push({
        type,
        handler: handler as Handler<ChatEventType>,
        businessRetry: resolved.businessRetry,
        handlerTimeoutMs: resolved.handlerTimeoutMs ?? config.handlerTimeoutMs,
      });
      return runtime;
    },

    async start() {
      if (started)
        throw new RuntimeStateError("start() was called twice; create a new runtime to start again.");
      started = true;
      try {
        await startAll();
      } catch (error) {
        // Close whatever was opened, so that a failed start leaks nothing.
        stopping = stopped = true;
        for (const timer of timers) clearInterval(timer);
        breaker.shutdown();
        await Promise.all([
          consumer?.disconnect().catch(() => {}),
          producer?.disconnect().catch(() => {}),
          admin?.disconnect().catch(() => {}),
        ]);
        if (ownsPool) await pool.end().catch(() => {});
        throw error;
      }
    },

    async stop() {
      if (!started || stopping) return;
      stopping = true;
      for (const timer of timers) clearInterval(timer);
      applyPause();
      stopSleeps.abort();
      rebalanceSettled.resolve();
      const running = () => Promise.all([...works.values()].map((w) => w.queues.whenNotRunning()));
      if (!(await withDeadline(running(), config.shutdownTimeoutMs))) {
        logger.warn(
          `handlers still running after ${config.shutdownTimeoutMs} ms; aborting them (their events are redelivered)`,
        );
        // An aborted call is never committed as handled, even if it resolves now (R5).
        const aborted = RunningCalls.whenSettled(calls.abortAll("stop"));
        await withDeadline(Promise.all([running(), aborted]), 2000);
      }
      await commitQuietly();
      // Give replay claims back before the pool closes, so the next owner need not wait for them to expire.
      await replays.releaseAll();
      dropAllWork();
      await consumer?.disconnect().catch((error) => logger.warn({ err: error }, "leaving the group failed"));
      stopped = true;
      breaker.shutdown();
      await Promise.all([
        producer?.disconnect().catch(() => {}),
        admin?.disconnect().catch(() => {}),
        removeSubscriptionStatus(pool, subscription, instanceId).catch(() => {}),
        withDeadline(alerts.flush(), 5000),
      ]);
      if (ownsPool) await pool.end().catch(() => {});
      logger.info(`subscription ${subscription} stopped`);
    },

    state,
  };
  return runtime;
}
