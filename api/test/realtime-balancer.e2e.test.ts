/**
 * The API tier across processes, end to end (issue 18.1, 18.2, 18.4): two real API
 * processes, nginx from Debian in front of them with the shipped example
 * configuration, the real materialiser, Kafka and PostgreSQL. Clients are cut at
 * random points and reconnect with their last id, some directly to the other
 * process, some through the balancer; one process is killed with SIGKILL while
 * messages flow, then restarted. Every client must end with every message exactly
 * once, in per-conversation order, and no reset. A user whose only stream was on the
 * killed process goes offline for the others.
 */
import {
  encodeEventCursor,
  type Materialiser,
  startMaterialiser,
} from "@chatbus/consumer-runtime/materialiser";
import { type ChatBus, createChatBus } from "@chatbus/producer-sdk";
import pino from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { eventually, openSse, type SseClient, type SseMessage } from "./harness.ts";
import {
  type ApiProcess,
  type Balancer,
  freePort,
  startApiProcess,
  startBalancer,
} from "./realtime-cluster.ts";

const partitions = 8;
const perConversation = 100;
let topic: string;
let schema: TestSchema;
let bus: ChatBus;
let materialiser: Materialiser;
const api: ApiProcess[] = [];
let balancer: Balancer;
const groups: string[] = [];

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

function settings(port: number) {
  return {
    port,
    databaseUrl: schema.url,
    topic,
    brokers: kafkaBrokers(),
    env: { CHATBUS_PARTITIONS: String(partitions) },
  };
}

beforeAll(async () => {
  [topic, schema] = await Promise.all([createTestTopic("api_lb", partitions), createTestSchema("api_lb")]);
  const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });
  bus = await createChatBus({
    brokers: kafkaBrokers(),
    topic,
    partitions,
    ensureTopic: false,
    clientId: uniqueName("api-lb"),
    source: "/chatbus/api-lb-test",
    logger,
    registry: new Registry(),
  });
  materialiser = await startMaterialiser({
    pool: schema.pool,
    brokers: kafkaBrokers(),
    topic,
    groupId: uniqueName("api-lb-mat"),
    sessionTimeoutMs: 6000,
    logger,
  });
  const ports = [await freePort(), await freePort()];
  api.push(...(await Promise.all(ports.map((port) => startApiProcess(settings(port))))));
  balancer = await startBalancer(ports);
});

afterAll(async () => {
  for (const p of api) {
    p.child.kill("SIGKILL");
    await p.exited;
  }
  await balancer?.stop();
  await materialiser?.stop();
  await bus?.close();
  await schema?.cleanup();
});

async function login(user: string): Promise<string> {
  const res = await fetch(`${balancer.url}/v1/dev/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: user }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { token: string }).token;
}

/** A client that keeps reconnecting with its last id, collecting what each connection delivered. */
interface Client {
  user: string;
  token: string;
  messages: SseMessage[];
  lastId: string | undefined;
  resets: SseMessage[];
  upstreams: string[];
  connections: number;
}

async function follow(client: Client, target: (round: number) => string, done: () => boolean): Promise<void> {
  for (let round = 0; !done(); round++) {
    let stream: SseClient;
    try {
      stream = await openSse(target(round), client.token, client.lastId);
    } catch {
      await pause(100); // the process is down: the next round tries the other
      continue;
    }
    if (stream.status !== 200) {
      stream.close();
      await pause(100);
      continue;
    }
    client.connections++;
    const upstream = stream.headers.get("x-upstream");
    if (upstream) client.upstreams.push(upstream);
    const cutAt = Date.now() + 150 + Math.random() * 1200;
    while (Date.now() < cutAt && !stream.ended && !done()) await pause(25);
    stream.close();
    for (const e of stream.events) {
      if (e.event === "reset") client.resets.push(e);
      if (e.event === "chat.message.sent") client.messages.push(e);
    }
    client.lastId = stream.lastId() ?? client.lastId;
  }
}

describe("two API processes behind nginx", () => {
  it("resumes every client exactly, on either process, through a SIGKILL; presence survives the kill", async () => {
    const users = ["ben", "cat", "dov", "eli", "fox", "gia"];
    const tokens = await Promise.all(users.map(login));
    const ana = await login("ana");
    const [dan, eve] = [await login("dan"), await login("eve")];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${balancer.url}/v1/conversations`, {
        method: "POST",
        headers: { authorization: `Bearer ${ana}`, "content-type": "application/json" },
        body: JSON.stringify({ kind: "group", title: `lb${i}`, members: [...users, "dan", "eve"] }),
      });
      expect(res.status).toBe(202);
      groups.push(((await res.json()) as { conversationId: string }).conversationId);
    }
    await eventually("the groups", async () => {
      const { rows } = await schema.pool.query("SELECT count(*)::int AS n FROM conversations");
      return rows[0].n === 3;
    });

    // Every partition without a group ends in a dead letter: committed (so the hubs
    // have seen its offset) but not in event_log; the restarted process must still
    // accept positions that name it.
    const { rows: used } = await schema.pool.query<{ partition: number }>(
      "SELECT DISTINCT partition FROM conversations",
    );
    const free = new Set<number>();
    for (let i = 0; free.size + used.length < partitions && i < 500; i++) {
      const sent = await bus.send(`nowhere-${i}`, {
        type: "chat.receipt.read",
        userId: "stranger",
        upToSeq: 1,
      });
      if (!used.some((u) => u.partition === sent.partition)) free.add(sent.partition);
    }
    await eventually("the dead letters", async () => {
      const { rows } = await schema.pool.query("SELECT count(*)::int AS n FROM dead_letters");
      return rows[0].n >= free.size;
    });

    // Presence: dan's only stream is on process 0, eve watches from process 1.
    const danStream = await openSse(api[0]!.url, dan);
    const eveStream = await openSse(api[1]!.url, eve);
    const danSeen = () =>
      eveStream.events
        .filter((e) => e.event === "presence" && e.data.userId === "dan")
        .map((e) => e.data.status);
    await eventually("eve to see dan online", () => danSeen().includes("online"));

    // Every client starts from the position before the first message (a fresh stream
    // starts "now", which on a loaded machine can be after the first send).
    const { rows: applied } = await schema.pool.query<{ partition: number; offset: string }>(
      `SELECT partition, (next_offset - 1)::text AS "offset" FROM projection_offsets WHERE next_offset > 0`,
    );
    const start = encodeEventCursor(Object.fromEntries(applied.map((r) => [r.partition, r.offset])));
    const clients: Client[] = users.map((user, i) => ({
      user,
      token: tokens[i]!,
      messages: [],
      lastId: start,
      resets: [],
      upstreams: [],
      connections: 0,
    }));
    const total = 3 * perConversation;
    const complete = (c: Client) => new Set(c.messages.map((m) => m.data.eventId)).size >= total;
    let stop = false;
    const done = () => stop;
    // Half the clients alternate between the processes directly, half go through nginx.
    const running = clients.map((c, i) =>
      follow(c, i % 2 === 0 ? (round) => api[(round + i) % 2]!.url : () => balancer.url, done),
    );
    await pause(500);

    let killedAt = 0;
    for (let n = 0; n < perConversation; n++) {
      for (const [g, conversationId] of groups.entries()) {
        await bus.send(conversationId, {
          type: "chat.message.sent",
          senderId: "ana",
          priority: "high",
          content: { type: "text", text: `g${g}-${n}` },
        });
      }
      if (n === Math.floor(perConversation / 2)) {
        api[0]!.child.kill("SIGKILL"); // mid-stream: its clients reconnect elsewhere
        await api[0]!.exited;
        killedAt = Date.now();
      }
      if (n === Math.floor(perConversation / 2) + 15) {
        api[0] = await startApiProcess(settings(api[0]!.port)); // and it comes back on the same port
      }
      await pause(15);
    }

    const all = await eventually(
      "every client to have every message",
      () => clients.every(complete),
      120_000,
    ).catch((error: Error) => error);
    stop = true;
    await Promise.all(running);
    if (all instanceof Error) {
      // Say who misses what before failing: the counts are the diagnosis.
      const report = clients.map((c) => {
        const have = new Set(
          c.messages.map((m) => (m.data.data as { content: { text: string } }).content.text),
        );
        const missing = groups.flatMap((_, g) =>
          Array.from({ length: perConversation }, (_, n) => `g${g}-${n}`).filter((t) => !have.has(t)),
        );
        return `${c.user}: ${have.size}/${total} after ${c.connections} connections, last id ${c.lastId}, missing ${missing.slice(0, 12).join(" ")}`;
      });
      throw new Error(`${all.message}\n${report.join("\n")}`);
    }

    for (const c of clients) {
      expect(c.resets, c.user).toEqual([]);
      const texts = c.messages.map((m) => (m.data.data as { content: { text: string } }).content.text);
      expect(texts.length, `${c.user}: no message twice`).toBe(total);
      expect(new Set(texts).size, c.user).toBe(total);
      for (const conversationId of groups) {
        const seqs = c.messages
          .filter((m) => m.data.conversationId === conversationId)
          .map((m) => m.data.seq);
        const first = seqs[0] as number;
        expect(seqs, `${c.user} in ${conversationId}`).toEqual(
          Array.from({ length: perConversation }, (_, k) => first + k),
        );
      }
      expect(c.connections, c.user).toBeGreaterThan(2);
    }
    // Through nginx, reconnects landed on both processes.
    const viaBalancer = new Set(
      clients.filter((_, i) => i % 2 === 1).flatMap((c) => c.upstreams.flatMap((u) => u.split(/,\s*/))),
    );
    expect([...viaBalancer].sort()).toEqual(api.map((p) => `127.0.0.1:${p.port}`).sort());

    // dan's process died without closing anything: the survivors announce him offline.
    await eventually("eve to see dan offline", () => danSeen().includes("offline"), 60_000);
    expect(danSeen()).toEqual(["online", "offline"]);
    expect(Date.now() - killedAt).toBeGreaterThan(1000);
    danStream.close();
    eveStream.close();
  });
});
