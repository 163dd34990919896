/**
 * Leader failover on a three-node KRaft cluster (replication factor 3,
 * min.insync.replicas=2) while producers send continuously through the SDK and the
 * materialiser applies: the leader of several partitions is killed with SIGKILL and
 * brought back, then another broker stays down for longer than the consumer
 * session timeout. Every send that resolved must be in PostgreSQL exactly once, in
 * per-conversation order; sends that rejected were reported to their callers.
 *
 * Duplicates are counted where they can happen, not in a UNIQUE column (which cannot
 * show one): every record of the topic is read back and grouped by `ce_id` (a
 * producer retry without idempotence would store an event twice), and a runtime
 * subscription counts its handler invocations per event id (at-least-once: a
 * rebalance or a lost commit redelivers). The counts are printed for
 * docs/reliability.md.
 */

import { createRuntime, type Runtime } from "@chatbus/consumer-runtime";
import { type Materialiser, startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { type ChatBus, createChatBus } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { killBroker, restartBroker, startKafka, stopKafka } from "../../scripts/kafka.ts";
import { createTestSchema, type TestSchema, uniqueName } from "../support/isolation.ts";
import { countDuplicates, readWholeTopic, tally } from "./log-duplicates.ts";

const basePort = 29_392; // private to this file: nodes on 29392, 29394, 29396
const ports = [basePort, basePort + 2, basePort + 4];
const brokers = ports.map((p) => `127.0.0.1:${p}`);
const conversations = Array.from({ length: 24 }, (_, i) => `failover-${i}`);
const sessionTimeoutMs = 10_000;

let bus: ChatBus;
let materialiser: Materialiser | undefined;
let audit: Runtime | undefined;
/** Handler invocations of the audit subscription, by event id. */
const invocations = new Map<string, number>();
let db: TestSchema;
let topic: string;
let startedCluster = false;
/** The test's acknowledged sends by conversation, for the failure report. */
let acknowledgedByConversation = new Map<string, Acknowledged[]>();

/** A send that resolved: its counter in its conversation and where the SDK said it is. */
interface Acknowledged {
  n: number;
  eventId: string;
  partition: number;
  offset: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function leaders(): Promise<Map<number, number[]>> {
  const admin = new Kafka({ clientId: "failover-test", brokers, logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    const { topics } = await admin.fetchTopicMetadata({ topics: [topic] });
    const byNode = new Map<number, number[]>();
    for (const p of topics[0]!.partitions)
      byNode.set(p.leader, [...(byNode.get(p.leader) ?? []), p.partitionId]);
    return byNode;
  } finally {
    await admin.disconnect();
  }
}

beforeAll(async () => {
  const cluster = await startKafka(basePort, 3);
  startedCluster = cluster.started;
  topic = uniqueName("failover");
  db = await createTestSchema("failover");
  bus = await createChatBus({
    brokers,
    topic,
    partitions: 6,
    replicationFactor: 3,
    rateLimit: { enabled: false },
    sendTimeoutMs: 30_000,
    // Producer resets and failed requests explain a lost acknowledgement.
    logger: pino({ level: process.env.TEST_LOG_LEVEL ?? "warn" }).child({ component: "producer" }),
  });
  materialiser = await startMaterialiser({
    pool: db.pool,
    brokers,
    topic,
    groupId: uniqueName("failover-mat"),
    sessionTimeoutMs,
    // Warnings (retries, seeks, restarts) explain a stall if the wait below times out.
    logger: pino({ level: process.env.TEST_LOG_LEVEL ?? "warn" }),
  });
  audit = createRuntime({
    group: uniqueName("failover-audit"),
    topic,
    brokers,
    pool: db.pool,
    fromBeginning: true,
    sessionTimeoutMs,
  });
  audit.on("chat.message.sent", async (event) => {
    invocations.set(event.id, (invocations.get(event.id) ?? 0) + 1);
  });
  await audit.start();
}, 180_000);

afterAll(async () => {
  await audit?.stop();
  await materialiser?.stop();
  await bus?.close();
  await db?.cleanup();
  if (startedCluster) await stopKafka(basePort, 3);
}, 120_000);

describe("three-broker cluster failover", () => {
  it("keeps every acknowledged send exactly once and in order through leader kills and a long outage", async () => {
    for (const id of conversations) {
      await bus.send(id, {
        type: "chat.conversation.created",
        kind: "group",
        createdBy: "ana",
        members: ["ana", "ben"],
      });
    }

    // One sequential sender per conversation, so per-conversation send order is defined.
    const acknowledged = new Map<string, Acknowledged[]>(conversations.map((c) => [c, []]));
    let rejected = 0;
    let sending = true;
    acknowledgedByConversation = acknowledged;
    const senders = conversations.map(async (id) => {
      for (let n = 0; sending; n++) {
        try {
          const result = await bus.send(id, {
            type: "chat.message.sent",
            senderId: "ana",
            content: { type: "text", text: String(n) },
          });
          acknowledged
            .get(id)!
            .push({ n, eventId: result.eventId, partition: result.partition, offset: result.offset });
        } catch (error) {
          // Reported to the caller: acceptable while a leader moves, as long as it is not silent.
          expect((error as { code?: string }).code).toMatch(/^CHATBUS_/);
          rejected++;
          await sleep(100);
        }
        await sleep(20);
      }
    });

    await sleep(3_000);
    // Kill the broker that leads the most partitions, then bring it back.
    const byNode = await leaders();
    const [victimNode, victimPartitions] = [...byNode.entries()].sort(
      (a, b) => b[1].length - a[1].length,
    )[0]!;
    expect(victimPartitions.length).toBeGreaterThan(0);
    const victimPort = ports[victimNode - 1]!;
    killBroker(victimPort);
    await sleep(6_000);
    await restartBroker(victimPort);
    await sleep(3_000);

    // A second broker stays down for longer than the session timeout.
    const other = ports.find((p) => p !== victimPort)!;
    killBroker(other);
    await sleep(sessionTimeoutMs + 5_000);
    await restartBroker(other);
    await sleep(3_000);
    sending = false;
    await Promise.all(senders);

    const expected = [...acknowledged.values()].flat();
    expect(expected.length).toBeGreaterThan(conversations.length * 20);

    // Wait until the materialiser has applied everything that was acknowledged.
    const deadline = Date.now() + 120_000;
    for (;;) {
      const { rows } = await db.pool.query<{ n: string }>(
        "SELECT count(*) AS n FROM messages WHERE event_id = ANY($1::text[])",
        [expected.map((e) => e.eventId)],
      );
      if (Number(rows[0]!.n) === expected.length) break;
      if (Date.now() > deadline)
        throw new Error(
          `only ${rows[0]!.n} of ${expected.length} acknowledged sends were materialised; missing: ${await missingReport(expected)}`,
        );
      await sleep(500);
    }

    const { rows } = await db.pool.query<{
      conversation_id: string;
      seq: string;
      event_id: string;
      text: string;
    }>(
      "SELECT conversation_id, seq, event_id, content->>'text' AS text FROM messages ORDER BY conversation_id, seq",
    );
    // messages.event_id is UNIQUE: this only checks the read, duplicates are counted below.
    const eventIds = rows.map((r) => r.event_id);
    expect(new Set(eventIds).size).toBe(eventIds.length);
    for (const id of conversations) {
      const stored = rows.filter((r) => r.conversation_id === id);
      // Sequence numbers 1..n without gaps.
      expect(stored.map((r) => Number(r.seq))).toEqual(stored.map((_, i) => i + 1));
      // Log order equals send order: the texts (send counters) only go up. A rejected
      // send may still have been stored (its fate was reported as unknown), so the stored
      // counters are a superset of the acknowledged ones, never out of order.
      const counters = stored.map((r) => Number(r.text));
      expect(counters).toEqual([...counters].sort((a, b) => a - b));
      expect(new Set(counters).size).toBe(counters.length);
      const storedIds = new Set(stored.map((r) => r.event_id));
      for (const a of acknowledged.get(id)!) expect(storedIds.has(a.eventId)).toBe(true);
    }

    // Duplicates in the Kafka log: every record read back, grouped by ce_id. The producer
    // is idempotent, yet kafkajs's idempotence does not hold across every leader kill:
    // CI saw 7 of ~10,000 events stored twice (docs/reliability.md). They are counted
    // and reported, and the guarantee users read is checked below: the projection holds
    // each logged event exactly once, in log order.
    const logged = await readWholeTopic(brokers, topic);
    const messagesLogged = logged.filter((r) => r.ceType === "chat.message.sent");
    const inLog = countDuplicates(
      tally(messagesLogged.map((r) => r.ceId ?? `(no ce_id) ${r.partition}:${r.offset}`)),
    );
    if (inLog.duplicated > 0)
      console.log(`events stored twice in the log: ${JSON.stringify(inLog.examples)}`);
    const loggedIds = new Set(messagesLogged.map((r) => r.ceId));
    for (const a of expected) expect(loggedIds.has(a.eventId)).toBe(true);
    // PostgreSQL ends up with what the log holds: acknowledged sends plus rejected ones
    // that were stored anyway (the materialiser may still be applying the last of those).
    let stored = rows.length;
    for (
      const until = Date.now() + 60_000;
      stored !== inLog.distinct && Date.now() < until;
      await sleep(500)
    ) {
      const { rows: count } = await db.pool.query<{ n: string }>("SELECT count(*) AS n FROM messages");
      stored = Number(count[0]!.n);
    }
    expect(stored).toBe(inLog.distinct);

    // Duplicates in handler invocations: at least once each; redeliveries are counted.
    const auditDeadline = Date.now() + 120_000;
    while (![...loggedIds].every((id) => id !== null && invocations.has(id))) {
      if (Date.now() > auditDeadline) {
        const missing = [...loggedIds].filter((id) => id !== null && !invocations.has(id)).length;
        throw new Error(`the audit handler never saw ${missing} logged events`);
      }
      await sleep(500);
    }
    const inHandler = countDuplicates(invocations);
    expect(inHandler.distinct).toBe(inLog.distinct);
    console.log(
      `failover: ${expected.length} acknowledged, ${rejected} rejected and reported, ${rows.length} stored; ` +
        `killed node ${victimNode} (led partitions ${victimPartitions.join(",")}) and node ${ports.indexOf(other) + 1}; ` +
        `log: ${inLog.total} message records, ${inLog.distinct} distinct ce_id, ${inLog.duplicated} duplicated; ` +
        `audit handler: ${inHandler.total} invocations for ${inHandler.distinct} events, ${inHandler.duplicated} invoked more than once (${inHandler.extra} extra calls)`,
    );
  });
});

/**
 * Which acknowledged events the projection lacks, whether they were dead-lettered or
 * counted as duplicates, where each one is in the Kafka log (partition and offset, or
 * absent), and how far the materialiser got on that partition (stored next offset, log
 * end): tells records the log never kept from a consumer that stopped fetching and
 * from a rule that refused them.
 */
async function missingReport(expected: Acknowledged[]): Promise<string> {
  try {
    const missing = await missingRows(expected.map((e) => e.eventId));
    const logged = await readWholeTopic(brokers, topic);
    const where = new Map(logged.map((r) => [r.ceId, `${r.partition}:${r.offset}`]));
    const atPosition = new Map(logged.map((r) => [`${r.partition}:${r.offset}`, r.ceId]));
    const claims = new Map<string, number>();
    for (const e of expected)
      claims.set(`${e.partition}:${e.offset}`, (claims.get(`${e.partition}:${e.offset}`) ?? 0) + 1);
    const sent = new Map(expected.map((e) => [e.eventId, e]));
    const conversationOf = new Map(
      [...acknowledgedByConversation].flatMap(([c, list]) =>
        list.map((a) => [a.eventId, `${c}#${a.n}`] as const),
      ),
    );
    const ends = new Map<number, bigint>();
    for (const r of logged) ends.set(r.partition, BigInt(r.offset) + 1n);
    const { rows: stored } = await db.pool.query<{ partition: number; next_offset: string }>(
      "SELECT partition, next_offset FROM projection_offsets WHERE topic = $1 ORDER BY partition",
      [topic],
    );
    return JSON.stringify({
      missing: missing.map((m) => {
        const ack = sent.get(m.event_id)!;
        const position = `${ack.partition}:${ack.offset}`;
        return {
          ...m,
          sent: conversationOf.get(m.event_id),
          ackedAt: position,
          // The record the log holds at the acknowledged position, and how many
          // acknowledged sends claim that same position.
          logAtAckedPosition: atPosition.get(position) ?? "nothing",
          claims: claims.get(position),
          inLog: where.get(m.event_id) ?? "absent",
        };
      }),
      partitions: stored.map((s) => ({
        partition: s.partition,
        storedNext: s.next_offset,
        logEnd: String(ends.get(s.partition) ?? "?"),
      })),
    });
  } catch (error) {
    return `(the report failed: ${(error as Error).message})`;
  }
}

async function missingRows(eventIds: string[]) {
  const { rows } = await db.pool.query<{ event_id: string; dead: string | null; duplicate: boolean }>(
    `SELECT k.id AS event_id,
            (SELECT string_agg(d.subscription || ' ' || d.failure_class || ': ' || d.error_message, '; ')
               FROM dead_letters d WHERE d.event_id = k.id) AS dead,
            EXISTS (SELECT 1 FROM duplicate_messages x WHERE x.event_id = k.id) AS duplicate
       FROM unnest($1::text[]) AS k(id)
      WHERE NOT EXISTS (SELECT 1 FROM messages g WHERE g.event_id = k.id)`,
    [eventIds],
  );
  return rows;
}
