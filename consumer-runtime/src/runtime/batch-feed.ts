/**
 * The batch feed: kafkajs's `eachBatch` only feeds records into key-level queues (one
 * queue per conversation, `KeyQueues`) and waits a little (`batchDetachMs`) for them
 * to run. It never waits for a slow or hung call: kafkajs fetches again only when
 * every batch call of a fetch has returned, so one slow conversation would hold them
 * all (issue 17). Back-pressure pauses the partition instead (assignment.ts).
 */
import { decodeRecord } from "@chatbus/producer-sdk";
import { within } from "@chatbus/producer-sdk/internal";
import type { EachBatchPayload } from "kafkajs";
import type { Logger } from "pino";
import type { Assignment } from "./assignment.ts";
import type { Fencing } from "./fence.ts";
import type { TypeMetrics } from "./metrics.ts";
import { newItem, noKey } from "./types.ts";

/**
 * How long a batch call waits for its records to run before it returns (ms). Short
 * handlers finish inside the call; slow ones go on outside it while kafkajs fetches
 * the next batch for everyone else.
 */
const batchDetachMs = 100;

/** What the feed needs from its runtime. */
export interface BatchFeedOptions {
  logger: Logger;
  assignment: Assignment;
  fencing: Fencing;
  typeMetrics: (type: string) => TypeMetrics;
  /** True once stop() began: nothing more is accepted. */
  stopping: () => boolean;
}

/** A kafkajs error that means the group is rebalancing (this member must rejoin). */
function isRebalancing(error: unknown): boolean {
  const e = error as { type?: string; name?: string };
  return (
    e?.type === "REBALANCE_IN_PROGRESS" ||
    e?.type === "NOT_COORDINATOR_FOR_GROUP" ||
    e?.type === "ILLEGAL_GENERATION" ||
    e?.type === "UNKNOWN_MEMBER_ID"
  );
}

/** The `eachBatch` of the runtime's consumer. */
export function createBatchFeed(options: BatchFeedOptions): (payload: EachBatchPayload) => Promise<void> {
  const { logger, assignment, fencing, typeMetrics, stopping } = options;
  return async function eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale } = payload;
    if (stopping()) return;
    if (fencing.active) {
      // A fence is on: accept nothing, and hold kafkajs here (it cannot rejoin while
      // a batch call is open) until the fence is done; its next heartbeat then fails
      // with the rebalance and kafkajs rejoins.
      await fencing.current?.promise;
      return;
    }
    const partition = batch.partition;
    const work = assignment.fetched(partition);
    let lastAccepted: string | undefined;
    // Counted per batch, by runs of one type: one counter update instead of one per record.
    let runType = "";
    let runLength = 0;
    if (!isRunning() || isStale()) return;
    for (const message of batch.messages) {
      if (stopping() || work.queues.closed) break;
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
    assignment.checkBackPressure(work);
    try {
      // Short handlers finish here; slow ones go on after the call returns.
      await within(work.queues.whenQuiet(), batchDetachMs, () => undefined);
      await heartbeat();
      await assignment.commit(work);
    } catch (error) {
      if (!isRebalancing(error)) {
        logger.warn({ err: error, partition }, "batch bookkeeping failed; kafkajs retries");
        throw error;
      }
      // Fence and commit before giving partitions up (kafkajs #28), then rejoin.
      await fencing.start("rebalance").promise;
      throw error;
    }
  };
}
