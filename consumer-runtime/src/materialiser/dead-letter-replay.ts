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

interface ReplayRow {
  id: string;
  record_key: string | null;
  headers: Record<string, string>;
  value: Buffer | null;
}

/**
 * Claims up to 20 `replaying` dead letters of `subscription` and re-produces them to
 * `topic`; returns how many were re-produced.
 */
export async function replayMaterialiserDeadLetters(
  pool: pg.Pool,
  producer: Producer,
  options: { subscription: string; topic: string; instanceId: string; logger?: Logger },
): Promise<number> {
  const { rows } = await pool.query<ReplayRow>(
    `UPDATE dead_letters d SET claimed_by = $2, claimed_at = now()
       FROM (SELECT id FROM dead_letters
              WHERE subscription = $1 AND status = 'replaying'
                AND (claimed_at IS NULL OR claimed_at < now() - interval '5 minutes')
              ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED) c
      WHERE d.id = c.id
      RETURNING d.id::text AS id, d.record_key, d.headers, d.value`,
    [options.subscription, options.instanceId],
  );
  let produced = 0;
  for (const row of rows) {
    const mark = (status: "replayed" | "waiting", error: string | null) =>
      pool.query(
        `UPDATE dead_letters SET status = $2, status_changed_at = now(), replay_count = replay_count + 1,
                last_replay_error = $3, claimed_by = NULL, claimed_at = NULL
          WHERE id = $1 AND claimed_by = $4`,
        [row.id, status, error, options.instanceId],
      );
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
