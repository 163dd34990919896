/**
 * Issue 12.2 with the stack running: the runtime process (`npm start`'s entry) runs the
 * materialiser; hostile records produced with kcat straight to the topic past the
 * SDK: text with U+0000 (refused by the decoder: a `poison` dead letter) and a record
 * the contract accepts but PostgreSQL refuses (a CHECK constraint the test adds, the
 * stand-in for any data the database will not store: a `data` dead letter, SQLSTATE
 * 23514); each is a dead letter within seconds; a message after it in another conversation of the same partition and one in
 * another partition are both materialised; the process's /metrics shows
 * `chatbus_breaker_state{subscription="materialiser"} 0` throughout.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { type ChatEventInput, encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";

const root = join(import.meta.dirname, "..", "..");
let db: TestSchema;
let topic: string;
let child: ChildProcess | undefined;
let metricsPort = 0;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/** The materialiser's breaker state as the process's /metrics reports it (null when not up). */
async function breakerState(): Promise<number | null> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const line = text
      .split("\n")
      .find((l) => l.startsWith("chatbus_breaker_state{") && l.includes('subscription="materialiser"'));
    return line === undefined ? null : Number(line.split(" ").pop());
  } catch {
    return null;
  }
}

/** Produces one record with kcat to an explicit partition: no SDK, no validation. */
function kcat(partition: number, conversationId: string, input: ChatEventInput, raw?: (v: string) => string) {
  const { record } = encodeEvent(conversationId, input, { source: "/test/kcat", id: uuidv7() });
  const value = raw ? raw(record.value.toString()) : record.value.toString();
  const headers = Object.entries(record.headers).flatMap(([k, v]) => ["-H", `${k}=${v}`]);
  execFileSync(
    "kcat",
    ["-P", "-b", kafkaBrokers()[0]!, "-t", topic, "-p", String(partition), "-k", conversationId, ...headers],
    { input: value },
  );
}

/**
 * kcat cannot pass U+0000 in an argument, so this one comes from a raw kafkajs producer:
 * a valid event whose `ce_source` header holds U+0000.
 */
async function produceWithNulHeader(partition: number, conversationId: string, input: ChatEventInput) {
  const { record } = encodeEvent(conversationId, input, { source: "/test/raw", id: uuidv7() });
  const producer = new Kafka({ brokers: kafkaBrokers(), logLevel: logLevel.NOTHING }).producer();
  await producer.connect();
  try {
    await producer.send({
      topic,
      messages: [
        {
          partition,
          key: conversationId,
          value: record.value,
          headers: { ...record.headers, ce_source: "/evil\u0000" },
        },
      ],
    });
  } finally {
    await producer.disconnect();
  }
}

beforeAll(async () => {
  db = await createTestSchema("mat_hostile");
  topic = await createTestTopic("mat_hostile", 2);
  metricsPort = await freePort();
  child = spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@chatbus/source", join(root, "consumer-runtime", "src", "main.ts")],
    {
      cwd: root,
      env: {
        ...process.env,
        KAFKA_BROKERS: kafkaBrokers().join(","),
        DATABASE_URL: db.url,
        CHATBUS_TOPIC: topic,
        CHATBUS_METRICS_PORT: String(metricsPort),
        CHATBUS_MATERIALISER_GROUP: uniqueName("mat-hostile"),
        LOG_LEVEL: "warn",
      },
      stdio: ["ignore", "ignore", "inherit"],
    },
  );
  const deadline = Date.now() + 90_000;
  while ((await breakerState()) === null) {
    if (Date.now() > deadline) throw new Error("the runtime process did not serve /metrics in 90 s");
    if (child.exitCode !== null) throw new Error(`the runtime process exited with ${child.exitCode}`);
    await sleep(500);
  }
}, 120_000);

afterAll(async () => {
  if (child && child.exitCode === null) {
    child.kill("SIGTERM");
    await new Promise((resolve) => {
      const timer = setTimeout(() => {
        child?.kill("SIGKILL");
        resolve(undefined);
      }, 20_000);
      child?.once("exit", () => {
        clearTimeout(timer);
        resolve(undefined);
      });
    });
  }
  await db?.cleanup();
}, 60_000);

describe("a record PostgreSQL refuses, with the stack running", () => {
  it("are poison and data dead letters within seconds; later messages of both partitions arrive; the breaker stays closed", async () => {
    const group = (members: string[]): ChatEventInput => ({
      type: "chat.conversation.created",
      kind: "group",
      createdBy: members[0]!,
      members,
    });
    const text = (senderId: string, t: string): ChatEventInput => ({
      type: "chat.message.sent",
      senderId,
      content: { type: "text", text: t },
    });
    kcat(0, "hostile-a", group(["ana", "bob"]));
    kcat(0, "hostile-b", group(["cy", "dan"]));
    kcat(1, "hostile-c", group(["eve", "fay"]));
    const producedAt = Date.now();
    await db.pool.query(
      "ALTER TABLE messages ADD CONSTRAINT test_refuse_marker CHECK (content->>'text' NOT LIKE '%refused-by-postgres%')",
    );
    kcat(0, "hostile-a", text("ana", "XNULX"), (v) => v.replace("XNULX", "nul \\u0000 here"));
    kcat(0, "hostile-a", text("ana", "refused-by-postgres"));
    await produceWithNulHeader(0, "hostile-a", text("ana", "a NUL in a header"));
    kcat(0, "hostile-b", text("cy", "after the bad one, same partition"));
    kcat(1, "hostile-c", text("eve", "another partition"));

    const breakerSeen = new Set<number | null>();
    let deadLetters: { failure_class: string; error_code: string; conversation_id: string }[] = [];
    let texts: { conversation_id: string; t: string }[] = [];
    const deadline = Date.now() + 60_000;
    for (;;) {
      breakerSeen.add(await breakerState());
      deadLetters = (
        await db.pool.query(
          `SELECT failure_class, error_code, conversation_id FROM dead_letters
            WHERE topic = $1 AND subscription = 'materialiser' ORDER BY "offset"`,
          [topic],
        )
      ).rows;
      texts = (
        await db.pool.query(
          "SELECT conversation_id, content->>'text' AS t FROM messages ORDER BY conversation_id, seq",
        )
      ).rows;
      if (deadLetters.length >= 3 && texts.length >= 2) break;
      if (Date.now() > deadline) break;
      await sleep(250);
    }
    const seconds = (Date.now() - producedAt) / 1000;
    expect(deadLetters).toEqual([
      { failure_class: "poison", error_code: expect.any(String), conversation_id: "hostile-a" },
      { failure_class: "data", error_code: "23514", conversation_id: "hostile-a" },
      { failure_class: "poison", error_code: expect.any(String), conversation_id: "hostile-a" },
    ]);
    // The runtime's own subscription (notifications) stored its dead letters as well:
    // a NUL in a header must not make the dead-letter write itself fail.
    const notifications = await db.pool.query(
      "SELECT count(*)::int AS n FROM dead_letters WHERE topic = $1 AND subscription <> 'materialiser'",
      [topic],
    );
    expect(notifications.rows[0].n).toBeGreaterThanOrEqual(2);
    expect(seconds).toBeLessThan(30);
    expect(texts).toEqual([
      { conversation_id: "hostile-b", t: "after the bad one, same partition" },
      { conversation_id: "hostile-c", t: "another partition" },
    ]);
    // Once more after everything settled, then: the breaker was never anything but closed.
    breakerSeen.add(await breakerState());
    expect([...breakerSeen]).toEqual([0]);
  }, 90_000);
});
