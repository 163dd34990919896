/**
 * The consumer runtime: one subscription (consumer group) with handlers per event
 * type, per-conversation order with concurrency across conversations, system and
 * business retry, a circuit breaker, dead letters, status and metrics.
 *
 * This file composes the pieces (see docs/consumer-runtime.md); each keeps its own
 * state:
 * - batch-feed.ts: kafkajs `eachBatch` only feeds records into key-level queues
 *   (`KeyQueues`, one per conversation) and never waits for a slow call (issue 17);
 * - assignment.ts: owned partitions, their work per generation, pause and resume
 *   (back-pressure, open breaker, shutdown; never by throwing, kafkajs #1376), commits
 *   up to the lowest unfinished event;
 * - fence.ts: at a rebalance or restart no new call starts, running calls are aborted
 *   and awaited (bounded), finished work is committed, then kafkajs rejoins (issue 20);
 * - event-runner.ts: one event's handler calls (deadline and signal per call,
 *   handler-call.ts), through the breaker, failures through the pure policy
 *   (failure-policy.ts) to a retry or a dead letter (dead-letters/writer.ts), skips
 *   and replays;
 * - dead-letters/replay-poller.ts: claims dead letters to replay;
 * - status-publisher.ts: `subscription_status`, gauges, operator skips;
 * - kafka-consumer.ts: starting the consumer and restarting it after every crash;
 * - connections.ts: the pool and the Kafka clients, checked at start.
 * The runtime's life is one `phase`: idle → starting → running → stopping → stopped.
 * Its state lives in private fields of `SubscriptionRuntime`, each piece's in its own.
 */

import { setMaxListeners } from "node:events";
import { type ChatEventType, eventTypes, ValidationError } from "@chatbus/producer-sdk";
import { within } from "@chatbus/producer-sdk/internal";
import { type Logger, pino } from "pino";
import { Registry } from "prom-client";
import { ReplayPoller, replayClaimTtlMs } from "../dead-letters/replay-poller.ts";
import { RuntimeStateError } from "../errors.ts";
import { removeSubscriptionStatus, type SubscriptionState } from "../status/store.ts";
import { type AlertSender, createAlertSender } from "./alerts.ts";
import { Assignment } from "./assignment.ts";
import { createBatchFeed } from "./batch-feed.ts";
import { type BreakerState, type CircuitBreaker, createCircuitBreaker } from "./circuit-breaker.ts";
import { Connections } from "./connections.ts";
import { EventRunner } from "./event-runner.ts";
import { Fencing, fenceBoundMs } from "./fence.ts";
import { RunningCalls } from "./handler-call.ts";
import { ConsumerSupervisor } from "./kafka-consumer.ts";
import { KeyQueues, Slots } from "./key-queues.ts";
import { initSubscriptionMetrics, metricsByType, type RuntimeMetrics, runtimeMetrics } from "./metrics.ts";
import {
  type RegistrationOptions,
  type ResolvedRuntimeOptions,
  type RuntimeOptions,
  resolveRegistration,
  resolveRuntimeOptions,
} from "./options.ts";
import { StatusPublisher } from "./status-publisher.ts";
import type { Handler, Item, Phase, Registration, Runtime } from "./types.ts";

export type { Handler, HandlerContext, Runtime } from "./types.ts";

/** Logs, counts and alerts every breaker transition; `onChange` re-applies the pauses. */
function watchBreaker(
  breaker: CircuitBreaker,
  report: {
    logger: Logger;
    metrics: RuntimeMetrics;
    alerts: AlertSender;
    subscription: string;
    instanceId: string;
  },
  onChange: () => void,
): void {
  const { logger, metrics, alerts, subscription, instanceId } = report;
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
    onChange();
  });
}

/** Checks one `on(...)` call and adds its registration. */
function register(
  registrations: Registration[],
  config: ResolvedRuntimeOptions,
  type: ChatEventType | "*",
  handler: unknown,
  options: RegistrationOptions | undefined,
): void {
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
  const resolved = resolveRegistration(options);
  registrations.push({
    type,
    handler: handler as Handler<ChatEventType>,
    businessRetry: resolved.businessRetry,
    handlerTimeoutMs: resolved.handlerTimeoutMs ?? config.handlerTimeoutMs,
  });
}

/**
 * Creates a subscription runtime. Options are validated at once (a ValidationError
 * names the bad field); nothing connects before `start()`.
 */
export function createRuntime(options: RuntimeOptions): Runtime {
  return new SubscriptionRuntime(options);
}

/**
 * A runtime: the pieces wired together, and their life. Methods are bound (arrow
 * properties), so that `runtime.stop` can be passed around on its own.
 */
class SubscriptionRuntime implements Runtime {
  readonly subscription: string;
  readonly instanceId: string;
  #config: ResolvedRuntimeOptions;
  #logger: Logger;
  #phase: Phase = "idle";
  #registrations: Registration[] = [];
  #breaker: CircuitBreaker;
  /** Adds the handled counts still pending to the counter and leaves its reads (metrics.ts). */
  #closeTypeMetrics: () => void;
  #alerts: AlertSender;
  #calls = new RunningCalls();
  #connections: Connections;
  #timers: NodeJS.Timeout[] = [];
  /** Aborted on stop: every back-off ends at once. */
  #stopSleeps = new AbortController();
  #assignment: Assignment;
  #fencing: Fencing;
  #replays: ReplayPoller;
  #runner: EventRunner;
  #status: StatusPublisher;
  #supervisor: ConsumerSupervisor;

  constructor(options: RuntimeOptions) {
    const config = resolveRuntimeOptions(options);
    const { group: subscription, topic, instanceId } = config;
    this.subscription = subscription;
    this.instanceId = instanceId;
    this.#config = config;
    const logger = (config.logger ?? pino({ level: process.env.LOG_LEVEL ?? "info" })).child({
      subscription,
    });
    this.#logger = logger;
    const metrics = runtimeMetrics(config.registry ?? new Registry());
    const byType = metricsByType(metrics, subscription);
    this.#closeTypeMetrics = byType.close;
    const typeMetrics = byType.get;
    const breaker = createCircuitBreaker(subscription, config.breaker);
    this.#breaker = breaker;
    const alerts = createAlertSender({
      url: config.alertWebhook,
      logger,
      minIntervalMs: config.alertMinIntervalMs,
    });
    this.#alerts = alerts;
    this.#connections = new Connections(config, logger);
    const slots = new Slots(config.concurrency);
    const calls = this.#calls;
    const stopping = () => this.#stopping;
    // Every conversation waiting on a back-off listens to it: more than Node's default
    // of 10 at once is normal, and sleep() removes its listener when it ends.
    setMaxListeners(0, this.#stopSleeps.signal);
    const stopSignal = this.#stopSleeps.signal;
    const pool = () => this.#connections.pool;

    const assignment = new Assignment({
      topic,
      logger,
      maxQueuedPerPartition: config.maxQueuedPerPartition,
      consumer: () => this.#supervisor.consumer,
      pauseAll: () => this.#stopping || breaker.state === "open",
      live: () => this.#phase !== "stopped",
      newQueues: () =>
        new KeyQueues<Item>(
          slots,
          (item) => this.#runner.run(item),
          (item) => this.#runner.finish(item),
        ),
      onDrop: () => {
        // Replays that were queued here go back to the pool (the partition's owner claims them).
        void this.#replays.releaseAll();
        this.#runner.held.clear();
        metrics.inFlight.set({ subscription }, 0);
      },
    });
    this.#assignment = assignment;
    const fencing = new Fencing({
      calls,
      logger,
      boundMs: fenceBoundMs(config),
      commit: () => assignment.commitQuietly(),
    });
    this.#fencing = fencing;
    this.#replays = new ReplayPoller({
      pool,
      subscription,
      topic,
      instanceId,
      logger,
      partitions: () => assignment.partitions,
      canPoll: () => !this.#stopping && !fencing.active && breaker.state === "closed",
      enqueue: (claim) => this.#runner.queueReplay(claim),
    });
    const runner = new EventRunner({
      config,
      logger,
      metrics,
      typeMetrics,
      breaker,
      alerts,
      calls,
      registrations: this.#registrations,
      assignment,
      fencing,
      replays: this.#replays,
      pool,
      producer: () => this.#connections.producer!,
      stopping,
      stopSignal,
    });
    this.#runner = runner;
    this.#status = new StatusPublisher({
      subscription,
      topic,
      instanceId,
      stuckAfterMs: config.stuckAfterMs,
      logger,
      metrics,
      assignment,
      pool,
      admin: () => this.#connections.admin!,
      breakerState: () => breaker.state,
      held: runner.held,
      counts: runner.counts,
      stopped: () => this.#phase === "stopped",
    });
    this.#supervisor = new ConsumerSupervisor({
      config,
      logger,
      metrics,
      alerts,
      kafka: () => this.#connections.kafka,
      stopping,
      stopSignal,
      eachBatch: createBatchFeed({ logger, assignment, fencing, typeMetrics, stopping }),
      onAssignment: (partitions, consumer) => {
        fencing.assigned();
        assignment.assign(partitions, consumer);
        this.#status.forgetUnassigned();
        assignment.applyPause();
      },
      onRebalancing: () => fencing.start("rebalance"),
      onRestart: () => {
        const fence = fencing.start("restart");
        assignment.reset();
        return fence;
      },
    });
    initSubscriptionMetrics(metrics, subscription);
    watchBreaker(breaker, { logger, metrics, alerts, subscription, instanceId }, () =>
      assignment.applyPause(),
    );
  }

  /** From stop() on (also after a failed start): nothing new starts. */
  get #stopping(): boolean {
    return this.#phase === "stopping" || this.#phase === "stopped";
  }

  get breakerState(): BreakerState {
    return this.#breaker.state;
  }

  on = <T extends ChatEventType>(
    type: T | "*",
    handler: Handler<T>,
    registrationOptions?: RegistrationOptions,
  ): Runtime => {
    if (this.#phase !== "idle") {
      throw new RuntimeStateError(
        `runtime.on("${type}") was called after start(); register every handler before start().`,
      );
    }
    register(this.#registrations, this.#config, type, handler, registrationOptions);
    return this;
  };

  start = async (): Promise<void> => {
    if (this.#phase !== "idle")
      throw new RuntimeStateError("start() was called twice; create a new runtime to start again.");
    this.#phase = "starting";
    try {
      await this.#startAll();
      if (this.#phase === "starting") this.#phase = "running";
    } catch (error) {
      // Close whatever was opened, so that a failed start leaks nothing.
      this.#phase = "stopped";
      for (const timer of this.#timers) clearInterval(timer);
      this.#breaker.shutdown();
      this.#closeTypeMetrics();
      await Promise.all([
        this.#supervisor.consumer?.disconnect().catch(() => {}),
        this.#connections.disconnectKafka(),
      ]);
      await this.#connections.endPool();
      throw error;
    }
  };

  async #startAll(): Promise<void> {
    const config = this.#config;
    await this.#connections.open();
    await this.#supervisor.start();
    this.#timers.push(setInterval(() => void this.#assignment.commitQuietly(), config.commitIntervalMs));
    this.#timers.push(setInterval(() => void this.#status.publish(), config.statusIntervalMs));
    this.#timers.push(setInterval(() => void this.#replays.poll(), config.replayPollMs));
    this.#timers.push(setInterval(() => void this.#replays.renew(), replayClaimTtlMs / 3));
    void this.#status.publish();
    this.#logger.info(
      {
        topic: config.topic,
        instanceId: this.instanceId,
        concurrency: config.concurrency,
        handlers: this.#registrations.map((r) => r.type),
      },
      `subscription ${this.subscription} started`,
    );
  }

  stop = async (): Promise<void> => {
    if (this.#phase === "idle" || this.#stopping) return;
    this.#phase = "stopping";
    for (const timer of this.#timers) clearInterval(timer);
    this.#assignment.applyPause();
    this.#stopSleeps.abort();
    this.#fencing.stop();
    await this.#drain();
    await this.#assignment.commitQuietly();
    // Give replay claims back before the pool closes, so the next owner need not wait for them to expire.
    await this.#replays.releaseAll();
    this.#assignment.dropAll();
    await this.#supervisor.consumer
      ?.disconnect()
      .catch((error) => this.#logger.warn({ err: error }, "leaving the group failed"));
    this.#phase = "stopped";
    this.#breaker.shutdown();
    this.#closeTypeMetrics();
    await Promise.all([
      this.#connections.disconnectKafka(),
      removeSubscriptionStatus(this.#connections.pool, this.subscription, this.instanceId).catch(() => {}),
      within(this.#alerts.flush(), 5000, () => undefined),
    ]);
    await this.#connections.endPool();
    this.#logger.info(`subscription ${this.subscription} stopped`);
  };

  /** Lets running handlers finish up to `shutdownTimeoutMs`, then aborts them. */
  async #drain(): Promise<void> {
    const { shutdownTimeoutMs } = this.#config;
    const works = () => [...this.#assignment.works()];
    const running = () => Promise.all(works().map((w) => w.queues.whenNotRunning()));
    if (
      await within(
        running().then(() => true),
        shutdownTimeoutMs,
        () => false,
      )
    )
      return;
    this.#logger.warn(
      `handlers still running after ${shutdownTimeoutMs} ms; aborting them (their events are redelivered)`,
    );
    // An aborted call is never committed as handled, even if it resolves now (R5).
    const aborted = RunningCalls.whenSettled(this.#calls.abortAll("stop"));
    await within(Promise.all([running(), aborted]), 2000, () => undefined);
  }

  state = (): SubscriptionState => this.#status.state();
}
