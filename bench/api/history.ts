/**
 * The history page alone (issue 16, "history page" row): `GET
 * /v1/conversations/:id/messages?limit=50` over real PostgreSQL, without Kafka. The
 * projection is written by SQL (one group, 2,000 messages of 200-character texts, as
 * `run.ts` has them), and the API is built as `main.ts` builds it (realtime on, so the
 * membership cache is live). Per round:
 *
 * 1. CPU µs per page of this process (the API: routes, auth, pg's parsing of rows), by
 *    `inject`, 8 at a time: no sockets, so it moves less with the machine's load;
 * 2. pages/s, p50 and p99 over a socket from autocannon in a child process
 *    (`cannon.ts`), 8 connections, and this process's CPU µs per page meanwhile.
 *
 * With PostgreSQL on this machine, each also reports the CPU µs per page of the pool's
 * server processes (from /proc): on a small machine they share its cores with the API.
 *
 *   npx tsx --conditions=@chatbus/source bench/api/history.ts [--rounds 3] [--seconds 5] [--log warn] [--before 2001]
 *
 * `--before SEQ` asks for the page below SEQ instead of the newest (2001: the same 50
 * messages), which the history cache never holds: every page is read from PostgreSQL.
 *
 * Uses DATABASE_URL; its schema is its own (dropped at the end).
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createProjectionReader, eventsChannel } from "@chatbus/consumer-runtime/materialiser";
import type autocannon from "autocannon";
import pino from "pino";
import { Registry } from "prom-client";
import { buildApp } from "../../api/src/build-app.ts";
import { configDefaults, validateConfig } from "../../api/src/config.ts";
import { createTestSchema } from "../../test/support/isolation.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "5" },
    requests: { type: "string", default: "4000" },
    log: { type: "string", default: "warn" },
    // A page by cursor (`before`), which the history cache never holds: read from PostgreSQL every time.
    before: { type: "string" },
  },
});
const ROUNDS = Number(values.rounds);
const SECONDS = Number(values.seconds);
const REQUESTS = Number(values.requests);
const CONNECTIONS = 8;
const MESSAGES = 2000;
const conversation = "bench-history";

const schema = await createTestSchema("bench_hist");
try {
  await schema.pool.query(
    `INSERT INTO conversations (conversation_id, kind, title, created_by, created_at, created_event_id, partition, last_seq, last_message_at, last_activity_at)
     VALUES ($1, 'group', null, 'reader', now(), 'bench-created', 0, $2, now(), now())`,
    [conversation, MESSAGES],
  );
  // The reader sent every message; two others have read part of it (receipts to compute).
  await schema.pool.query(
    `INSERT INTO members (conversation_id, user_id, role, joined_at, joined_offset, last_delivered_seq, last_read_seq)
     VALUES ($1, 'reader', 'owner', now(), 0, 0, 0), ($1, 'other-1', 'member', now(), 0, $2, 1990),
            ($1, 'other-2', 'member', now(), 0, 1995, 1980)`,
    [conversation, MESSAGES],
  );
  await schema.pool.query(
    `INSERT INTO messages (conversation_id, seq, event_id, sender_id, content, priority, sent_at, materialised_at, partition, "offset")
     SELECT $1, s, '0193a0b2-7c1d-7abc-8def-' || lpad(s::text, 12, '0'), 'reader',
            jsonb_build_object('type', 'text', 'text', rpad('history ' || s || ' ', 200, 'x')),
            'high', now(), now(), 0, s
       FROM generate_series(1, $2::int) s`,
    [conversation, MESSAGES],
  );
  await schema.pool.query("ANALYZE");

  const config = validateConfig({
    ...configDefaults,
    nodeEnv: "test",
    jwtSecret: "bench-secret-0123456789abcdef012345",
    operatorKey: "bench-operator-key-0123456789",
    serviceKeys: ["bench-service-key-0123456789"],
    topic: "bench-history-unused",
    kafkaBrokers: ["127.0.0.1:9092"],
    databaseUrl: schema.url,
  });
  const logger = pino({ level: values.log! }, pino.destination("/dev/null"));
  const app = await buildApp({
    config,
    logger,
    registry: new Registry(),
    bus: { send: async () => ({ eventId: "", partition: 0, offset: "0" }) } as never,
    pool: schema.pool,
    projection: createProjectionReader(schema.pool),
    readiness: {},
    writeLimiter: { admit: async () => {}, close: () => {} },
    realtime: { pool: schema.pool, databaseUrl: schema.url, channel: eventsChannel(schema.schema) },
  });
  const url = await app.listen({ port: 3320, host: "127.0.0.1" });
  const token = app.jwt.sign({ sub: "reader" });
  const path = `/v1/conversations/${conversation}/messages?limit=50${values.before === undefined ? "" : `&before=${values.before}`}`;

  const first = await app.inject({ method: "GET", url: path, headers: { authorization: `Bearer ${token}` } });
  if (first.statusCode !== 200) throw new Error(`history answered ${first.statusCode}: ${first.body}`);
  console.log(`page of ${first.body.length} bytes`);

  // The pool's server processes: all its connections at once, each asked for its pid.
  const clients = await Promise.all(
    Array.from({ length: schema.pool.options.max }, () => schema.pool.connect()),
  );
  const backends = await Promise.all(
    clients.map(async (c) => (await c.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid),
  );
  for (const c of clients) c.release();
  /**
   * CPU µs of those server processes so far; NaN when PostgreSQL is not on this machine.
   * A process gone (the pool closes idle connections) counts what it had used.
   */
  const lastSeen = new Map<number, number>();
  const serverMicros = () =>
    backends.reduce((sum, pid) => {
      try {
        // Fields 14 and 15 (utime, stime) in clock ticks, after the parenthesised name.
        const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
        lastSeen.set(pid, ((Number(fields[11]) + Number(fields[12])) * 1e6) / 100);
      } catch {}
      return sum + (lastSeen.get(pid) ?? Number.NaN);
    }, 0);

  /** CPU µs per page over REQUESTS injected pages, CONNECTIONS at a time: this process's, the server's. */
  async function injected(): Promise<{ api: number; server: number }> {
    const server = serverMicros();
    const before = process.cpuUsage();
    for (let i = 0; i < REQUESTS; i += CONNECTIONS) {
      const answers = await Promise.all(
        Array.from({ length: CONNECTIONS }, () =>
          app.inject({ method: "GET", url: path, headers: { authorization: `Bearer ${token}` } }),
        ),
      );
      if (answers.some((a) => a.statusCode !== 200)) throw new Error("a page was not 200");
    }
    const cpu = process.cpuUsage(before);
    return { api: (cpu.user + cpu.system) / REQUESTS, server: (serverMicros() - server) / REQUESTS };
  }

  /** One autocannon run from a child process, with this process's CPU µs per page meanwhile. */
  async function socket(): Promise<{ rps: number; p50: number; p99: number; cpu: number; server: number }> {
    const options = JSON.stringify({
      connections: CONNECTIONS,
      duration: SECONDS,
      url: `${url}${path}`,
      headers: { authorization: `Bearer ${token}` },
    });
    const server = serverMicros();
    const before = process.cpuUsage();
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
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
    });
    await new Promise((resolve) => child.once("exit", resolve));
    const cpu = process.cpuUsage(before);
    const result = JSON.parse(output) as autocannon.Result & { requests: { total: number } };
    if (result.non2xx > 0) throw new Error(`${result.non2xx} pages were not 2xx`);
    return {
      rps: result.requests.average,
      p50: result.latency.p50,
      p99: result.latency.p99,
      cpu: (cpu.user + cpu.system) / result.requests.total,
      server: (serverMicros() - server) / result.requests.total,
    };
  }

  await injected(); // warm-up: JIT, pool connections, the membership cache
  for (let round = 1; round <= ROUNDS; round++) {
    const cpu = await injected();
    const s = await socket();
    console.log(
      `round ${round}: inject ${cpu.api.toFixed(0)} µs CPU/page (PostgreSQL ${cpu.server.toFixed(0)}) | socket ${Math.round(s.rps)} pages/s, p50 ${s.p50} ms, p99 ${s.p99} ms, ${s.cpu.toFixed(0)} µs CPU/page (PostgreSQL ${s.server.toFixed(0)}) | load ${loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}`,
    );
  }
  await app.close();
} finally {
  await schema.cleanup();
}
