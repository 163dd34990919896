/**
 * CPU per event of the materialiser's apply path alone (decode, load, evolve, write),
 * without Kafka: the same records as run.ts (1 KiB text messages over 1,000
 * conversations, 12 partitions) applied in partition batches through `applyIsolated`
 * on one connection. Reports the CPU time of this process and of its PostgreSQL backend
 * (from /proc, so PostgreSQL must run on this machine) per event: on a shared machine
 * these are steadier than wall-clock rates. `--profile FILE` writes a CPU profile of the
 * measured part only (not the set-up):
 *
 *   npx tsx --conditions=@chatbus/source bench/materialiser/apply-cpu.ts \
 *     [--events 30000] [--batch 500] [--profile /tmp/apply.cpuprofile] [--setup-sql "DROP INDEX …"] [--explain]
 */
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { parseArgs } from "node:util";
import { encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import type { KafkaMessage } from "kafkajs";
import pg from "pg";
import { migrate } from "../../consumer-runtime/src/database/migrate.ts";
import { applyIsolated } from "../../consumer-runtime/src/materialiser/apply-isolated.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const { values } = parseArgs({
  options: {
    events: { type: "string", default: "30000" },
    batch: { type: "string", default: "500" },
    profile: { type: "string" },
    // SQL run in the bench's schema after the migrations (A/B of an index or a setting).
    "setup-sql": { type: "string" },
    // Runs each measured write as EXPLAIN (ANALYZE, WAL) and sums time and WAL per table
    // write: where PostgreSQL's share goes (EXPLAIN's timing inflates the totals).
    explain: { type: "boolean", default: false },
  },
});
const EVENTS = Number(values.events);
const BATCH = Number(values.batch);
const CONVERSATIONS = 1000;
const PARTITIONS = 12;
const baseUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/chatbus";
const schema = `bench_cpu_${Date.now().toString(36)}_${randomBytes(3).toString("hex")}`;
const url = new URL(baseUrl);
url.searchParams.set("options", `-c search_path=${schema}`);

/** utime + stime of a process in ms (clock ticks of 10 ms). */
const processCpuMs = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
};

// As kafkajs hands them over: Buffers, ascending offsets per partition.
const byPartition: KafkaMessage[][] = Array.from({ length: PARTITIONS }, () => []);
const add = (conversation: number, record: ReturnType<typeof encodeEvent>["record"]) => {
  const list = byPartition[conversation % PARTITIONS]!;
  const headers: Record<string, Buffer> = {};
  for (const [name, value] of Object.entries(record.headers ?? {}))
    headers[name] = Buffer.from(String(value));
  list.push({
    key: Buffer.from(String(record.key)),
    value: Buffer.from(String(record.value)),
    headers,
    offset: String(list.length),
    timestamp: String(Date.now()),
    attributes: 0,
  });
};
for (let i = 0; i < CONVERSATIONS; i++)
  add(
    i,
    encodeEvent(
      `bench-${i}`,
      { type: "chat.conversation.created", kind: "group", createdBy: "u0", members: ["u0", "u1", "u2"] },
      { source: "/bench" },
    ).record,
  );
for (let j = 0; j < EVENTS; j++) {
  const text = `message ${j} `.padEnd(1024, "lorem ipsum dolor sit amet ");
  add(
    j % CONVERSATIONS,
    encodeEvent(
      `bench-${j % CONVERSATIONS}`,
      { type: "chat.message.sent", senderId: `u${j % 3}`, content: { type: "text", text } },
      { source: "/bench", id: uuidv7(), time: new Date() },
    ).record,
  );
}

interface PlanNode {
  "Node Type": string;
  Operation?: string;
  "Relation Name"?: string;
  "Actual Total Time": number;
  "Actual Loops": number;
  "Actual Rows": number;
  "WAL Bytes"?: number;
  Plans?: PlanNode[];
}

/** Adds each table write (ModifyTable) of `node`'s tree: inclusive and own time, WAL bytes. */
function sumPlan(
  node: PlanNode,
  into: Map<string, { ms: number; selfMs: number; walBytes: number; rows: number }>,
): void {
  for (const child of node.Plans ?? []) sumPlan(child, into);
  if (node["Node Type"] !== "ModifyTable") return;
  const ms = node["Actual Total Time"] * node["Actual Loops"];
  const children = (node.Plans ?? []).reduce((t, c) => t + c["Actual Total Time"] * c["Actual Loops"], 0);
  const key = `${node.Operation} ${node["Relation Name"]}`;
  const entry = into.get(key) ?? { ms: 0, selfMs: 0, walBytes: 0, rows: 0 };
  entry.ms += ms;
  entry.selfMs += ms - children;
  entry.walBytes += node["WAL Bytes"] ?? 0;
  // A ModifyTable without RETURNING returns no rows: count what its input produced.
  entry.rows += (node.Plans ?? []).reduce((t, c) => t + c["Actual Rows"] * c["Actual Loops"], 0);
  into.set(key, entry);
}

const admin = new pg.Client({ connectionString: baseUrl });
await admin.connect();
await admin.query(`CREATE SCHEMA "${schema}"`);
const pool = new pg.Pool({ connectionString: url.toString(), max: 1 });
try {
  await migrate(pool);
  if (values["setup-sql"]) await pool.query(values["setup-sql"]);
  const backend = (await pool.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
  // Counts the statements and the backend's CPU per statement (load or write) on the one connection.
  let statements = 0;
  let explaining = false;
  const explained = new Map<string, { ms: number; selfMs: number; walBytes: number; rows: number }>();
  let executionMs = 0;
  const serverByStatement: Record<string, number> = { load: 0, write: 0, other: 0 };
  const client = await pool.connect();
  const query = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
  (client as unknown as { query: unknown }).query = async (...args: unknown[]) => {
    statements++;
    const name = (args[0] as { name?: string }).name;
    const kind = name === "chatbus_materialiser_load" ? "load" : name ? "write" : "other";
    if (explaining && kind === "write") {
      const { text, values } = args[0] as { text: string; values: unknown[] };
      const plan = (await query(`EXPLAIN (ANALYZE, WAL, BUFFERS, FORMAT JSON) ${text}`, values)) as {
        rows: { "QUERY PLAN": [{ Plan: PlanNode; "Execution Time": number }] }[];
      };
      const top = plan.rows[0]!["QUERY PLAN"][0];
      executionMs += top["Execution Time"];
      sumPlan(top.Plan, explained);
      return { rowCount: 1, rows: [{}] };
    }
    const before = processCpuMs(backend);
    const result = await query(...args);
    serverByStatement[kind]! += processCpuMs(backend) - before;
    return result;
  };
  client.release();
  const apply = async (partition: number, records: KafkaMessage[]) => {
    const result = await applyIsolated(
      pool,
      { topic: "bench", partition, schema, subscription: "materialiser" },
      records,
      {
        running: () => true,
        heartbeat: async () => {},
        onFailure: () => {},
        retryInitialMs: 10,
        retryMaxMs: 100,
      },
    );
    if (result === null || result.handled !== records.length) throw new Error("a batch was not applied");
  };
  // The conversations first (not measured), then the messages in partition batches.
  const first = byPartition.map((list) => list.filter((r) => r.value!.toString().includes("created")).length);
  for (let p = 0; p < PARTITIONS; p++) await apply(p, byPartition[p]!.slice(0, first[p]));
  statements = 0;
  for (const kind of Object.keys(serverByStatement)) serverByStatement[kind] = 0;
  let batches = 0;
  const session = new Session();
  if (values.profile) {
    session.connect();
    await session.post("Profiler.enable");
    await session.post("Profiler.start");
  }
  explaining = values.explain;
  const cpu = process.cpuUsage();
  const server = processCpuMs(backend);
  const started = performance.now();
  for (let p = 0; p < PARTITIONS; p++)
    for (let i = first[p]!; i < byPartition[p]!.length; i += BATCH) {
      await apply(p, byPartition[p]!.slice(i, i + BATCH));
      batches++;
    }
  const wall = performance.now() - started;
  const used = process.cpuUsage(cpu);
  const serverMs = processCpuMs(backend) - server;
  if (values.profile) {
    const { profile } = await session.post("Profiler.stop");
    writeFileSync(values.profile, JSON.stringify(profile));
    session.disconnect();
  }
  const us = (ms: number) => ((ms * 1000) / EVENTS).toFixed(1);
  if (values.explain) {
    console.log(`EXPLAIN ANALYZE of the writes: execution ${us(executionMs)} µs/event`);
    for (const [node, v] of [...explained].sort((a, b) => b[1].ms - a[1].ms))
      console.log(
        `  ${node}: ${us(v.ms)} µs/event incl., ${us(v.selfMs)} self, WAL ${(v.walBytes / EVENTS).toFixed(0)} B/event, ${v.rows} rows`,
      );
  }
  console.log(
    [
      `${EVENTS} events in ${batches} batches of ≤ ${BATCH}: ${statements} statements (${(statements / batches).toFixed(1)} per batch)`,
      `node CPU: ${us((used.user + used.system) / 1000)} µs/event (user ${us(used.user / 1000)}, system ${us(used.system / 1000)})`,
      `PostgreSQL backend CPU: ${us(serverMs)} µs/event (load ${us(serverByStatement.load!)}, write ${us(serverByStatement.write!)}, other ${us(serverByStatement.other!)})`,
      `wall: ${us(wall)} µs/event (${Math.round(EVENTS / (wall / 1000))} events/s, one connection)`,
    ].join("\n"),
  );
} finally {
  await pool.end();
  await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await admin.end();
}
