/**
 * Test support for the materialiser: a deterministic chat workload, a producer that
 * writes it through the event codec, waiting for the projection to catch up, and an
 * independent snapshot of the projection's rows.
 */
import { type ChatEventInput, encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import { CompressionTypes, Kafka, logLevel } from "kafkajs";
import type pg from "pg";
import type { Registry } from "prom-client";
import { kafkaBrokers } from "../../test/support/env.ts";

/** One event of a workload: its conversation, its input and its fixed id and time. */
export interface WorkloadEvent {
  conversationId: string;
  input: ChatEventInput;
  id: string;
  time: Date;
}

/** A small deterministic pseudo-random generator (mulberry32): the same seed, the same workload. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A valid workload (no business rule broken): `conversations` conversations and
 * about `events` events with sends, edits, recalls, receipts, joins and leaves,
 * interleaved across conversations.
 */
export function generateWorkload(
  conversations: number,
  events: number,
  seed = 42,
  options: { prefix?: string; textBytes?: number } = {},
): WorkloadEvent[] {
  const random = prng(seed);
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]!;
  const prefix = options.prefix ?? "conv";
  const text = (n: number) => `m${n} `.padEnd(options.textBytes ?? 20, "x");
  const base = Date.UTC(2026, 0, 1);
  let clock = 0;
  const out: WorkloadEvent[] = [];
  const push = (conversationId: string, input: ChatEventInput) =>
    out.push({ conversationId, input, id: uuidv7(), time: new Date(base + clock++ * 7) });
  const states = Array.from({ length: conversations }, (_, i) => {
    const id = `${prefix}-${i}`;
    const members = [`u${i % 97}`, `u${(i * 7 + 1) % 97}`, `u${(i * 13 + 2) % 97}`].filter(
      (u, j, all) => all.indexOf(u) === j,
    );
    return {
      id,
      members,
      nextUser: 100 + i * 10,
      messages: [] as { id: string; sender: string; recalled: boolean }[],
      created: false,
    };
  });
  while (out.length < events) {
    const s = pick(states);
    if (!s.created) {
      s.created = true;
      push(s.id, {
        type: "chat.conversation.created",
        kind: s.members.length === 2 ? "direct" : "group",
        title: `title ${s.id}`,
        createdBy: s.members[0]!,
        members: [...s.members],
      });
      continue;
    }
    const r = random();
    const live = s.messages.filter((m) => !m.recalled);
    if (r < 0.65 || s.messages.length === 0) {
      const sender = pick(s.members);
      push(s.id, {
        type: "chat.message.sent",
        senderId: sender,
        content: { type: "text", text: text(s.messages.length + 1) },
        ...(random() < 0.3 ? { clientMsgId: `cm-${out.length}` } : {}),
        ...(random() < 0.1 ? { priority: "high" as const } : {}),
      });
      s.messages.push({ id: out[out.length - 1]!.id, sender, recalled: false });
    } else if (r < 0.72 && live.length > 0) {
      const m = pick(live);
      if (!s.members.includes(m.sender)) continue;
      push(s.id, {
        type: "chat.message.edited",
        messageId: m.id,
        editorId: m.sender,
        content: { type: "text", text: `edited ${m.id.slice(-6)}` },
      });
    } else if (r < 0.75 && live.length > 0) {
      const m = pick(live);
      m.recalled = true;
      push(s.id, { type: "chat.message.recalled", messageId: m.id, recalledBy: m.sender });
    } else if (r < 0.87) {
      push(s.id, {
        type: "chat.receipt.read",
        userId: pick(s.members),
        upToSeq: 1 + Math.floor(random() * s.messages.length),
      });
    } else if (r < 0.94) {
      push(s.id, { type: "chat.receipt.delivered", userId: pick(s.members), upToSeq: s.messages.length });
    } else if (r < 0.97) {
      const userId = `u${s.nextUser++}`;
      s.members.push(userId);
      push(s.id, { type: "chat.member.joined", userId, addedBy: s.members[0]!, role: "member" });
    } else if (s.members.length > 2) {
      const userId = s.members[s.members.length - 1]!;
      s.members.pop();
      push(s.id, { type: "chat.member.left", userId });
    }
  }
  return out;
}

/** Encodes and produces events in order (per conversation order kept by the key). */
export async function produceWorkload(topic: string, events: WorkloadEvent[]): Promise<void> {
  const kafka = new Kafka({ clientId: "chatbus-test", brokers: kafkaBrokers(), logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    for (let i = 0; i < events.length; i += 2000) {
      const messages = events.slice(i, i + 2000).map((e) => {
        const { record } = encodeEvent(e.conversationId, e.input, {
          source: "/test/materialiser",
          id: e.id,
          time: e.time,
        });
        return { key: record.key, value: record.value, headers: record.headers };
      });
      await producer.send({ topic, messages, acks: -1, compression: CompressionTypes.None });
    }
  } finally {
    await producer.disconnect();
  }
}

/** The topic's end offset per partition. */
export async function topicEnds(topic: string): Promise<Map<number, bigint>> {
  const admin = new Kafka({
    clientId: "chatbus-test",
    brokers: kafkaBrokers(),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    return new Map(offsets.map((o) => [o.partition, BigInt(o.high)]));
  } finally {
    await admin.disconnect();
  }
}

/** The sum of the stored next offsets of the topic's partitions. */
export async function appliedCount(pool: pg.Pool, topic: string): Promise<number> {
  const { rows } = await pool.query<{ n: string | null }>(
    "SELECT sum(next_offset) AS n FROM projection_offsets WHERE topic = $1",
    [topic],
  );
  return Number(rows[0]!.n ?? 0);
}

/** Polls until every partition's stored offset reaches the topic's end. */
export async function waitUntilApplied(pool: pg.Pool, topic: string, timeoutMs = 90_000): Promise<void> {
  const ends = await topicEnds(topic);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows } = await pool.query<{ partition: number; next_offset: string }>(
      "SELECT partition, next_offset FROM projection_offsets WHERE topic = $1",
      [topic],
    );
    const stored = new Map(rows.map((r) => [r.partition, BigInt(r.next_offset)]));
    const behind = [...ends].filter(([p, end]) => end > 0n && (stored.get(p) ?? 0n) < end);
    if (behind.length === 0) return;
    if (Date.now() > deadline)
      throw new Error(
        `projection did not catch up in ${timeoutMs} ms: ${behind.map(([p, e]) => `p${p} ${stored.get(p) ?? 0n}/${e}`).join(", ")}`,
      );
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/**
 * Every projection row as text, without the wall-clock columns (materialised_at,
 * updated_at): written here independently of verifyProjections.
 */
export async function projectionSnapshot(pool: pg.Pool): Promise<Record<string, string[]>> {
  const queries: Record<string, string> = {
    conversations: "SELECT row_to_json(t)::text AS r FROM conversations t ORDER BY conversation_id",
    members: "SELECT row_to_json(t)::text AS r FROM members t ORDER BY conversation_id, user_id",
    messages:
      "SELECT (to_jsonb(t) - 'materialised_at')::text AS r FROM messages t ORDER BY conversation_id, seq",
    receipts: "SELECT row_to_json(t)::text AS r FROM receipts t ORDER BY conversation_id, user_id, kind",
    duplicate_messages:
      'SELECT row_to_json(t)::text AS r FROM duplicate_messages t ORDER BY partition, "offset"',
    event_log: `SELECT (to_jsonb(t) - 'materialised_at')::text AS r FROM event_log t ORDER BY partition, "offset"`,
    projection_offsets:
      "SELECT topic || ':' || partition || ':' || next_offset AS r FROM projection_offsets ORDER BY 1",
  };
  const out: Record<string, string[]> = {};
  for (const [table, sql] of Object.entries(queries)) {
    out[table] = (await pool.query<{ r: string }>(sql)).rows.map((r) => r.r);
  }
  return out;
}

/** Conversations whose message seqs are not exactly 1..n, or whose last_seq is not n. */
export async function sequenceViolations(pool: pg.Pool): Promise<string[]> {
  const { rows } = await pool.query<{ conversation_id: string }>(
    `SELECT c.conversation_id FROM conversations c
       LEFT JOIN (SELECT conversation_id, count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi
                    FROM messages GROUP BY conversation_id) g ON g.conversation_id = c.conversation_id
      WHERE coalesce(g.n, 0) <> c.last_seq OR coalesce(g.d, 0) <> c.last_seq
         OR (c.last_seq > 0 AND (g.lo <> 1 OR g.hi <> c.last_seq))`,
  );
  return rows.map((r) => r.conversation_id);
}

/** A text message from `senderId`. */
export const textMessage = (senderId: string, text: string): ChatEventInput => ({
  type: "chat.message.sent",
  senderId,
  content: { type: "text", text },
});

/** A group created by its first member. */
export const groupCreated = (members: string[]): ChatEventInput => ({
  type: "chat.conversation.created",
  kind: "group",
  createdBy: members[0]!,
  members,
});

/**
 * A rule of a test schema that the database enforces (class 23), independent of what the
 * event contract accepts: a message whose text is "REFUSE" is refused.
 */
export async function addRefuseRule(pool: pg.Pool): Promise<void> {
  await pool.query(
    `ALTER TABLE messages ADD CONSTRAINT test_refuse CHECK (content->>'text' IS DISTINCT FROM 'REFUSE')`,
  );
}

/** The sum of a metric's values whose labels include `labels` (0 when absent). */
export async function metricSum(
  registry: Registry,
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  return (
    metric?.values
      .filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))
      .reduce((sum, v) => sum + v.value, 0) ?? 0
  );
}
