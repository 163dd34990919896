/**
 * API benchmark (not a timed test). One run, side by side:
 *
 * 1. Send: requests/s of `POST /v1/conversations/:id/messages` (auth, validation,
 *    membership check, from the API's cache once warm, produce with acks=all) next to a trivial
 *    fastify route (`POST /noop`, JSON body echoed) in the same process: the
 *    framework ceiling on this machine. autocannon, same connections and duration.
 *    Then the same send as a member (normal priority), once through the shared
 *    PostgreSQL rate limits (rates set so high that nothing is refused, so only
 *    their cost shows) and once through a second app with them off (issue 18.3).
 * 2. History: p50/p99 of `GET /v1/conversations/:id/messages?limit=50`.
 * 3. SSE fan-out: N streams (default 5,000) of N members of one group, opened by a
 *    child process; one message to the group; time from `send` until each stream
 *    has it (p50/p99/max); the API process's memory per idle stream.
 *
 *   npx tsx --conditions=@chatbus/source bench/api/run.ts [--streams 5000] [--seconds 8] [--connections 32] [--log info]
 *
 * The load generator (autocannon, `cannon.ts`) and the materialiser
 * (`materialiser-child.ts`) run in processes of their own, so this process is what
 * `main.ts` runs: the API and its producer. Each load run also reports this process's
 * CPU per request (user + system µs), which a loaded machine disturbs far less than
 * requests/s. `--log info` gives the API a logger at info writing to /dev/null, to price
 * the per-request log line (default: warn, no request logs).
 *
 * Uses KAFKA_BROKERS and DATABASE_URL; its topic and schema are its own (the schema is dropped at the end).
 */
import { spawn } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { createProjectionReader, eventsChannel } from "@chatbus/consumer-runtime/materialiser";
import { createChatBus, uuidv7 } from "@chatbus/producer-sdk";
import type autocannon from "autocannon";
import Fastify from "fastify";
import pg from "pg";
import pino from "pino";
import { Registry } from "prom-client";
import { buildApp } from "../../api/src/build-app.ts";
import { configDefaults, validateConfig } from "../../api/src/config.ts";
import { createTestSchema, createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const { values } = parseArgs({
  options: {
    streams: { type: "string", default: "5000" },
    seconds: { type: "string", default: "8" },
    connections: { type: "string", default: "32" },
    log: { type: "string", default: "warn" },
  },
});
const STREAMS = Number(values.streams);
const SECONDS = Number(values.seconds);
const CONNECTIONS = Number(values.connections);
const PARTITIONS = 12;
const SEND_CONVERSATIONS = 200;
const HISTORY_MESSAGES = 2000;
const brokers = (process.env.KAFKA_BROKERS ?? "127.0.0.1:9092").split(",");

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;
const say = (text: string) => console.log(`bench/api: ${text}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 300_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

const logger = pino({ level: "warn" });
const [topic, schema] = await Promise.all([
  createTestTopic("bench_api", PARTITIONS),
  createTestSchema("bench_api"),
]);
/** The producer's metrics: how long each send waited for Kafka's acknowledgement. */
const busRegistry = new Registry();
const bus = await createChatBus({
  brokers,
  topic,
  partitions: PARTITIONS,
  ensureTopic: false,
  logger,
  registry: busRegistry,
});
/** Sum and count of `chatbus_send_duration_seconds` so far. */
async function sendDurations(): Promise<{ sum: number; count: number }> {
  const metric = await busRegistry.getSingleMetric("chatbus_send_duration_seconds")!.get();
  const value = (suffix: string) =>
    (metric.values as { metricName?: string; value: number }[]).find(
      (v) => v.metricName === `chatbus_send_duration_seconds_${suffix}`,
    )?.value ?? 0;
  return { sum: value("sum"), count: value("count") };
}
const materialiser = spawn(
  process.execPath,
  [
    ...process.execArgv.filter((arg) => !arg.startsWith("--cpu-prof")),
    join(import.meta.dirname, "materialiser-child.ts"),
    schema.url,
    topic,
    uniqueName("bench-api-mat"),
  ],
  { stdio: ["ignore", "pipe", "inherit"] },
);
await new Promise<void>((resolve, reject) => {
  materialiser.once("exit", (code) => reject(new Error(`the materialiser exited (${code})`)));
  createInterface({ input: materialiser.stdout! }).on("line", (line) => {
    if (line === "ready") resolve();
  });
});
/** The API's logger: `--log info` prices the request log line (written to /dev/null). */
const apiLogger =
  values.log === "warn" ? logger : pino({ level: values.log! }, pino.destination("/dev/null"));
const config = validateConfig({
  ...configDefaults,
  nodeEnv: "test",
  jwtSecret: "bench-secret-0123456789abcdef012345",
  operatorKey: "bench-operator-key-0123456789",
  serviceKeys: ["bench-service-key-0123456789"],
  topic,
  kafkaBrokers: brokers,
  databaseUrl: schema.url,
  sse: { ...configDefaults.sse, maxBufferedBytes: 4 * 1024 * 1024 },
  // Admit everything, but pay for the check: the limits' cost, not their refusals.
  rateLimits: {
    ...configDefaults.rateLimits,
    enabled: true,
    directMessagesPerSecond: 1e9,
    groupMessagesPerSecond: 1e9,
    userMessagesPerSecond: 1e9,
  },
});
const pool = new pg.Pool({ connectionString: schema.url, max: 20 });
/** The API as `main.ts` builds it, on the bench's pool, bus and projection. */
const appWith = (appConfig: typeof config) =>
  buildApp({
    config: appConfig,
    logger: apiLogger,
    registry: new Registry(),
    bus,
    pool,
    projection: createProjectionReader(pool),
    readiness: {},
    realtime: { pool, databaseUrl: schema.url, channel: eventsChannel(schema.schema) },
  });
const app = await appWith(config);
const apiUrl = await app.listen({ port: 3310, host: "127.0.0.1" });
const unlimitedApp = await appWith({ ...config, rateLimits: { ...config.rateLimits, enabled: false } });
const unlimitedUrl = await unlimitedApp.listen({ port: 3312, host: "127.0.0.1" });
const trivial = Fastify({ logger: false, bodyLimit: config.bodyLimitBytes });
trivial.post("/noop", async (request) => ({
  ok: true,
  echo: (request.body as { content?: unknown }).content,
}));
const trivialUrl = await trivial.listen({ port: 3311, host: "127.0.0.1" });

// Conversations for the send benchmark: `sender` is a member of each.
const sendConversations = Array.from({ length: SEND_CONVERSATIONS }, (_, i) => `bench-send-${i}`);
await bus.sendMany(
  sendConversations.map((conversationId) => ({
    conversationId,
    kind: "group" as const,
    event: {
      type: "chat.conversation.created" as const,
      kind: "group" as const,
      createdBy: "sender",
      members: ["sender", "reader"],
    },
  })),
);
// History: one conversation with HISTORY_MESSAGES messages.
const historyConversation = "bench-history";
await bus.send(
  historyConversation,
  { type: "chat.conversation.created", kind: "group", createdBy: "reader", members: ["reader"] },
  { kind: "group" },
);
for (let i = 0; i < HISTORY_MESSAGES; i += 500) {
  await bus.sendMany(
    Array.from({ length: Math.min(500, HISTORY_MESSAGES - i) }, (_, j) => ({
      conversationId: historyConversation,
      kind: "group" as const,
      event: {
        type: "chat.message.sent" as const,
        senderId: "reader",
        priority: "high" as const,
        content: { type: "text" as const, text: `history ${i + j} `.padEnd(200, "x") },
      },
    })),
  );
}
const projection = createProjectionReader(pool);
await waitFor("the send conversations and history", async () => {
  const [last, history] = await Promise.all([
    projection.isMember(sendConversations.at(-1)!, "sender"),
    projection.conversation(historyConversation),
  ]);
  return last && history?.lastSeq === HISTORY_MESSAGES;
});
const readerToken = app.jwt.sign({ sub: "reader" });

/** autocannon's result with this process's CPU per request (µs, user + system). */
type LoadResult = autocannon.Result & { cpuMicrosPerRequest: number };

/** One load run from a child process (`cannon.ts`); `paths` are used in turn, one per request. */
async function cannon(title: string, opts: autocannon.Options & { paths?: string[] }): Promise<LoadResult> {
  const options = JSON.stringify({ connections: CONNECTIONS, duration: SECONDS, ...opts });
  const child = spawn(
    process.execPath,
    [
      ...process.execArgv.filter((arg) => !arg.startsWith("--cpu-prof")),
      join(import.meta.dirname, "cannon.ts"),
      options,
    ],
    {
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  let output = "";
  child.stdout!.on("data", (chunk: Buffer) => {
    output += chunk;
  });
  // The child's start-up costs this process nothing, so counting from the spawn is fair.
  const acksBefore = await sendDurations();
  const cpuBefore = process.cpuUsage();
  const startedAt = process.hrtime.bigint() / 1000n;
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  const cpu = process.cpuUsage(cpuBefore);
  // Under --cpu-prof: the run's span on the profile's clock, to cut the profile by phase.
  if (process.execArgv.some((arg) => arg.startsWith("--cpu-prof"))) {
    say(`${title}: profile span ${startedAt}..${process.hrtime.bigint() / 1000n} µs`);
  }
  if (code !== 0) throw new Error(`the load generator exited with ${code}`);
  const result = JSON.parse(output) as autocannon.Result & { requests: { total: number } };
  const cpuMicrosPerRequest = (cpu.user + cpu.system) / Math.max(1, result.requests.total);
  const acks = await sendDurations();
  // A send's latency is mostly this wait when the API process is not busy (issue 16).
  const ackWait =
    acks.count > acksBefore.count
      ? `, Kafka ack wait mean ${(((acks.sum - acksBefore.sum) / (acks.count - acksBefore.count)) * 1000).toFixed(1)} ms`
      : "";
  say(
    `${title}: ${Math.round(result.requests.average)} req/s, p50 ${result.latency.p50} ms, p99 ${result.latency.p99} ms, non-2xx ${result.non2xx}, errors ${result.errors}, API process CPU ${cpuMicrosPerRequest.toFixed(0)} µs/request (${((cpu.user + cpu.system) / 10_000 / SECONDS).toFixed(0)} % of a core)${ackWait}`,
  );
  return { ...result, cpuMicrosPerRequest };
}

// High priority (past the rate limits) is for service keys only: send as a service for "sender".
const body = JSON.stringify({
  senderId: "sender",
  content: { type: "text", text: "hello from autocannon" },
  priority: "high",
});
say(`send: ${CONNECTIONS} connections, ${SECONDS} s each, ${SEND_CONVERSATIONS} conversations`);
const noop = await cannon("trivial fastify route", {
  url: `${trivialUrl}/noop`,
  method: "POST",
  headers: { "content-type": "application/json" },
  body,
});
const sendPaths = sendConversations.map((id) => `/v1/conversations/${id}/messages`);
const send = await cannon("POST /v1/conversations/:id/messages", {
  url: apiUrl,
  method: "POST",
  headers: { "content-type": "application/json", authorization: `Bearer ${config.serviceKeys[0]}` },
  body,
  paths: sendPaths,
});
const senderToken = app.jwt.sign({ sub: "sender" });
const memberBody = JSON.stringify({ content: { type: "text", text: "hello from autocannon" } });
const memberSend = (url: string) => ({
  url,
  method: "POST",
  headers: { "content-type": "application/json", authorization: `Bearer ${senderToken}` },
  body: memberBody,
  paths: sendPaths,
});
const limited = await cannon("member send, shared rate limits on", memberSend(apiUrl));
const unlimited = await cannon("member send, rate limits off", memberSend(unlimitedUrl));
const HISTORY_CONNECTIONS = 8; // latency, not saturation: fewer requests queue behind each other
const history = await cannon(`GET history (limit 50, ${HISTORY_CONNECTIONS} connections)`, {
  connections: HISTORY_CONNECTIONS,
  url: `${apiUrl}/v1/conversations/${historyConversation}/messages?limit=50`,
  headers: { authorization: `Bearer ${readerToken}` },
});
// The same 50 messages through a cursor, which the history cache never holds: every request reads PostgreSQL.
const historyCursor = await cannon(`GET history by cursor (limit 50, ${HISTORY_CONNECTIONS} connections)`, {
  connections: HISTORY_CONNECTIONS,
  url: `${apiUrl}/v1/conversations/${historyConversation}/messages?limit=50&before=${HISTORY_MESSAGES + 1}`,
  headers: { authorization: `Bearer ${readerToken}` },
});

// SSE fan-out: a group with STREAMS members, each with one open stream.
const group = "bench-fanout";
const members = Array.from({ length: STREAMS }, (_, i) => `fan-${i}`);
await bus.send(
  group,
  {
    type: "chat.conversation.created",
    kind: "group",
    createdBy: members[0]!,
    members: members.slice(0, 1000),
  },
  { kind: "group" },
);
for (let i = 1000; i < STREAMS; i += 1000) {
  await bus.sendMany(
    members.slice(i, i + 1000).map((userId) => ({
      conversationId: group,
      kind: "group" as const,
      event: { type: "chat.member.joined" as const, userId },
    })),
  );
}
await waitFor(
  "the fan-out group's members",
  async () => (await projection.members(group)).length === STREAMS,
);
const tokensFile = join(tmpdir(), `${uniqueName("bench-api-tokens")}.json`);
writeFileSync(tokensFile, JSON.stringify(members.map((sub) => app.jwt.sign({ sub }))));

gc();
await sleep(200);
gc();
const before = process.memoryUsage();
const child = spawn(
  process.execPath,
  [...process.execArgv, join(import.meta.dirname, "sse-clients.ts"), tokensFile, apiUrl],
  {
    stdio: ["pipe", "pipe", "inherit"],
  },
);
const lines = createInterface({ input: child.stdout! });
const nextLine = (prefix: string) =>
  new Promise<string>((resolve) => {
    const onLine = (line: string) => {
      if (line.startsWith(prefix)) {
        lines.off("line", onLine);
        resolve(line.slice(prefix.length));
      }
    };
    lines.on("line", onLine);
  });
const openStarted = Date.now();
const opened = Number(await nextLine("open "));
const openSeconds = (Date.now() - openStarted) / 1000;
await sleep(1000);
gc();
await sleep(200);
gc();
const after = process.memoryUsage();
const perStreamHeap = (after.heapUsed - before.heapUsed) / opened;
const perStreamRss = (after.rss - before.rss) / opened;
say(
  `opened ${opened} streams in ${openSeconds.toFixed(1)} s; per idle stream: heap ${(perStreamHeap / 1024).toFixed(1)} KiB, rss ${(perStreamRss / 1024).toFixed(1)} KiB`,
);

const ROUNDS = 3;
const received: number[] = [];
const rounds: string[] = [];
for (let round = 1; round <= ROUNDS; round++) {
  await sleep(2000);
  const marker = `fanout-${uuidv7()}`;
  child.stdin!.write(`watch ${marker}\n`);
  const gotLine = nextLine("got ");
  const sentAt = performance.timeOrigin + performance.now();
  const { eventId } = await bus.send(
    group,
    {
      type: "chat.message.sent",
      senderId: members[0]!,
      priority: "high",
      content: { type: "text", text: marker },
    },
    { kind: "group" },
  );
  const sendMs = performance.timeOrigin + performance.now() - sentAt;
  const timeout = setTimeout(() => child.stdin!.write("report\n"), 30_000);
  const times = (JSON.parse(await gotLine) as number[]).map((t) => t - sentAt).sort((a, b) => a - b);
  clearTimeout(timeout);
  const { rows } = await pool.query<{ ms: number }>(
    "SELECT extract(epoch FROM materialised_at - event_time) * 1000 AS ms FROM event_log WHERE event_id = $1",
    [eventId],
  );
  received.push(...times);
  const line = `round ${round}: ${times.length}/${opened} streams; send ${sendMs.toFixed(0)} ms, ce_time → materialised ${Number(rows[0]?.ms ?? Number.NaN).toFixed(0)} ms; send → stream p50 ${pct(times, 50).toFixed(0)} ms, p99 ${pct(times, 99).toFixed(0)} ms, last ${times.at(-1)!.toFixed(0)} ms`;
  rounds.push(line);
  say(`fan-out ${line}`);
}
received.sort((a, b) => a - b);

console.log(`
machine: ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB; load average at the end ${loadavg()
  .map((l) => l.toFixed(1))
  .join(" ")} (shared with other work)

| measurement | result |
|---|---|
| trivial fastify route (POST /noop, load from another process) | ${Math.round(noop.requests.average)} req/s, p99 ${noop.latency.p99} ms, ${noop.cpuMicrosPerRequest.toFixed(0)} µs CPU/request |
| send endpoint (auth + validation + membership + Kafka acks=all) | ${Math.round(send.requests.average)} req/s, p99 ${send.latency.p99} ms, non-2xx ${send.non2xx}, ${send.cpuMicrosPerRequest.toFixed(0)} µs CPU/request |
| send / trivial | ${((send.requests.average / noop.requests.average) * 100).toFixed(1)} % |
| member send (normal priority), shared rate limits on | ${Math.round(limited.requests.average)} req/s, p99 ${limited.latency.p99} ms, non-2xx ${limited.non2xx}, ${limited.cpuMicrosPerRequest.toFixed(0)} µs CPU/request |
| member send (normal priority), rate limits off | ${Math.round(unlimited.requests.average)} req/s, p99 ${unlimited.latency.p99} ms, non-2xx ${unlimited.non2xx}, ${unlimited.cpuMicrosPerRequest.toFixed(0)} µs CPU/request |
| history: newest page of 50 (${HISTORY_MESSAGES} messages, ${HISTORY_CONNECTIONS} connections; the history cache) | ${Math.round(history.requests.average)} req/s, p50 ${history.latency.p50} ms, p99 ${history.latency.p99} ms, non-2xx ${history.non2xx}, ${history.cpuMicrosPerRequest.toFixed(0)} µs CPU/request |
| history: the same page by cursor (\`before\`; never cached, read from PostgreSQL) | ${Math.round(historyCursor.requests.average)} req/s, p50 ${historyCursor.latency.p50} ms, p99 ${historyCursor.latency.p99} ms, non-2xx ${historyCursor.non2xx}, ${historyCursor.cpuMicrosPerRequest.toFixed(0)} µs CPU/request |
| SSE streams open on one process | ${opened} (opened in ${openSeconds.toFixed(1)} s) |
| memory per idle stream (API process) | heap ${(perStreamHeap / 1024).toFixed(1)} KiB, rss ${(perStreamRss / 1024).toFixed(1)} KiB |
| one message to a group of ${STREAMS}, ${ROUNDS} rounds: send → stream | p50 ${pct(received, 50).toFixed(0)} ms, p99 ${pct(received, 99).toFixed(0)} ms, last ${received.at(-1)!.toFixed(0)} ms (${received.length}/${opened * ROUNDS} deliveries) |
`);
for (const line of rounds) console.log(line);

child.kill();
rmSync(tokensFile, { force: true });
await app.close();
await unlimitedApp.close();
await trivial.close();
materialiser.kill("SIGTERM");
await new Promise((resolve) => materialiser.once("exit", resolve));
await bus.close();
await pool.end();
await schema.cleanup();
process.exit(0);
