/**
 * Partition assignment of one runtime: which partitions it owns, their queued work
 * (one generation per assignment), pause and resume, and offset commits.
 *
 * - Pause and resume (back-pressure, open breaker, shutdown) are driven from here,
 *   never by throwing from a handler callback (kafkajs #1376). Back-pressure is
 *   `maxQueuedPerPartition`: the partition is paused when its queues hold that many
 *   events and resumed when they drain to half.
 * - kafkajs restarts every assigned partition from its committed offset after a
 *   rebalance or restart: the queued work of the previous generation would be
 *   delivered again, so a new assignment drops it.
 * - Offsets are committed per partition up to the lowest unfinished event
 *   (`OffsetTracker`), only for partitions of the current assignment.
 */
import type { Consumer } from "kafkajs";
import type { Logger } from "pino";
import type { KeyQueues } from "./key-queues.ts";
import { OffsetTracker } from "./offset-tracker.ts";
import type { Item, PartitionWork } from "./types.ts";

/** What the assignment needs from its runtime. */
export interface AssignmentOptions {
  topic: string;
  logger: Logger;
  maxQueuedPerPartition: number;
  /** The current Kafka consumer (none before the first start). */
  consumer: () => Consumer | undefined;
  /** True when every partition is to be paused (stopping, breaker open). */
  pauseAll: () => boolean;
  /** False once the consumer is gone for good: pauses are no longer applied. */
  live: () => boolean;
  /** New queues for a partition's work. */
  newQueues: () => KeyQueues<Item>;
  /** Called when all queued work is dropped (a new assignment, a restart, a stop). */
  onDrop: () => void;
}

/** The partitions this instance owns and their work. */
export class Assignment {
  #options: AssignmentOptions;
  #assigned = new Set<number>();
  /** Partitions paused in kafkajs (by us). */
  #paused = new Set<number>();
  #works = new Map<number, PartitionWork>();
  #generation = 0;

  constructor(options: AssignmentOptions) {
    this.#options = options;
  }

  /** Grows with every assignment and restart; work of an older generation is stale. */
  get generation(): number {
    return this.#generation;
  }

  /** The partitions owned now. */
  get partitions(): ReadonlySet<number> {
    return this.#assigned;
  }

  isPaused(partition: number): boolean {
    return this.#paused.has(partition);
  }

  /** Every partition's work of this generation. */
  works(): IterableIterator<PartitionWork> {
    return this.#works.values();
  }

  /** A fetched batch of `partition`: owned (kafkajs knows before our GROUP_JOIN listener ran). */
  fetched(partition: number): PartitionWork {
    if (!this.#assigned.has(partition)) this.#assigned.add(partition);
    return this.workFor(partition);
  }

  /** The partition's work of this generation, created on first use. */
  workFor(partition: number): PartitionWork {
    let work = this.#works.get(partition);
    if (!work) {
      const created: PartitionWork = {
        partition,
        generation: this.#generation,
        queues: this.#options.newQueues(),
        tracker: new OffsetTracker(),
        highest: null,
        backPressure: false,
      };
      this.#works.set(partition, created);
      work = created;
    }
    return work;
  }

  /** Events fetched and not finished, over every partition of this generation. */
  inFlight(): number {
    let n = 0;
    for (const work of this.#works.values()) n += work.queues.size;
    return n;
  }

  /** A new assignment from the group: a new generation, the old work dropped, kafkajs's pauses matched. */
  assign(partitions: number[], consumer: Consumer): void {
    const { topic, logger } = this.#options;
    this.#generation++;
    this.dropAll();
    this.#assigned.clear();
    for (const p of partitions) this.#assigned.add(p);
    for (const p of [...this.#paused]) if (!this.#assigned.has(p)) this.#paused.delete(p);
    // Make kafkajs's paused set match ours for the new assignment.
    for (const p of this.#assigned) {
      consumer.resume([{ topic, partitions: [p] }]);
      this.#paused.delete(p);
    }
    logger.info(
      { partitions: [...this.#assigned].sort((a, b) => a - b), generation: this.#generation },
      "partitions assigned",
    );
  }

  /** The consumer is restarted: a new generation, nothing owned until it joins again. */
  reset(): void {
    this.#generation++;
    this.dropAll();
    this.#assigned.clear();
    this.#paused.clear();
  }

  /** Drops every partition's queued work (running calls finish, unreported). */
  dropAll(): void {
    this.#options.onDrop();
    for (const work of this.#works.values()) work.queues.close();
    this.#works.clear();
  }

  /** Pauses or resumes each owned partition in kafkajs as stop, the breaker and back-pressure want. */
  applyPause(): void {
    const { consumer: current, live, pauseAll, topic, logger } = this.#options;
    const consumer = current();
    if (!consumer || !live()) return;
    for (const partition of this.#assigned) {
      const want = pauseAll() || this.#works.get(partition)?.backPressure === true;
      // kafkajs throws while its consumer group is torn down (crash window, R4): the
      // restart re-applies pauses after the next assignment, so a throw here is harmless.
      try {
        if (want && !this.#paused.has(partition)) {
          consumer.pause([{ topic, partitions: [partition] }]);
          this.#paused.add(partition);
        } else if (!want && this.#paused.has(partition)) {
          consumer.resume([{ topic, partitions: [partition] }]);
          this.#paused.delete(partition);
        }
      } catch (error) {
        logger.debug(
          { err: error, partition },
          "pause/resume refused by kafkajs; re-applied at the next assignment",
        );
      }
    }
  }

  /** Pauses a partition whose queues are full, resumes it once they drained to half. */
  checkBackPressure(work: PartitionWork): void {
    const { maxQueuedPerPartition: max, logger } = this.#options;
    if (!work.backPressure && work.queues.size >= max) {
      work.backPressure = true;
      logger.debug({ partition: work.partition, queued: work.queues.size }, "partition paused: queue full");
      this.applyPause();
    } else if (work.backPressure && work.queues.size <= Math.floor(max / 2)) {
      work.backPressure = false;
      logger.debug(
        { partition: work.partition, queued: work.queues.size },
        "partition resumed: queue drained",
      );
      this.applyPause();
    }
  }

  /** Commits each owned partition (or only `only`) up to its lowest unfinished event. */
  async commit(only?: PartitionWork): Promise<void> {
    const consumer = this.#options.consumer();
    const list = this.#committable().filter((c) => !only || c.work === only);
    if (list.length === 0 || !consumer) return;
    const { topic } = this.#options;
    await consumer.commitOffsets(list.map(({ partition, offset }) => ({ topic, partition, offset })));
    for (const c of list) c.work.tracker.markCommitted(c.value);
  }

  /** `commit`, for timers and fences: a failure is logged, the next commit covers it. */
  async commitQuietly(only?: PartitionWork): Promise<void> {
    try {
      await this.commit(only);
    } catch (error) {
      this.#options.logger.debug({ err: error }, "offset commit failed; the next commit covers it");
    }
  }

  #committable(): { partition: number; offset: string; work: PartitionWork; value: bigint }[] {
    const out = [];
    for (const work of this.#works.values()) {
      if (work.queues.closed || work.generation !== this.#generation || !this.#assigned.has(work.partition))
        continue;
      const value = work.tracker.toCommit();
      if (value !== null) out.push({ partition: work.partition, offset: value.toString(), work, value });
    }
    return out;
  }
}
