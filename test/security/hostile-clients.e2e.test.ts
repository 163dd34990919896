/**
 * The security review's attacks (shared/reviews/security.md; issues 12 and 13) run
 * with curl and fetch against a running stack: the API listening on a free port and
 * configured from the environment as a deployment would be (dev login opted in), the
 * real producer, Kafka and the materialiser. Each attack must be refused or handled;
 * none may leave a dead letter or hold a partition; and a message sent last must
 * still be materialised.
 */
import { execFile } from "node:child_process";
import { Writable } from "node:stream";
import { promisify } from "node:util";
import { type ApiApp, buildApp, loadConfig } from "@chatbus/api";
import {
  createProjectionReader,
  eventsChannel,
  type Materialiser,
  startMaterialiser,
} from "@chatbus/consumer-runtime/materialiser";
import { type ChatBus, createChatBus, encodeEvent } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import { pino } from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../support/env.ts";
import { createTestSchema, createTestTopic, type TestSchema, uniqueName } from "../support/isolation.ts";

const run = promisify(execFile);
const operatorKey = `sec-operator-${uniqueName("k")}`;
const serviceKey = `sec-service-${uniqueName("k")}`;
const partitions = 3;

let db: TestSchema;
let topic: string;
let bus: ChatBus;
let materialiser: Materialiser;
let app: ApiApp;
let api: string;
const logLines: string[] = [];
const tokens: Record<string, string> = {};

/** curl as the review ran it: status code and body. */
async function curl(method: string, path: string, token: string | undefined, body?: string) {
  const args = ["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, `${api}${path}`];
  if (token) args.push("-H", `authorization: Bearer ${token}`);
  if (body !== undefined) args.push("-H", "content-type: application/json", "--data-binary", body);
  const { stdout } = await run("curl", args);
  const cut = stdout.lastIndexOf("\n");
  const text = stdout.slice(0, cut);
  return { status: Number(stdout.slice(cut + 1)), json: text ? JSON.parse(text) : undefined };
}

async function call(method: string, path: string, user: string, body?: unknown) {
  const res = await fetch(`${api}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${tokens[user] ?? user}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : undefined };
}

async function eventually<T>(what: string, check: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const materialised = (conversationId: string, user: string) =>
  eventually(`${conversationId} visible to ${user}`, async () =>
    (await call("GET", `/v1/conversations/${conversationId}`, user)).status === 200 ? true : undefined,
  );

async function group(owner: string, members: string[]): Promise<string> {
  const res = await call("POST", "/v1/conversations", owner, { kind: "group", members });
  expect(res.status).toBe(202);
  await materialised(res.json.conversationId, owner);
  return res.json.conversationId as string;
}

beforeAll(async () => {
  topic = await createTestTopic("security", partitions);
  db = await createTestSchema("security");
  const quiet = pino({ level: "silent" });
  bus = await createChatBus({
    brokers: kafkaBrokers(),
    topic,
    partitions,
    ensureTopic: false,
    logger: quiet,
  });
  materialiser = await startMaterialiser({
    pool: db.pool,
    topic,
    brokers: kafkaBrokers(),
    groupId: uniqueName("security-materialiser"),
    logger: quiet,
  });
  const { config, notes } = loadConfig({
    NODE_ENV: "development",
    KAFKA_BROKERS: kafkaBrokers().join(","),
    DATABASE_URL: db.url,
    CHATBUS_TOPIC: topic,
    CHATBUS_JWT_SECRET: `sec-jwt-${uniqueName("s")}`,
    CHATBUS_OPERATOR_KEY: operatorKey,
    CHATBUS_SERVICE_KEYS: serviceKey,
    CHATBUS_DEV_LOGIN: "1",
  });
  // The API's log lines, to check what a log reader would see.
  const sink = new Writable({
    write(chunk, _encoding, done) {
      logLines.push(String(chunk));
      done();
    },
  });
  const logger = pino({ level: "info" }, sink);
  for (const warning of notes.warnings) logger.warn(warning);
  app = await buildApp({
    config,
    logger,
    registry: new Registry(),
    bus,
    readiness: {},
    projection: createProjectionReader(db.pool),
    pool: db.pool,
    realtime: { pool: db.pool, databaseUrl: db.url, channel: eventsChannel(db.schema) },
  });
  api = await app.listen({ host: "127.0.0.1", port: 0 });
  for (const user of ["ana", "ben", "eve", "mallory", "a", "b:c", "a:b", "c"]) {
    const res = await curl("POST", "/v1/dev/login", undefined, JSON.stringify({ username: user }));
    expect(res.status).toBe(200);
    tokens[user] = res.json.token;
  }
});

afterAll(async () => {
  await app?.close();
  await materialiser?.stop();
  await bus?.close();
  await db?.cleanup();
});

describe("hostile clients against a running stack", () => {
  it("says loudly that dev login is on", () => {
    expect(logLines.join("")).toContain("CHATBUS_DEV_LOGIN=1");
  });

  it("H1: refuses the poison values at the edge, naming the field", async () => {
    const g = await group("mallory", ["ben"]);
    const attacks: [string, string, string][] = [
      ["/v1/conversations", '{"kind":"group","members":["ben"],"title":"a\\u0000b"}', "title"],
      [`/v1/conversations/${g}/messages`, '{"content":{"type":"text","text":"\\u0000"}}', "content.text"],
      [`/v1/conversations/${g}/messages`, '{"content":{"type":"text","text":"\\ud800"}}', "content.text"],
      [
        `/v1/conversations/${g}/messages`,
        '{"content":{"type":"custom","customType":"x","data":{"k":"\\udc00"}}}',
        "content.data.k",
      ],
      [`/v1/conversations/${g}/read`, '{"seq":10000000000000000000}', "seq"],
      [`/v1/conversations/${g}/read`, '{"seq":1e300}', "seq"],
    ];
    for (const [path, body, field] of attacks) {
      const res = await curl("POST", path, tokens.mallory, body);
      expect(res.status, `${path} ${body}`).toBe(400);
      expect(res.json.error.field).toBe(field);
    }
  });

  it("H2: a plain member cannot hand out owner, nor remove the owner", async () => {
    const g = await group("ana", ["ben", "eve"]);
    const grant = await curl(
      "POST",
      `/v1/conversations/${g}/members`,
      tokens.eve,
      '{"userId":"mallory","role":"owner"}',
    );
    expect(grant.status).toBe(403);
    expect(grant.json.error.message).toContain("owners-grant-roles");
    const remove = await curl("DELETE", `/v1/conversations/${g}/members/ana`, tokens.eve);
    expect(remove.status).toBe(403);
    expect(remove.json.error.message).toContain("owner-protected");
    const members = await call("GET", `/v1/conversations/${g}`, "ana");
    expect(
      members.json.members.map((m: { userId: string; role: string }) => `${m.userId}:${m.role}`).sort(),
    ).toEqual(["ana:owner", "ben:member", "eve:member"]);
  });

  it("M1: a user's high priority is refused; a flood gets 429 with Retry-After", async () => {
    const d = (await call("POST", "/v1/conversations", "mallory", { kind: "direct", members: ["ben"] })).json
      .conversationId as string;
    await materialised(d, "mallory");
    const high = await curl(
      "POST",
      `/v1/conversations/${d}/messages`,
      tokens.mallory,
      '{"content":{"type":"text","text":"spam"},"priority":"high"}',
    );
    expect(high.status).toBe(403);
    expect(high.json.error.field).toBe("priority");
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 100; i++) {
      const res = await call("POST", `/v1/conversations/${d}/messages`, "mallory", {
        content: { type: "text", text: `spam ${i}` },
      });
      statuses.push(res.status);
      if (res.status === 429) retryAfter ??= res.headers.get("retry-after");
    }
    // A direct conversation: 10/s with a 5 s burst; the loop takes well under 5 s more.
    expect(statuses.filter((s) => s === 202).length).toBeLessThan(100);
    expect(statuses).toContain(429);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  });

  it("M5: user mistakes are answered at the API, not turned into dead letters", async () => {
    const first = await call("POST", "/v1/conversations", "ana", { kind: "direct", members: ["eve"] });
    expect(first.status).toBe(202);
    await materialised(first.json.conversationId, "ana");
    const again = await curl("POST", "/v1/conversations", tokens.eve, '{"kind":"direct","members":["ana"]}');
    expect(again.status).toBe(200);
    expect(again.json.conversationId).toBe(first.json.conversationId);

    const g = await group("ana", ["ben"]);
    const existing = await curl("POST", `/v1/conversations/${g}/members`, tokens.ana, '{"userId":"ben"}');
    expect(existing.status).toBe(409);

    const sent = await call("POST", `/v1/conversations/${g}/messages`, "ana", {
      content: { type: "text", text: "draft" },
    });
    const message = `/v1/conversations/${g}/messages/${sent.json.eventId}`;
    await eventually("the message materialised", async () =>
      (await call("GET", `/v1/conversations/${g}/messages`, "ana")).json.messages.length === 1
        ? true
        : undefined,
    );
    expect((await call("DELETE", message, "ana")).status).toBe(202);
    await eventually("the recall materialised", async () =>
      (await call("GET", `/v1/conversations/${g}/messages`, "ana")).json.messages[0].recalledAt
        ? true
        : undefined,
    );
    const edit = await curl("PATCH", message, tokens.ana, '{"content":{"type":"text","text":"hunter2"}}');
    expect(edit.status).toBe(409);
  });

  it("L3: ?after past 2^53-1 is a 400 naming `after`", async () => {
    const g = await group("ana", ["ben"]);
    const res = await curl("GET", `/v1/conversations/${g}/messages?after=99999999999999999999`, tokens.ana);
    expect(res.status).toBe(400);
    expect(res.json.error.field).toBe("after");
  });

  it("L1: the SSE token is redacted from the logs even as access%5Ftoken", async () => {
    const token = tokens.ben!;
    await run("curl", ["-s", "-N", "--max-time", "1", `${api}/v1/me/events?access%5Ftoken=${token}`]).catch(
      () => undefined, // curl exits 28 when --max-time cuts the stream
    );
    await eventually("the request logged", async () =>
      logLines.some((line) => line.includes("access%5Ftoken=[redacted]")) ? true : undefined,
    );
    expect(logLines.join("")).not.toContain(token.split(".")[2]!);
  });

  it("L2: /readyz tells dependency details only to the operator", async () => {
    const anonymous = await curl("GET", "/readyz", undefined);
    expect(anonymous.status).toBe(200);
    expect(JSON.stringify(anonymous.json)).not.toMatch(/127\.0\.0\.1|postgres:/);
  });

  it("L9: direct conversations of users with `:` in their ids do not collide", async () => {
    const one = await call("POST", "/v1/conversations", "a", { kind: "direct", members: ["b:c"] });
    const two = await call("POST", "/v1/conversations", "a:b", { kind: "direct", members: ["c"] });
    expect(one.status).toBe(202);
    expect(two.status).toBe(202);
    expect(one.json.conversationId).not.toBe(two.json.conversationId);
    await materialised(one.json.conversationId, "b:c");
    await materialised(two.json.conversationId, "c");
  });

  it("a raw producer's NUL text, lone surrogate and huge seq are dead-lettered as poison; the conversation goes on", async () => {
    const g = await group("ana", ["ben"]);
    const producer = new Kafka({ brokers: kafkaBrokers(), logLevel: logLevel.NOTHING }).producer();
    await producer.connect();
    try {
      // Well-formed CloudEvents headers (from the real encoder) around values the SDK would refuse.
      const raw = (type: "chat.message.sent" | "chat.receipt.read", value: string) => {
        const event =
          type === "chat.message.sent"
            ? { type, senderId: "ana", content: { type: "text" as const, text: "placeholder" } }
            : { type, userId: "ana", upToSeq: 1 };
        const { record } = encodeEvent(g, event, { source: "/attacker" });
        return { key: record.key, value: value, headers: record.headers };
      };
      await producer.send({
        topic,
        acks: -1,
        messages: [
          raw("chat.message.sent", '{"senderId":"ana","content":{"type":"text","text":"a\\u0000b"}}'),
          raw("chat.message.sent", '{"senderId":"ana","content":{"type":"text","text":"\\ud800"}}'),
          raw("chat.receipt.read", '{"userId":"ana","upToSeq":10000000000000000000}'),
        ],
      });
    } finally {
      await producer.disconnect();
    }
    const after = await call("POST", `/v1/conversations/${g}/messages`, "ana", {
      content: { type: "text", text: "after the poison" },
    });
    expect(after.status).toBe(202);
    await eventually("the message after the poison records", async () => {
      const history = await call("GET", `/v1/conversations/${g}/messages`, "ben");
      return history.json.messages.some(
        (m: { content: { text?: string } }) => m.content.text === "after the poison",
      )
        ? true
        : undefined;
    });
    const poison = await eventually("three poison dead letters", async () => {
      const page = await call("GET", "/v1/dead-letters?limit=50", operatorKey);
      const items = (page.json.items as { conversationId: string; failureClass: string }[]).filter(
        (d) => d.conversationId === g,
      );
      return items.length >= 3 ? items : undefined;
    });
    expect(poison.map((d) => d.failureClass)).toEqual(["poison", "poison", "poison"]);
  });

  it("after all of it: no dead letter but the raw producer's, and a new message is still materialised", async () => {
    const g = await group("ben", ["ana"]);
    const sent = await call("POST", `/v1/conversations/${g}/messages`, "ben", {
      content: { type: "text", text: "still standing" },
    });
    expect(sent.status).toBe(202);
    await eventually("the last message in history", async () => {
      const history = await call("GET", `/v1/conversations/${g}/messages`, "ana");
      return history.json.messages.some(
        (m: { content: { text?: string } }) => m.content.text === "still standing",
      )
        ? true
        : undefined;
    });
    const deadLetters = await call("GET", "/v1/dead-letters?limit=50", operatorKey);
    expect(deadLetters.status).toBe(200);
    // Only the raw producer's records: nothing a user did over the API became a dead letter.
    const sources = (deadLetters.json.items as { failureClass: string }[]).map((d) => d.failureClass);
    expect(sources).toEqual(["poison", "poison", "poison"]);
  });
});
