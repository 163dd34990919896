/**
 * What the API's own code costs per request (issue 16), without sockets, Kafka or
 * PostgreSQL: the whole app (`buildApp`) with its collaborators stubbed to answer at
 * once, driven through `inject` 64 requests at a time. Side by side in one process:
 * a trivial route, the send (service key and member), and a history page of 50, each
 * with the API's logger at warn (no request logs) and at info (the access-log line,
 * written to /dev/null). Reports CPU µs per request (user + system), in rounds.
 *
 *   npx tsx --conditions=@chatbus/source bench/api/per-request.ts [--requests 20000] [--rounds 3]
 *
 * `bench/api/run.ts` measures the same routes over real sockets, Kafka and PostgreSQL.
 */
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import type { HistoryMessage, ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import Fastify from "fastify";
import pino from "pino";
import { Registry } from "prom-client";
import { buildApp } from "../../api/src/build-app.ts";
import { configDefaults, validateConfig } from "../../api/src/config.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const { values } = parseArgs({
  options: { requests: { type: "string", default: "20000" }, rounds: { type: "string", default: "3" } },
});
const REQUESTS = Number(values.requests);
const ROUNDS = Number(values.rounds);
const CONCURRENCY = 64;

const config = validateConfig({
  ...configDefaults,
  nodeEnv: "test",
  jwtSecret: "bench-secret-0123456789abcdef012345",
  operatorKey: "bench-operator-key-0123456789",
  serviceKeys: ["bench-service-key-0123456789"],
  topic: "bench",
  kafkaBrokers: ["127.0.0.1:9092"],
  databaseUrl: "postgres://127.0.0.1/unused",
});
const sentAt = new Date().toISOString();
/** A page of 50 messages like the socket bench's history (200-character texts), as PostgreSQL writes them. */
const page: HistoryMessage[] = Array.from({ length: 50 }, (_, i) => ({
  seq: i + 1,
  senderId: "reader",
  json: JSON.stringify({
    id: `0193a0b2-7c1d-7abc-8def-${String(i).padStart(12, "0")}`,
    seq: i + 1,
    senderId: "reader",
    clientMsgId: null,
    content: { text: `history ${i} `.padEnd(200, "x"), type: "text" },
    priority: "high",
    sentAt,
    editedAt: null,
    editCount: 0,
    recalledAt: null,
    recalledBy: null,
  }),
}));
const projection = {
  isMember: async () => true,
  conversation: async () => ({ kind: "group" }),
  historyPage: async () => ({
    messages: page,
    positions: [{ userId: "reader", lastDeliveredSeq: 50, lastReadSeq: 50 }],
  }),
} as unknown as ProjectionReader;
const receipt = { eventId: "0193a0b2-7c1d-7abc-8def-0123456789ab", partition: 3, offset: "12345" };

/** The app with every collaborator answering at once; its logger at `level`, to /dev/null. */
async function appAt(level: string) {
  const app = await buildApp({
    config,
    logger: pino({ level }, pino.destination("/dev/null")),
    registry: new Registry(),
    bus: { send: async () => receipt },
    pool: {} as never,
    projection,
    readiness: {},
    writeLimiter: { admit: async () => {}, close: () => {} },
  });
  await app.ready();
  return app;
}
const apps = { warn: await appAt("warn"), info: await appAt("info") };
const trivial = Fastify({ logger: false });
trivial.post("/noop", async (request) => ({
  ok: true,
  echo: (request.body as { content?: unknown }).content,
}));
await trivial.ready();

const token = apps.warn.jwt.sign({ sub: "sender" });
const body = JSON.stringify({ content: { type: "text", text: "hello from autocannon" } });
const json = { "content-type": "application/json" };
type Inject = (i: number) => Promise<{ statusCode: number }>;
const routes: [string, (app: typeof apps.warn) => Inject][] = [
  [
    "send (service key)",
    (app) => (i) =>
      app.inject({
        method: "POST",
        url: `/v1/conversations/bench-send-${i % 200}/messages`,
        headers: { ...json, authorization: `Bearer ${config.serviceKeys[0]}` },
        payload: JSON.stringify({
          senderId: "sender",
          content: { type: "text", text: "hello" },
          priority: "high",
        }),
      }),
  ],
  [
    "member send",
    (app) => (i) =>
      app.inject({
        method: "POST",
        url: `/v1/conversations/bench-send-${i % 200}/messages`,
        headers: { ...json, authorization: `Bearer ${token}` },
        payload: body,
      }),
  ],
  [
    "history page of 50",
    (app) => () =>
      app.inject({
        method: "GET",
        url: "/v1/conversations/bench-history/messages?limit=50",
        headers: { authorization: `Bearer ${token}` },
      }),
  ],
];

/** CPU µs per request of `requests` calls, CONCURRENCY at a time; every answer must be `status`. */
async function measure(call: Inject, status: number): Promise<number> {
  const before = process.cpuUsage();
  for (let i = 0; i < REQUESTS; i += CONCURRENCY) {
    const answers = await Promise.all(Array.from({ length: CONCURRENCY }, (_, j) => call(i + j)));
    const wrong = answers.find((a) => a.statusCode !== status);
    if (wrong) throw new Error(`expected ${status}, got ${wrong.statusCode}`);
  }
  const cpu = process.cpuUsage(before);
  return (cpu.user + cpu.system) / (Math.ceil(REQUESTS / CONCURRENCY) * CONCURRENCY);
}

const noop: Inject = () => trivial.inject({ method: "POST", url: "/noop", headers: json, payload: body });
await measure(noop, 200); // warm-up: JIT and caches
const results = new Map<string, number[]>();
const record = (name: string, micros: number) => results.set(name, [...(results.get(name) ?? []), micros]);
for (let round = 1; round <= ROUNDS; round++) {
  record("trivial fastify route", await measure(noop, 200));
  for (const [name, route] of routes) {
    for (const [level, app] of Object.entries(apps)) {
      record(`${name}, log ${level}`, await measure(route(app), name.startsWith("history") ? 200 : 202));
    }
  }
}
console.log(
  `\nload average ${loadavg()
    .map((l) => l.toFixed(1))
    .join(" ")} (shared machine)\n`,
);
console.log("| route (inject, collaborators stubbed) | CPU µs/request per round | × trivial (best) |");
console.log("|---|---|---:|");
const best = (name: string) => Math.min(...results.get(name)!);
for (const [name, micros] of results) {
  console.log(
    `| ${name} | ${micros.map((m) => m.toFixed(0)).join(", ")} | ${(best(name) / best("trivial fastify route")).toFixed(1)} |`,
  );
}
await Promise.all([apps.warn.close(), apps.info.close(), trivial.close()]);
