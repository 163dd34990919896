/**
 * Starting and restarting the Kafka consumer. kafkajs stops for good on some errors
 * (#659, #1545, #1513), and its own restart stayed stuck on cached metadata after a
 * broker kill, so the runtime owns every restart (kafkajs's is off: `restartOnFailure`
 * → false): it fences and drops the queued work (the new consumer starts from the
 * committed offsets), counts the restart, alerts, and starts a new consumer after a
 * back-off (1 s doubling to 30 s, reset once a group is joined). A consumer that
 * crashes again while starting schedules the next attempt the same way.
 */
import type { Consumer, EachBatchPayload, Kafka } from "kafkajs";
import type { Logger } from "pino";
import type { AlertSender } from "./alerts.ts";
import type { Fence } from "./fence.ts";
import type { RuntimeMetrics } from "./metrics.ts";
import type { ResolvedRuntimeOptions } from "./options.ts";
import { sleep } from "./sleep.ts";

/** What the supervisor needs from its runtime. */
export interface ConsumerSupervisorOptions {
  config: ResolvedRuntimeOptions;
  logger: Logger;
  metrics: RuntimeMetrics;
  alerts: AlertSender;
  kafka: () => Kafka;
  /** True once stop() began: no restart. */
  stopping: () => boolean;
  /** Aborted on stop: ends the restart back-off at once. */
  stopSignal: AbortSignal;
  eachBatch: (payload: EachBatchPayload) => Promise<void>;
  /** The group was joined with these partitions of the topic. */
  onAssignment: (partitions: number[], consumer: Consumer) => void;
  /** The group rebalances: fence in-flight work (see the REBALANCING listener). */
  onRebalancing: () => Fence;
  /** The consumer crashed: fence and drop the work; resolves when the fence is done. */
  onRestart: () => Fence;
}

/** The runtime's current Kafka consumer, restarted after every crash. */
export class ConsumerSupervisor {
  #o: ConsumerSupervisorOptions;
  #consumer: Consumer | undefined;
  #restarted = new WeakSet<Consumer>();
  #restartDelayMs = 1000;

  constructor(options: ConsumerSupervisorOptions) {
    this.#o = options;
  }

  /** The current consumer (undefined before the first start). */
  get consumer(): Consumer | undefined {
    return this.#consumer;
  }

  /** Creates a consumer, joins the group and runs it. */
  async start(): Promise<void> {
    const { config, logger, stopping } = this.#o;
    const { topic } = config;
    const created = this.#o.kafka().consumer({
      // The topic is made by its owner (npm start, the SDK): never a 1-partition accident here.
      allowAutoTopicCreation: false,
      groupId: config.group,
      sessionTimeout: config.sessionTimeoutMs,
      heartbeatInterval: config.heartbeatIntervalMs,
      rebalanceTimeout: config.rebalanceTimeoutMs,
      // A fetch waits at most this long for data; it also bounds how long stop() waits for it.
      maxWaitTimeInMs: 1000,
      maxBytesPerPartition: config.maxBytesPerPartition,
    });
    this.#consumer = created;
    created.on(created.events.GROUP_JOIN, ({ payload }) => {
      if (this.#consumer !== created) return;
      this.#restartDelayMs = 1000;
      this.#o.onAssignment(payload.memberAssignment[topic] ?? [], created);
    });
    created.on(created.events.REBALANCING, () => {
      if (this.#consumer !== created || stopping()) return;
      // kafkajs emits this and rejoins at once; a synchronous throw from this listener
      // makes it retry the rejoin after a short back-off instead (its retrier). So the
      // rejoin waits until running calls are fenced and finished work is committed
      // (kafkajs #28), for as long as kafkajs's retries last (`kafkaRetries`); a fetch
      // in between is held in eachBatch until the fence is done.
      const current = this.#o.onRebalancing();
      if (!current.done) {
        throw new Error("chatbus: fencing in-flight handlers before rejoining the group");
      }
    });
    created.on(created.events.CRASH, ({ payload }) => {
      if (this.#consumer !== created || stopping()) return;
      logger.error({ err: payload.error, restart: payload.restart }, "the Kafka consumer crashed");
      this.#restart(created);
    });
    await created.connect();
    await created.subscribe({ topic, fromBeginning: config.fromBeginning });
    await created.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 32,
      eachBatch: this.#o.eachBatch,
    });
  }

  #restart(crashed: Consumer): void {
    const { config, logger, metrics, alerts, stopping, stopSignal } = this.#o;
    if (stopping() || this.#consumer !== crashed || this.#restarted.has(crashed)) return;
    this.#restarted.add(crashed);
    const subscription = config.group;
    metrics.restarts.inc({ subscription });
    alerts.send({
      kind: "consumer_restarted",
      subscription,
      instanceId: config.instanceId,
      message: `The Kafka consumer of subscription ${subscription} crashed and is being restarted.`,
    });
    const fenced = this.#o.onRestart();
    const delay = this.#restartDelayMs;
    this.#restartDelayMs = Math.min(this.#restartDelayMs * 2, 30_000);
    void (async () => {
      await crashed.disconnect().catch(() => {});
      // The new consumer's queues must not overlap calls of the crashed one.
      await Promise.all([fenced.promise, sleep(delay, stopSignal)]);
      if (stopping() || this.#consumer !== crashed) return;
      try {
        await this.start();
        logger.info("the Kafka consumer was restarted");
      } catch (error) {
        logger.error({ err: error }, "restarting the Kafka consumer failed; trying again");
        if (this.#consumer) this.#restart(this.#consumer);
      }
    })();
  }
}
