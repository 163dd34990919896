/**
 * Realtime benchmark across processes (issue 18.5; not a timed test, run it on a quiet
 * machine): two real API processes (`api/src/main.ts`) behind nginx running the
 * shipped `deploy/nginx/chatbus.conf`, the materialiser in this process.
 *
 * 1. One group of N members (default 15,000); one SSE stream per member, opened
 *    through nginx by C child processes (default 2, `bench/api/sse-clients.ts`), so
 *    nginx spreads them over both API processes and no one client process is the limit.
 * 2. Streams held per process (`chatbus_sse_streams` of each) and memory per stream
 *    (each process's RSS before and after, from /proc).
 * 3. R rounds (default 3): one message to the group; time from `send` until every
 *    stream has it: p50, p99, last, over all streams of both processes; and per round
 *    the stages: send → materialiser transaction start, the transaction (until this
 *    run's own LISTEN sees its commit), commit → first stream, first → last stream,
 *    the API processes' mean transaction start → stream write (their
 *    `chatbus_sse_delivery_latency_seconds`) and each client process's event-loop
 *    delay (a late client shows there, not as server time).
 *
 *   npm run bench:realtime -- [--members 15000] [--rounds 3] [--clients 2] [--cpu-prof-dir DIR]
 *
 * Needs nginx (installed like the test packages), `ulimit -n` above members + 2,560
 * (each stream is a socket in the client process, two in one of nginx's two workers
 * and one in an API process: the client process and each worker hold the most), and
 * KAFKA_BROKERS / DATABASE_URL; its topic and schema are its own (dropped at the end).
 */
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { eventsChannel, startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { createChatBus, uuidv7 } from "@chatbus/producer-sdk";
import pg from "pg";
import pino from "pino";
import { Registry } from "prom-client";
import {
  type ApiProcess,
  clusterSecrets,
  freePort,
  startApiProcess,
  startBalancer,
} from "../../api/test/realtime-cluster.ts";
import { createTestSchema, createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const { values } = parseArgs({
  options: {
    members: { type: "string", default: "15000" },
    rounds: { type: "string", default: "3" },
    clients: { type: "string", default: "2" },
    "cpu-prof-dir": { type: "string" },
  },
});
const MEMBERS = Number(values.members);
const ROUNDS = Number(values.rounds);
const CLIENTS = Number(values.clients);
const PARTITIONS = 12;
const openFiles = Number(/^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"))?.[1]);
if (openFiles < MEMBERS + 2560) {
  console.error(
    `bench/realtime: ${MEMBERS} members need an open-file limit of at least ${MEMBERS + 2560}; this shell has ${openFiles} (raise it with ulimit -n)`,
  );
  process.exit(2);
}
const brokers = (process.env.KAFKA_BROKERS ?? "127.0.0.1:9092").split(",");
const say = (text: string) => console.log(`bench/realtime: ${text}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
const rssOf = (pid: number) =>
  Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? Number.NaN) * 1024;

/** An HS256 user token signed with the cluster's secret (what dev login would return). */
function token(sub: string): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, iat: now, exp: now + 3600 })}`;
  return `${body}.${createHmac("sha256", clusterSecrets.CHATBUS_JWT_SECRET).update(body).digest("base64url")}`;
}

async function streamsOf(p: ApiProcess): Promise<number> {
  const text = await (await fetch(`${p.url}/metrics`)).text();
  return Number(/^chatbus_sse_streams (\d+)/m.exec(text)?.[1] ?? Number.NaN);
}

const logger = pino({ level: "warn" });
const [topic, schema] = await Promise.all([
  createTestTopic("bench_rt", PARTITIONS),
  createTestSchema("bench_rt"),
]);
const bus = await createChatBus({
  brokers,
  topic,
  partitions: PARTITIONS,
  ensureTopic: false,
  logger,
  registry: new Registry(),
});
const materialiser = await startMaterialiser({
  pool: schema.pool,
  brokers,
  topic,
  groupId: uniqueName("bench-rt-mat"),
  logger,
});
const ports = [await freePort(), await freePort()];
const api: ApiProcess[] = [];
// Whatever happens, the API processes this run started do not outlive it.
process.on("exit", () => {
  for (const p of api) p.child.kill("SIGKILL");
});
for (const port of ports) {
  api.push(
    await startApiProcess({
      port,
      databaseUrl: schema.url,
      topic,
      brokers,
      env: { CHATBUS_PARTITIONS: String(PARTITIONS), LOG_LEVEL: "warn" },
      // Profiles of the API processes, written when they exit at the end of the run.
      nodeArgs: values["cpu-prof-dir"] ? ["--cpu-prof", `--cpu-prof-dir=${values["cpu-prof-dir"]}`] : [],
    }),
  );
}
// Two nginx workers: each holds about half the streams, two connections per stream.
const balancer = await startBalancer(ports, { workerProcesses: 2, workerConnections: MEMBERS + 2048 });
say(`API processes on ${ports.join(", ")}, nginx at ${balancer.url}`);

const group = "bench-realtime";
const members = Array.from({ length: MEMBERS }, (_, i) => `rt-${i}`);
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
for (let i = 1000; i < MEMBERS; i += 1000) {
  await bus.sendMany(
    members.slice(i, i + 1000).map((userId) => ({
      conversationId: group,
      kind: "group" as const,
      event: { type: "chat.member.joined" as const, userId },
    })),
  );
}
for (;;) {
  const { rows } = await schema.pool.query(
    "SELECT count(*)::int AS n FROM members WHERE conversation_id = $1",
    [group],
  );
  if (rows[0].n === MEMBERS) break;
  await sleep(500);
}
// Several client processes: one Node process for 15,000 streams on a busy machine
// measured its own event-loop delay, not the server's fan-out.
const tokens = members.map(token);
const rssBefore = api.map((p) => rssOf(p.child.pid!));
const perClient = Math.ceil(MEMBERS / CLIENTS);
const clients = Array.from({ length: CLIENTS }, (_, c) => {
  const file = join(tmpdir(), `${uniqueName("bench-rt-tokens")}.json`);
  writeFileSync(file, JSON.stringify(tokens.slice(c * perClient, (c + 1) * perClient)));
  const child = spawn(
    process.execPath,
    [...process.execArgv, join(import.meta.dirname, "..", "api", "sse-clients.ts"), file, balancer.url],
    { stdio: ["pipe", "pipe", "inherit"] },
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
  return { child, file, nextLine };
});
// The bench's own LISTEN: when a notification covering the message arrives, its transaction has committed.
const listener = new pg.Client({ connectionString: schema.url });
await listener.connect();
const notified: { partition: number; to: bigint; at: number }[] = [];
listener.on("notification", (message) => {
  const n = JSON.parse(message.payload ?? "{}") as { partition: number; to: string };
  notified.push({ partition: n.partition, to: BigInt(n.to), at: performance.timeOrigin + performance.now() });
});
await listener.query(`LISTEN "${eventsChannel(schema.schema)}"`);
/** Sum and count of `chatbus_sse_delivery_latency_seconds` (tx start → written) of a process. */
async function writeLatencyOf(p: ApiProcess): Promise<{ sum: number; count: number }> {
  const text = await (await fetch(`${p.url}/metrics`)).text();
  const read = (suffix: string) =>
    Number(
      new RegExp(`^chatbus_sse_delivery_latency_seconds_${suffix} (\\S+)`, "m").exec(text)?.[1] ?? Number.NaN,
    );
  return { sum: read("sum"), count: read("count") };
}
const openStarted = Date.now();
const opened = (await Promise.all(clients.map((c) => c.nextLine("open ")))).reduce(
  (n, line) => n + Number(line),
  0,
);
const openSeconds = (Date.now() - openStarted) / 1000;
await sleep(3000);
const held = await Promise.all(api.map(streamsOf));
const perStream = api.map((p, i) => (rssOf(p.child.pid!) - rssBefore[i]!) / Math.max(1, held[i]!));
say(
  `opened ${opened} streams in ${openSeconds.toFixed(1)} s; held per process ${held.join(" + ")}; RSS per stream ${perStream.map((b) => `${(b / 1024).toFixed(1)} KiB`).join(", ")}`,
);

const all: number[] = [];
const rounds: string[] = [];
for (let round = 1; round <= ROUNDS; round++) {
  await sleep(3000); // the previous round's delivered receipts settle first
  const marker = `rt-${uuidv7()}`;
  for (const c of clients) c.child.stdin!.write(`watch ${marker}\n`);
  const lagLines = Promise.all(clients.map((c) => c.nextLine("lag ")));
  const gotLines = Promise.all(clients.map((c) => c.nextLine("got ")));
  const writesBefore = await Promise.all(api.map(writeLatencyOf));
  const sentAt = performance.timeOrigin + performance.now();
  const { eventId, partition, offset } = await bus.send(
    group,
    {
      type: "chat.message.sent",
      senderId: members[0]!,
      priority: "high",
      content: { type: "text", text: marker },
    },
    { kind: "group" },
  );
  const timeout = setTimeout(() => {
    for (const c of clients) c.child.stdin!.write("report\n");
  }, 60_000);
  const received = (await gotLines).flatMap((line) => JSON.parse(line) as number[]);
  const times = received.map((t) => t - sentAt).sort((a, b) => a - b);
  clearTimeout(timeout);
  const lags = (await lagLines).map((line) => JSON.parse(line) as { p99: number; max: number });
  all.push(...times);
  const writesAfter = await Promise.all(api.map(writeLatencyOf));
  // Server side, per process: mean time from the transaction's start to the stream write.
  const serverWrite = writesAfter.map((a, i) => {
    const b = writesBefore[i]!;
    return ((a.sum - b.sum) / Math.max(1, a.count - b.count)) * 1000;
  });
  const committedAt = notified.find((n) => n.partition === partition && n.to >= BigInt(offset))?.at;
  // Where the time goes: until the materialiser's transaction for the message started
  // (materialised_at is its start), and the receipts the previous round left queued.
  const { rows } = await schema.pool.query<{ ms: number; receipts: number }>(
    `SELECT extract(epoch FROM l.materialised_at) * 1000 - $2::float8 AS ms,
            (SELECT count(*)::int FROM event_log r WHERE r.type = 'chat.receipt.delivered'
               AND r.materialised_at >= l.materialised_at - interval '10 seconds' AND r.materialised_at <= l.materialised_at) AS receipts
       FROM event_log l WHERE l.event_id = $1`,
    [eventId, sentAt],
  );
  const txStart = Number(rows[0]?.ms ?? Number.NaN);
  const commit = committedAt === undefined ? Number.NaN : committedAt - sentAt;
  const line = `round ${round}: send → materialiser transaction start ${txStart.toFixed(0)} ms (receipts applied in the 10 s before it: ${rows[0]?.receipts ?? "?"}); ${times.length}/${opened} streams; send → stream p50 ${pct(times, 50).toFixed(0)} ms, p99 ${pct(times, 99).toFixed(0)} ms, last ${times.at(-1)!.toFixed(0)} ms`;
  const stages = `round ${round} stages: send → tx start ${txStart.toFixed(0)} ms; tx (start → commit NOTIFY seen) ${(commit - txStart).toFixed(0)} ms; commit → first stream ${(times[0]! - commit).toFixed(0)} ms; first → last stream ${(times.at(-1)! - times[0]!).toFixed(0)} ms; server tx start → written, mean per process ${serverWrite.map((ms) => `${ms.toFixed(0)} ms`).join(", ")}; client event-loop delay p99/max per process ${lags.map((l) => `${l.p99}/${l.max} ms`).join(", ")}`;
  rounds.push(line, stages);
  say(line);
  say(stages);
}
all.sort((a, b) => a - b);

console.log(`
machine: ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB; load average at the end ${loadavg()
  .map((l) => l.toFixed(1))
  .join(" ")}

| two API processes behind nginx | result |
|---|---|
| streams opened through nginx | ${opened} in ${openSeconds.toFixed(1)} s |
| streams held per process | ${held.join(" + ")} |
| RSS per stream, per process | ${perStream.map((b) => `${(b / 1024).toFixed(1)} KiB`).join(", ")} |
| one message to ${MEMBERS} members, send → every stream | p50 ${pct(all, 50).toFixed(0)} ms, p99 ${pct(all, 99).toFixed(0)} ms, last ${all.at(-1)!.toFixed(0)} ms (${ROUNDS} rounds) |

${rounds.join("\n")}
`);

for (const c of clients) {
  c.child.kill();
  rmSync(c.file, { force: true });
}
await listener.end();
await balancer.stop();
for (const p of api) {
  p.child.kill("SIGTERM");
  await p.exited;
}
await materialiser.stop();
await bus.close();
await schema.cleanup();
