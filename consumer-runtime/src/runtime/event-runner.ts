/**
 * Running one event in its conversation's queue: every handler registered for its
 * type, each call through the breaker with its deadline and its own signal
 * (handler-call.ts), failures through the failure policy (failure-policy.ts) to a
 * retry or a dead letter, operator skips, and replays of dead letters (run in the
 * conversation's queue, so never at the same time as a live event of it, R2).
 *
 * `run` returns a Step for the key queues (key-queues.ts): done, later (a back-off,
 * the breaker, a fence) or abandon (a stale generation, a stop, an aborted call).
 * A result that arrives after a fence began is discarded, never counted as handled.
 */
import { type ChatEvent, type ChatEventType, decodeRecord, describeError } from "@chatbus/producer-sdk";
import type { KafkaMessage, Producer } from "kafkajs";
import type pg from "pg";
import type { Logger } from "pino";
import type { ReplayPoller } from "../dead-letters/replay-poller.ts";
import { markReplayOutcome, type ReplayClaim } from "../dead-letters/store.ts";
import type { DeadLetterInput, FailureClass } from "../dead-letters/types.ts";
import { writeDeadLetter } from "../dead-letters/writer.ts";
import type { DeadLetterWriteError } from "../errors.ts";
import { markSkipApplied, type SkipRequest } from "../status/skips.ts";
import type { AlertSender } from "./alerts.ts";
import type { Assignment } from "./assignment.ts";
import { clearBusinessFailures, countBusinessFailure } from "./business-attempts.ts";
import type { CircuitBreaker } from "./circuit-breaker.ts";
import { decideFailure, failureKind } from "./failure-policy.ts";
import { type Fencing, fenceBoundMs } from "./fence.ts";
import {
  type CallOutcome,
  HandlerTimeoutError,
  type RunningCall,
  type RunningCalls,
} from "./handler-call.ts";
import { type Step, stepDone } from "./key-queues.ts";
import type { RuntimeMetrics, TypeMetrics } from "./metrics.ts";
import type { ResolvedRuntimeOptions } from "./options.ts";
import { systemRetryDelay } from "./retry.ts";
import { sleep } from "./sleep.ts";
import {
  type Handler,
  type HandlerContext,
  headSucceeded,
  type Item,
  newItem,
  noKey,
  type Registration,
  totalAttempts,
} from "./types.ts";

/** What the runner needs from its runtime. */
export interface EventRunnerOptions {
  config: ResolvedRuntimeOptions;
  logger: Logger;
  metrics: RuntimeMetrics;
  typeMetrics: (type: string) => TypeMetrics;
  breaker: CircuitBreaker;
  alerts: AlertSender;
  calls: RunningCalls;
  registrations: Registration[];
  assignment: Assignment;
  fencing: Fencing;
  replays: ReplayPoller;
  pool: () => pg.Pool;
  producer: () => Producer;
  /** True once stop() began: nothing new runs. */
  stopping: () => boolean;
  /** Aborted on stop: every back-off ends at once. */
  stopSignal: AbortSignal;
}

/**
 * A handler's context. A class so that the hot path allocates one plain object and
 * no closures; the child logger is made only when a handler asks for it.
 */
class Context implements HandlerContext {
  #call: { readonly signal: AbortSignal };
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
    call: { readonly signal: AbortSignal },
    readonly replay: boolean,
  ) {
    this.#call = call;
    this.#parent = parent;
    this.conversationId = event.conversationId;
    this.#eventId = event.id;
    this.#type = event.type;
  }

  /** Read through to the call: its AbortController is made only when a handler asks. */
  get signal(): AbortSignal {
    return this.#call.signal;
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

/**
 * Calls a handler and returns its promise (a handler may return nothing). A
 * synchronous throw is turned into a rejection by `RunningCalls.start`; no async
 * wrapper here, which cost one more promise per event.
 */
function callHandler(handler: Handler<ChatEventType>, event: ChatEvent, ctx: HandlerContext): Promise<void> {
  const result = handler(event, ctx);
  return result instanceof Promise ? result : Promise.resolve(result);
}

function headersAsStrings(headers: Item["message"]["headers"]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    const first = Array.isArray(value) ? value[0] : value;
    if (first !== undefined) out[name] = first.toString();
  }
  return out;
}

/** Runs events: the `run` of every key queue. */
export class EventRunner {
  #o: EventRunnerOptions;
  #subscription: string;
  #topic: string;
  #probeInFlight = false;
  /** handlersFor's answers: registrations are fixed once the runtime started. */
  #handlersByType = new Map<string, Registration[]>();
  #endToEnd: ReturnType<RuntimeMetrics["endToEndLatency"]["labels"]>;
  /** Events that started running and are not finished (oldest in-flight age, stuck, skips). */
  readonly held = new Set<Item>();
  readonly counts = { processed: 0, failed: 0, deadLettered: 0 };

  constructor(options: EventRunnerOptions) {
    this.#o = options;
    this.#subscription = options.config.group;
    this.#topic = options.config.topic;
    this.#endToEnd = options.metrics.endToEndLatency.labels({ subscription: this.#subscription });
  }

  /** The registrations that handle `type`, in registration order (shared: copy before changing it). */
  handlersFor(type: ChatEventType): readonly Registration[] {
    let found = this.#handlersByType.get(type);
    if (!found) {
      found = this.#o.registrations.filter((r) => r.type === type || r.type === "*");
      this.#handlersByType.set(type, found);
    }
    return found;
  }

  /** An item left its queue (done, or dropped with it): its offset may be committed. */
  finish(item: Item): void {
    const { work } = item;
    if (item.replay) this.#o.replays.finished(item.replay.row.id);
    else work.tracker.finish(item.offset);
    this.held.delete(item);
    if (work.backPressure) this.#o.assignment.checkBackPressure(work);
  }

  /**
   * Runs (or goes on running) one item; never throws. Not an async function: the
   * checks before the handlers answer synchronously, and the handlers' run is the one
   * promise per event (`#runHandlers`), not wrapped in a second one.
   */
  run(item: Item): Step | Promise<Step> {
    const { calls, fencing, assignment, stopping, stopSignal, breaker, metrics, config } = this.#o;
    if (stopping() || item.work.generation !== assignment.generation) return { kind: "abandon" };
    if (fencing.active) return { kind: "later", when: fencing.whenOver() };
    if (item.pendingDeadLetter) return this.#writeDeadLetter(item);
    if (!item.waitedForFenced) {
      // A call of this conversation from before the last rebalance still runs (it
      // ignored its aborted signal): wait for it, bounded, so the two never overlap.
      const old = calls.fenced(item.key);
      if (old) {
        item.waitedForFenced = true;
        return { kind: "later", when: Promise.race([old.settled, sleep(fenceBoundMs(config), stopSignal)]) };
      }
    }
    if (item.replay) return this.#runReplay(item, item.replay);
    item.startedAt ??= Date.now();
    this.held.add(item);
    if (item.skip) return this.#applySkip(item, item.skip);
    const { decoded } = item;
    if (!decoded.ok) {
      this.counts.failed++;
      metrics.failed.inc({ subscription: this.#subscription, failure_class: "poison" });
      item.pendingDeadLetter = this.#deadLetterInput(item, "poison", decoded.code, decoded.reason, null);
      return this.#writeDeadLetter(item);
    }
    const event = decoded.event;
    item.remaining ??= this.handlersFor(event.type).slice();
    if (item.remaining.length === 0) return stepDone;

    if (breaker.state === "open") return { kind: "later", when: breaker.nextTransition() };
    let probe = false;
    if (breaker.state === "halfOpen") {
      if (this.#probeInFlight) return { kind: "later", when: breaker.nextTransition() };
      this.#probeInFlight = probe = true;
    }
    return this.#runHandlers(item, event, probe);
  }

  /**
   * Calls the handlers still to succeed, in order, and counts the event handled when
   * all did; a Step for the key queue either way. `probe`: this is the half-open
   * breaker's one probe, which ends with this run.
   */
  async #runHandlers(item: Item, event: ChatEvent, probe: boolean): Promise<Step> {
    const remaining = item.remaining!;
    const { breaker } = this.#o;
    try {
      while (remaining.length > 0) {
        const registration = remaining[0]!;
        const attempt = ++item.attempts;
        const duration = this.#o.typeMetrics(event.type).duration;
        const startedAt = performance.now();
        let outcome: CallOutcome;
        try {
          outcome = this.#judged(await this.#callOnce(item, registration, attempt));
        } catch (error) {
          duration.observe((performance.now() - startedAt) / 1000);
          if (failureKind(error) === "hold") {
            item.attempts = attempt - 1;
            return breaker.state === "closed"
              ? this.#later(50)
              : { kind: "later", when: breaker.nextTransition() };
          }
          if (error instanceof HandlerTimeoutError)
            this.#onTimeout(item, error, registration.handlerTimeoutMs);
          if (item.skip) return await this.#applySkip(item, item.skip);
          return await this.#onFailure(item, registration, error);
        }
        duration.observe((performance.now() - startedAt) / 1000);
        // Aborted by a fence or a stop: whatever it did, it is not counted as handled.
        if (outcome.kind === "aborted") return { kind: "abandon" };
        headSucceeded(item);
        item.systemFailures = 0;
        item.systemSince = null;
      }
    } finally {
      if (probe) this.#probeInFlight = false;
    }
    this.#forgetFailures(item);
    this.counts.processed++;
    this.#o.typeMetrics(event.type).handledPending++;
    this.#endToEnd.observe(Math.max(0, Date.now() - event.time.getTime()) / 1000);
    return stepDone;
  }

  #context(item: Item, attempt: number, call: RunningCall): HandlerContext {
    const event = (item.decoded as { event: ChatEvent }).event;
    return new Context(
      this.#o.logger,
      this.#subscription,
      event,
      item.work.partition,
      item.message.offset,
      attempt,
      call,
      item.replay !== null,
    );
  }

  /** Runs the item again after `ms`, or earlier on stop or when an operator skip wakes it. */
  #later(ms: number, item?: Item): Step {
    const { stopSignal } = this.#o;
    if (!item) return { kind: "later", when: sleep(ms, stopSignal) };
    const woken = new Promise<void>((resolve) => {
      item.wake = resolve;
    });
    return {
      kind: "later",
      when: Promise.race([sleep(ms, stopSignal), woken]).finally(() => {
        item.wake = null;
      }),
    };
  }

  /**
   * Starts one handler call through the breaker, with its deadline and its own
   * signal; throws BreakerOpenError (synchronously) when the breaker refuses it. The
   * caller awaits the outcome and passes it to `#judged`. Not an async function: the
   * outcome is the call's one promise, no second one wraps it.
   */
  #callOnce(item: Item, registration: Registration, attempt: number): Promise<CallOutcome> {
    const { breaker, calls } = this.#o;
    breaker.enter();
    const event = (item.decoded as { event: ChatEvent }).event;
    return calls.start(
      item.work.partition,
      item.key,
      registration.handlerTimeoutMs,
      (call) => callHandler(registration.handler, event, this.#context(item, attempt, call)),
      (how, reason) => this.#lateCall(item, how, reason),
    ).outcome;
  }

  /**
   * Tells the breaker how a call entered by `#callOnce` ended. Failures and timeouts
   * are thrown, so that the runner's failure path sees them; an aborted call is not a
   * failure of the dependency (nor was it with opossum).
   */
  #judged(result: CallOutcome): CallOutcome {
    if (result.kind === "failed" || result.kind === "timeout") {
      this.#o.breaker.failed(result.error);
      throw result.error;
    }
    this.#o.breaker.succeeded();
    return result;
  }

  /** Logs once that a given-up call finished after all (its result was ignored). */
  #lateCall(item: Item, how: "resolved" | "rejected", reason: string): void {
    this.#o.logger.warn(
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

  #onTimeout(item: Item, error: HandlerTimeoutError, timeoutMs: number): void {
    this.#o.metrics.handlerTimeouts.inc({ subscription: this.#subscription });
    this.#o.logger.warn(
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

  // ---- failures -------------------------------------------------------------------

  /**
   * A failed call: counts the failure (business ones in PostgreSQL), asks the policy
   * (failure-policy.ts) and retries after its delay or writes the dead letter.
   */
  async #onFailure(item: Item, registration: Registration, error: unknown): Promise<Step> {
    const { metrics, logger, config } = this.#o;
    const subscription = this.#subscription;
    const now = new Date();
    item.firstFailedAt ??= now;
    item.lastError = error;
    this.counts.failed++;
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
      failures = await this.#persistedFailures(item, registration, inMemory);
      item.businessFailures.set(registration, failures);
    } else {
      failures = ++item.systemFailures;
      item.systemSince ??= new Date();
    }
    const policy = { systemRetry: config.systemRetry, businessRetry: registration.businessRetry };
    const decision = decideFailure(error, failures, policy);
    if (decision.action === "dead-letter") {
      const { failureClass, code, message, stack } = decision;
      const input = this.#deadLetterInput(item, failureClass, code, message, stack);
      if (failureClass === "business") input.attempts = Math.max(input.attempts, failures);
      item.pendingDeadLetter = input;
      return this.#writeDeadLetter(item);
    }
    const delay = decision.action === "retry" ? decision.delayMs : 0;
    metrics.retried.inc({ subscription, failure_class: kind });
    if (kind === "business") {
      logger.info({ ...fields, failures, delayMs: delay }, "business failure; retrying as registered");
      return this.#later(delay, item);
    }
    // Warn on the first failure of an event and every tenth after; the rest at debug,
    // so that an outage does not flood the log (the metrics count every one).
    const level = failures === 1 || failures % 10 === 0 ? "warn" : "debug";
    logger[level](
      { ...fields, failures, delayMs: delay },
      `system failure; retrying in ${delay} ms (conversation held): ${describeError(error)}`,
    );
    return this.#later(delay, item);
  }

  /** Business failures are counted in PostgreSQL, so that redelivery does not reset them (R3). */
  async #persistedFailures(item: Item, registration: Registration, inMemory: number): Promise<number> {
    try {
      const stored = await countBusinessFailure(this.#o.pool(), {
        subscription: this.#subscription,
        topic: this.#topic,
        partition: item.work.partition,
        offset: item.message.offset,
        handler: this.#o.registrations.indexOf(registration),
      });
      return Math.max(stored, inMemory);
    } catch (error) {
      this.#o.logger.warn(
        { err: error },
        "counting a business failure in PostgreSQL failed; using this instance's count",
      );
      return inMemory;
    }
  }

  #forgetFailures(item: Item): void {
    if (item.businessFailures === null) return;
    const record = {
      subscription: this.#subscription,
      topic: this.#topic,
      partition: item.work.partition,
      offset: item.message.offset,
    };
    void clearBusinessFailures(this.#o.pool(), record).catch((error) =>
      this.#o.logger.debug(
        { err: error },
        "clearing business-failure counts failed; they are only read on failure",
      ),
    );
  }

  // ---- dead letters ---------------------------------------------------------------

  #deadLetterInput(
    item: Item,
    failureClass: FailureClass,
    code: string,
    message: string,
    stack: string | null,
  ): DeadLetterInput {
    const now = new Date();
    const event = item.decoded.ok ? item.decoded.event : null;
    const attempts = totalAttempts(item);
    return {
      subscription: this.#subscription,
      topic: this.#topic,
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
      handlersSucceeded: this.#succeededHandlers(item),
    };
  }

  /** Indexes of the registrations that already succeeded for the event (a replay skips them). */
  #succeededHandlers(item: Item): number[] {
    if (!item.decoded.ok || item.remaining === null) return [];
    const remaining = new Set(item.remaining);
    return this.handlersFor(item.decoded.event.type)
      .filter((r) => !remaining.has(r))
      .map((r) => this.#o.registrations.indexOf(r));
  }

  /** Writes the item's pending dead letter; retried with back-off until it is written. */
  async #writeDeadLetter(item: Item): Promise<Step> {
    const { logger, config, metrics, alerts } = this.#o;
    const input = item.pendingDeadLetter!;
    let deadLetterId: string;
    try {
      deadLetterId = await writeDeadLetter(
        this.#o.pool(),
        this.#o.producer(),
        config.deadLetterTopic,
        input,
        item.lastError,
      );
    } catch (error) {
      const failure = error as DeadLetterWriteError;
      item.deadLetterWriteFailures++;
      logger.error(
        {
          err: failure,
          original: describeError(failure.original),
          writeError: describeError(failure.writeError),
          partition: input.partition,
          offset: input.offset,
        },
        failure.message,
      );
      return this.#later(systemRetryDelay(item.deadLetterWriteFailures, config.systemRetry));
    }
    if (item.skip) {
      // The skip is applied: record which dead letter it became. A failure here only
      // leaves the request pending; the record is already moving on.
      const skip = item.skip;
      await markSkipApplied(this.#o.pool(), skip.id, config.instanceId, deadLetterId).catch((error) =>
        logger.warn({ err: error, skipId: skip.id }, "marking an operator skip applied failed"),
      );
    }
    item.pendingDeadLetter = null;
    this.#forgetFailures(item);
    this.counts.deadLettered++;
    metrics.deadLettered.inc({ subscription: this.#subscription, failure_class: input.failureClass });
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
      subscription: this.#subscription,
      instanceId: config.instanceId,
      message: `Subscription ${this.#subscription} is dead-lettering events (latest: ${input.failureClass} ${input.errorCode}: ${input.errorMessage}).`,
      details: { failureClass: input.failureClass, errorCode: input.errorCode, partition: input.partition },
    });
    return stepDone;
  }

  /** An operator skip: the record becomes a dead letter of class `operator` and the key moves on. */
  #applySkip(item: Item, skip: SkipRequest): Promise<Step> {
    const when = skip.requestedAt instanceof Date ? skip.requestedAt.toISOString() : String(skip.requestedAt);
    const last =
      item.lastError === undefined ? "" : ` (it kept failing with: ${describeError(item.lastError)})`;
    item.pendingDeadLetter = this.#deadLetterInput(
      item,
      "operator",
      "CHATBUS_OPERATOR_SKIP",
      `skipped by ${skip.requestedBy} at ${when} (skip request ${skip.id})${last}`,
      null,
    );
    this.#o.logger.warn(
      { partition: item.work.partition, offset: item.message.offset, skipId: skip.id, by: skip.requestedBy },
      "operator skip: the record becomes a dead letter and its conversation moves on",
    );
    return this.#writeDeadLetter(item);
  }

  // ---- replays of dead letters ----------------------------------------------------
  //
  // Only the instance that owns a dead letter's partition claims it (replay-poller.ts),
  // and runs it here, in its conversation's queue. The final mark is retried in the
  // queue until written, without running the handlers again.

  /** Queues a claimed dead letter in its conversation's queue; false when its partition is not owned. */
  queueReplay(row: ReplayClaim): boolean {
    const { assignment, stopping } = this.#o;
    if (!assignment.partitions.has(row.partition) || stopping()) return false;
    const work = assignment.workFor(row.partition);
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
    assignment.checkBackPressure(work);
    return true;
  }

  /** Runs a claimed dead letter in its conversation's queue (see `run`). */
  async #runReplay(item: Item, replay: NonNullable<Item["replay"]>): Promise<Step> {
    const { row } = replay;
    const { logger, config, metrics } = this.#o;
    const log = logger.child({ deadLetterId: row.id, partition: row.partition, offset: row.offset });
    if (!replay.mark) replay.mark = await this.#replayHandlers(item, row, log);
    if ("step" in replay.mark) {
      const step = replay.mark.step;
      replay.mark = null;
      return step;
    }
    try {
      await markReplayOutcome(
        this.#o.pool(),
        row.id,
        config.instanceId,
        replay.mark.status,
        replay.mark.error,
      );
    } catch (error) {
      item.deadLetterWriteFailures++;
      log.warn(
        { err: error },
        "writing the replay's outcome failed; retrying (the handlers are not run again)",
      );
      return this.#later(systemRetryDelay(item.deadLetterWriteFailures, config.systemRetry), item);
    }
    if (replay.mark.status === "replayed") {
      metrics.handled.inc({
        subscription: this.#subscription,
        type: item.decoded.ok ? item.decoded.event.type : "poison",
      });
      log.info("dead letter replayed");
    } else log.warn(`replayed dead letter failed again; it is waiting again: ${replay.mark.error}`);
    return stepDone;
  }

  /** Runs the handlers a replay still needs; resolves with the mark to write, or a step. */
  async #replayHandlers(
    item: Item,
    row: ReplayClaim,
    log: Logger,
  ): Promise<{ status: "replayed" | "waiting"; error: string | null } | { step: Step }> {
    const { decoded } = item;
    const { breaker, registrations, config } = this.#o;
    if (!decoded.ok) return { status: "waiting", error: `${decoded.code}: ${decoded.reason}` };
    const done = new Set(row.replay_all_handlers ? [] : row.handlers_succeeded);
    item.remaining ??= this.handlersFor(decoded.event.type).filter(
      (r) => !done.has(registrations.indexOf(r)),
    );
    if (breaker.state === "open") return { step: { kind: "later", when: breaker.nextTransition() } };
    while (item.remaining.length > 0) {
      const registration = item.remaining[0]!;
      const attempt = ++item.attempts;
      let outcome: CallOutcome;
      try {
        outcome = this.#judged(await this.#callOnce(item, registration, attempt));
      } catch (error) {
        const kind = failureKind(error);
        if (kind === "hold") return { step: this.#later(50) };
        if (kind === "business") {
          const business = error as { code: string; message: string };
          return { status: "waiting", error: `${business.code}: ${business.message}` };
        }
        if (error instanceof HandlerTimeoutError) this.#onTimeout(item, error, registration.handlerTimeoutMs);
        // A system failure: retried in the queue with back-off, holding the conversation.
        item.systemFailures++;
        item.systemSince ??= new Date();
        item.lastError = error;
        log.warn({ err: error }, "replay hit a system failure; retrying");
        return { step: this.#later(systemRetryDelay(item.systemFailures, config.systemRetry), item) };
      }
      if (outcome.kind === "aborted") return { step: { kind: "abandon" } };
      headSucceeded(item);
      item.systemFailures = 0;
      item.systemSince = null;
    }
    return { status: "replayed", error: null };
  }
}
