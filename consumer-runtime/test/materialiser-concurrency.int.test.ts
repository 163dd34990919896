/**
 * Two writers of one partition at once (a rebalance where the old owner is still
 * applying): the offset guard lets exactly one batch through; the other writes
 * nothing, and on retry skips what the first applied.
 */
import { encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestSchema, type TestSchema } from "../../test/support/isolation.ts";
import { applyBatch, type BatchRecord, OffsetMovedError } from "../src/materialiser/apply-batch.ts";
import { sequenceViolations } from "./materialiser-support.ts";

let db: TestSchema;
beforeAll(async () => {
  db = await createTestSchema("mat_conc");
});
afterAll(async () => {
  await db?.cleanup();
});

const record = (
  offset: number,
  conversationId: string,
  input: Parameters<typeof encodeEvent>[1],
): BatchRecord => ({
  ...encodeEvent(conversationId, input, { source: "/test", id: uuidv7() }).record,
  offset: String(offset),
});

describe("materialiser offset guard", () => {
  it("lets one of two concurrent writers of a partition through and the other retry cleanly", async () => {
    const context = { topic: "t", partition: 0, schema: db.schema, subscription: "materialiser" };
    const records: BatchRecord[] = [
      record(0, "k1", {
        type: "chat.conversation.created",
        kind: "direct",
        createdBy: "a",
        members: ["a", "b"],
      }),
    ];
    for (let i = 1; i <= 300; i++)
      records.push(
        record(i, "k1", {
          type: "chat.message.sent",
          senderId: i % 2 ? "a" : "b",
          content: { type: "text", text: `m${i}` },
        }),
      );
    for (let round = 0; round < 5; round++) {
      const slice = records.slice(round * 60, round * 60 + 61);
      const [x, y] = [await db.pool.connect(), await db.pool.connect()];
      const outcomes = await Promise.allSettled([
        applyBatch(x, context, slice),
        applyBatch(y, context, slice),
      ]);
      x.release();
      y.release();
      const failed = outcomes.filter((o) => o.status === "rejected");
      for (const f of failed) expect((f as PromiseRejectedResult).reason).toBeInstanceOf(OffsetMovedError);
      const handled = outcomes
        .filter((o) => o.status === "fulfilled")
        .map((o) => (o as PromiseFulfilledResult<{ handled: number }>).value.handled);
      // Exactly one writer applied the new records of the slice.
      expect(handled.filter((n) => n > 0)).toHaveLength(1);
      // A retry of the loser skips everything.
      const z = await db.pool.connect();
      expect((await applyBatch(z, context, slice)).handled).toBe(0);
      z.release();
    }
    const { rows } = await db.pool.query("SELECT count(*)::int AS n, max(seq)::int AS hi FROM messages");
    expect(rows[0]).toEqual({ n: 300, hi: 300 });
    expect(await sequenceViolations(db.pool)).toEqual([]);
  });
});
