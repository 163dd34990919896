/**
 * After a recall, neither the original nor an edited text reaches anyone again (issue
 * 13.5, the materialiser's side): not history, not the inbox, not an SSE resume from
 * `event_log`, and not a rebuilt projection (the same log replayed with other batch cuts,
 * as `chatbus projection rebuild` does), and migration 005 scrubs what older versions
 * stored. Plus benign repeats: no dead letter, counted in a metric. Real PostgreSQL.
 */

import { createProjectionReader, startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import { Registry } from "prom-client";
import { afterAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { applyBatch, type BatchRecord } from "../src/materialiser/apply-batch.ts";
import { produceWorkload, type WorkloadEvent, waitUntilApplied } from "./materialiser-support.ts";

const schemas: TestSchema[] = [];
afterAll(async () => {
  for (const s of schemas) await s.cleanup();
});
async function schema(prefix: string): Promise<TestSchema> {
  const s = await createTestSchema(prefix);
  schemas.push(s);
  return s;
}

let clock = 0;
const ev = (input: WorkloadEvent["input"], id = uuidv7(), conversationId = "rc"): WorkloadEvent => ({
  conversationId,
  input,
  id,
  time: new Date(Date.UTC(2026, 6, 1) + clock++ * 1000),
});
const secret = "the original secret";
const edited = "the edited secret";
const messageId = uuidv7();
/** Send, edit, then (later) recall; another message after it. */
const log: WorkloadEvent[] = [
  ev({ type: "chat.conversation.created", kind: "group", createdBy: "ana", members: ["ana", "bob"] }),
  ev({ type: "chat.message.sent", senderId: "ana", content: { type: "text", text: secret } }, messageId),
  ev({ type: "chat.message.edited", messageId, editorId: "ana", content: { type: "text", text: edited } }),
  ev({ type: "chat.message.sent", senderId: "bob", content: { type: "text", text: "unrelated" } }),
  ev({ type: "chat.message.recalled", messageId, recalledBy: "ana" }),
];
const records: BatchRecord[] = log.map((e, i) => ({
  ...encodeEvent(e.conversationId, e.input, { source: "/test", id: e.id, time: e.time }).record,
  offset: String(i),
}));

/** Every place a text could still be read from, as one string. */
async function everythingReadable(db: TestSchema): Promise<string> {
  const reader = createProjectionReader(db.pool);
  const history = await reader.history("rc", { after: 0, limit: 100 });
  const inbox = await reader.inbox("bob", { limit: 10 });
  const resume = await reader.eventsAfter({}, "bob", 100);
  const tables = await db.pool.query(
    "SELECT (SELECT json_agg(m) FROM messages m)::text AS m, (SELECT json_agg(e) FROM event_log e)::text AS e",
  );
  return JSON.stringify({ history, inbox, resume, tables: tables.rows });
}

async function applyCut(db: TestSchema, cuts: number[]): Promise<void> {
  const context = { topic: "recall", partition: 0, schema: db.schema, subscription: "materialiser" };
  const client = await db.pool.connect();
  try {
    let from = 0;
    for (const to of [...cuts, records.length]) {
      await applyBatch(client, context, records.slice(from, to));
      from = to;
    }
  } finally {
    client.release();
  }
}

describe("a recall scrubs the texts", () => {
  it("before the recall the texts are readable (so the checks below can see them)", async () => {
    const db = await schema("mat_recall_pre");
    const context = { topic: "recall", partition: 0, schema: db.schema, subscription: "materialiser" };
    const client = await db.pool.connect();
    await applyBatch(client, context, records.slice(0, 4));
    client.release();
    // The projection stores a message's content once (the edit replaced the original).
    const before = await everythingReadable(db);
    expect(before).toContain(edited);
  });

  it.each([
    ["edit and recall in separate batches", [1, 2, 3, 4]],
    ["everything in one batch (a rebuild's cut)", []],
    ["edit and recall in one batch after the send", [2]],
  ])("%s: no text of the recalled message remains anywhere", async (_name, cuts) => {
    const db = await schema("mat_recall");
    await applyCut(db, cuts);
    const after = await everythingReadable(db);
    expect(after).not.toContain(secret);
    expect(after).not.toContain(edited);
    expect(after).toContain("unrelated");
  });

  it("migration 005 scrubs what an older version stored", async () => {
    const db = await schema("mat_recall_mig");
    await applyCut(db, []);
    // Put the texts back the way the previous version stored them, then re-run 005.
    await db.pool.query(
      `UPDATE messages SET content = '{"type":"text","text":"${secret}"}'::jsonb WHERE event_id = $1`,
      [messageId],
    );
    await db.pool.query(
      `UPDATE event_log SET payload = payload || '{"content":{"type":"text","text":"${edited}"}}'::jsonb
        WHERE type = 'chat.message.edited'`,
    );
    const { readFileSync } = await import("node:fs");
    const sql = readFileSync(new URL("../migrations/005_scrub_recalled_texts.sql", import.meta.url), "utf8");
    await db.pool.query(sql);
    const after = await everythingReadable(db);
    expect(after).not.toContain(secret);
    expect(after).not.toContain(edited);
  });
});

describe("benign repeats", () => {
  it("are no-ops counted in chatbus_materialiser_noops_total, not dead letters", async () => {
    const db = await schema("mat_benign");
    const topic = await createTestTopic("mat_benign", 1);
    const registry = new Registry();
    const direct = () =>
      ev(
        { type: "chat.conversation.created", kind: "direct", createdBy: "ana", members: ["ana", "bob"] },
        uuidv7(),
        "dm",
      );
    await produceWorkload(topic, [
      direct(),
      direct(),
      ev({ type: "chat.member.joined", userId: "bob", addedBy: "ana" }, uuidv7(), "dm"),
      ev(
        { type: "chat.message.sent", senderId: "bob", content: { type: "text", text: "still works" } },
        uuidv7(),
        "dm",
      ),
    ]);
    const materialiser = await startMaterialiser({
      pool: db.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-benign"),
      registry,
    });
    try {
      await waitUntilApplied(db.pool, topic, 60_000);
    } finally {
      await materialiser.stop();
    }
    expect((await db.pool.query("SELECT 1 FROM dead_letters")).rowCount).toBe(0);
    const metric = await registry.getSingleMetric("chatbus_materialiser_noops_total")!.get();
    const byReason = Object.fromEntries(metric.values.map((v) => [v.labels.reason, v.value]));
    expect(byReason).toEqual({ direct_exists: 1, already_a_member: 1 });
    const texts = await db.pool.query(
      "SELECT content->>'text' AS t FROM messages WHERE conversation_id = 'dm'",
    );
    expect(texts.rows).toEqual([{ t: "still works" }]);
  });
});
