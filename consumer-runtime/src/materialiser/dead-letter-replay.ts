/**
 * Replay of the materialiser's dead letters. The runtime's `replayDeadLetter` marks a
 * row `replaying`; for subscription `materialiser` this poller picks it up and produces
 * the original record (key, headers with the same `ce_id`, value) to the topic again.
 * The log stays the truth: the copy is applied at its new position in the partition
 * (the original was never applied, so its event id is not a duplicate), a rebuild
 * replays it the same way, and if the rule still fails it becomes a new dead letter.
 * A record that still does not decode goes back to `waiting` with the reason.
 */
import { decodeRecord } from "@chatbus/producer-sdk";
import type { Producer } from "kafkajs";
import type pg from "pg";
import type { Logger } from "pino";
import { claimReplays, markReplayOutcome } from "../dead-letters/store.ts";

/**
 * Claims up to 20 `replaying` dead letters of `subscription` and re-produces them to
 * `topic`; returns how many were re-produced.
 */
export async function replayMaterialiserDeadLetters(
  pool: pg.Pool,
  producer: Producer,
  options: { subscription: string; topic: string; instanceId: string; logger?: Logger },
): Promise<number> {
  const rows = await claimReplays(pool, {
    subscription: options.subscription,
    instanceId: options.instanceId,
    claimTtlMs: 5 * 60_000, // 5 min
  });
  let produced = 0;
  for (const row of rows) {
    const mark = (status: "replayed" | "waiting", error: string | null) =>
      markReplayOutcome(pool, row.id, options.instanceId, status, error);
    const decoded = decodeRecord({ key: row.record_key, headers: row.headers, value: row.value });
    if (!decoded.ok) {
      await mark("waiting", `${decoded.code}: ${decoded.reason}`);
      options.logger?.warn(
        { deadLetterId: row.id },
        `replayed dead letter is still poison: ${decoded.reason}`,
      );
      continue;
    }
    await producer.send({
      topic: options.topic,
      acks: -1,
      messages: [{ key: row.record_key, value: row.value, headers: row.headers }],
    });
    await mark("replayed", null);
    produced++;
  }
  return produced;
}
