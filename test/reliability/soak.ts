/**
 * `npm run soak`: a bounded run at a steady send rate with faults injected on a
 * schedule — a handler failing for a while, a Kafka broker restart, a PostgreSQL
 * restart, and the runtime process killed with SIGKILL — then checks that every
 * acknowledged event was handled (or dead-lettered), none twice in the projection,
 * conversation order kept, and memory flat after warm-up. Prints a summary table and
 * writes it to docs/reliability.md.
 *
 *   npm run soak -- [--minutes 10] [--rate 200] [--no-write]
 *
 * It runs its own broker (port 29592) and its own PostgreSQL cluster (port 55499), so
 * that it can restart both; nothing else is touched.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createChatBus } from "@chatbus/producer-sdk";
import pg from "pg";
import { migrate } from "../../consumer-runtime/src/database/migrate.ts";
import { killBroker, restartBroker, startKafka, stopKafka } from "../../scripts/kafka.ts";
import { uniqueName } from "../support/isolation.ts";
import { createThrowawayPostgres } from "../support/throwaway-postgres.ts";

const root = join(import.meta.dirname, "..", "..");
const args = process.argv.slice(2);
if (args.includes("--help")) {
  console.log(`usage: npm run soak -- [--minutes N] [--rate N] [--no-write]

  --minutes N   length of the sending phase (default 10)
  --rate N      events per second sent (default 200)
  --no-write    do not update docs/reliability.md

Exit code 0 when every check passed, 1 otherwise.`);
  process.exit(0);
}
const option = (name: string, fallback: number) => {
  const i = args.indexOf(name);
  const value = i >= 0 ? Number(args[i + 1]) : fallback;
  if (!Number.isFinite(value) || value <= 0) {
    console.error(`${name} must be a positive number; got ${args[i + 1]}`);
    process.exit(2);
  }
  return value;
};
const minutes = option("--minutes", 10);
const rate = option("--rate", 200);
const durationMs = minutes * 60_000;
const kafkaPort = 29_592;
const brokers = [`127.0.0.1:${kafkaPort}`];
const say = (message: string) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${message}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const dir = mkdtempSync(join(tmpdir(), "chatbus-soak-"));
const outFile = join(dir, "audit.txt");
const failFlag = join(dir, "fail");
const topic = uniqueName("soak");
const conversations = Array.from({ length: 200 }, (_, i) => `soak-${i}`);

say(`soak: ${minutes} min at ${rate} events/s over ${conversations.length} conversations`);
const kafka = await startKafka(kafkaPort);
const postgres = createThrowawayPostgres(55_499);
const databaseUrl = postgres.url;
const pool = new pg.Pool({ connectionString: databaseUrl });
// The soak restarts this server: idle connections die with it, which is expected here.
pool.on("error", () => {});
await migrate(pool);
const bus = await createChatBus({
  brokers,
  topic,
  partitions: 12,
  rateLimit: { enabled: false },
  sendTimeoutMs: 30_000,
});

let worker: ChildProcess | undefined;
const memory: { at: number; pid: number; rssMiB: number }[] = [];
let restarts = 0;
/** Worker exits the soak did not cause: each is a defect, and the worker is started again. */
const crashes: string[] = [];
let finishing = false;

function startWorker(): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@chatbus/source", join(root, "test", "reliability", "soak-worker.ts")],
    {
      cwd: root,
      env: {
        ...process.env,
        KAFKA_BROKERS: brokers.join(","),
        TOPIC: topic,
        DATABASE_URL: databaseUrl,
        OUT_FILE: outFile,
        FAIL_FLAG: failFlag,
        MATERIALISER_GROUP: `${topic}-materialiser`,
        AUDIT_GROUP: `${topic}-audit`,
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  return new Promise((resolve, reject) => {
    child.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("started")) resolve(child);
    });
    child.once("exit", (code, signal) => {
      if (child !== worker)
        return reject(new Error(`the soak worker exited (${signal ?? code}) before it started`));
      if (signal === "SIGKILL" || finishing) return;
      crashes.push(`exit ${signal ?? code} at ${new Date().toISOString().slice(11, 19)}`);
      say(`the runtime process exited unexpectedly (${signal ?? code}); starting it again`);
      startWorker().then((next) => {
        worker = next;
      }, reject);
    });
  });
}

function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

const faults: { at: number; name: string; run: () => Promise<void> }[] = [
  {
    at: 0.15,
    name: "handler fails for 10% of the run",
    run: async () => {
      writeFileSync(failFlag, "");
      await sleep(durationMs * 0.1);
      rmSync(failFlag);
    },
  },
  {
    at: 0.35,
    name: "Kafka broker killed and restarted",
    run: async () => {
      killBroker(kafkaPort);
      await sleep(5_000);
      await restartBroker(kafkaPort);
    },
  },
  {
    at: 0.55,
    name: "PostgreSQL restarted (fast shutdown, 5 s down)",
    run: async () => {
      postgres.stop("fast");
      await sleep(5_000);
      postgres.start();
    },
  },
  {
    at: 0.75,
    name: "runtime process killed with SIGKILL and started again",
    run: async () => {
      worker!.kill("SIGKILL");
      await sleep(2_000);
      worker = await startWorker();
      restarts++;
    },
  },
];

const acknowledged = new Map<string, string[]>(conversations.map((c) => [c, []]));
let rejected = 0;
const faultLog: string[] = [];
let exitCode = 0;
try {
  worker = await startWorker();
  for (const id of conversations) {
    await bus.send(id, {
      type: "chat.conversation.created",
      kind: "group",
      createdBy: "soak",
      members: ["soak"],
    });
  }
  const started = Date.now();
  const firstPid = worker.pid!;
  const sampler = setInterval(() => {
    for (const pid of [process.pid, worker?.pid]) {
      if (pid && existsSync(`/proc/${pid}`))
        memory.push({ at: Date.now() - started, pid, rssMiB: rssMiB(pid) });
    }
  }, 5_000);
  const pending = faults.map((f) =>
    sleep(f.at * durationMs).then(async () => {
      say(`fault: ${f.name}`);
      const t = Date.now();
      await f.run();
      faultLog.push(
        `${f.name} (at ${Math.round((f.at * durationMs) / 1000)} s, ${((Date.now() - t) / 1000).toFixed(0)} s)`,
      );
    }),
  );

  // Steady rate: each tick sends one message per conversation slot due, each conversation sequential.
  const counters = new Map(conversations.map((c) => [c, 0]));
  const busy = new Set<string>();
  let next = 0;
  while (Date.now() - started < durationMs) {
    const due = Math.floor(((Date.now() - started) / 1000) * rate);
    while (next < due) {
      const id = conversations[next % conversations.length]!;
      next++;
      if (busy.has(id)) continue; // that conversation's previous send is still in flight
      busy.add(id);
      const n = counters.get(id)!;
      counters.set(id, n + 1);
      bus
        .send(id, { type: "chat.message.sent", senderId: "soak", content: { type: "text", text: String(n) } })
        .then(
          (r) => acknowledged.get(id)!.push(r.eventId),
          () => rejected++,
        )
        .finally(() => busy.delete(id));
    }
    await sleep(20);
  }
  await Promise.all(pending);
  say("sending stopped; waiting for the runtime to drain");
  await bus.close();
  const allIds = [...acknowledged.values()].flat();

  const drainDeadline = Date.now() + 300_000;
  let materialised = 0;
  let audited = new Set<string>();
  for (;;) {
    const { rows } = await pool
      .query<{ n: string }>("SELECT count(*) AS n FROM messages WHERE event_id = ANY($1::text[])", [allIds])
      .catch(() => ({ rows: [{ n: "0" }] }));
    materialised = Number(rows[0]!.n);
    const lines = existsSync(outFile) ? readFileSync(outFile, "utf8").split("\n").filter(Boolean) : [];
    audited = new Set(lines.map((l) => l.split(" ")[1]!));
    if (materialised === allIds.length && allIds.every((id) => audited.has(id))) break;
    if (Date.now() > drainDeadline) break;
    await sleep(1000);
  }
  clearInterval(sampler);

  const { rows: seqProblems } = await pool.query<{ conversation_id: string }>(
    "SELECT conversation_id FROM messages GROUP BY conversation_id HAVING max(seq) <> count(*) OR count(DISTINCT seq) <> count(*)",
  );
  const { rows: orderRows } = await pool.query<{ conversation_id: string; text: string }>(
    "SELECT conversation_id, content->>'text' AS text FROM messages ORDER BY conversation_id, seq",
  );
  let outOfOrder = 0;
  const last = new Map<string, number>();
  for (const r of orderRows) {
    const n = Number(r.text);
    if (n <= (last.get(r.conversation_id) ?? -1)) outOfOrder++;
    last.set(r.conversation_id, n);
  }
  const { rows: dl } = await pool.query<{ n: string }>("SELECT count(*) AS n FROM dead_letters");
  const auditLines = readFileSync(outFile, "utf8").split("\n").filter(Boolean).length;

  // Memory: after warm-up (20% of the run) until the kill, first vs last quarter of samples.
  const window = memory.filter(
    (m) => m.pid === firstPid && m.at > durationMs * 0.2 && m.at < durationMs * 0.75,
  );
  const self = memory.filter((m) => m.pid === process.pid && m.at > durationMs * 0.2);
  const growth = (samples: typeof memory) => {
    if (samples.length < 8) return { from: 0, to: 0, pct: 0 };
    const q = Math.floor(samples.length / 4);
    const avg = (s: typeof memory) => s.reduce((a, b) => a + b.rssMiB, 0) / s.length;
    const from = avg(samples.slice(0, q));
    const to = avg(samples.slice(-q));
    return { from, to, pct: ((to - from) / from) * 100 };
  };
  const workerMem = growth(window);
  const producerMem = growth(self);

  const checks = [
    {
      check: "every acknowledged send materialised",
      ok: materialised === allIds.length,
      value: `${materialised} / ${allIds.length}`,
    },
    {
      check: "every acknowledged send handled by the audit subscription",
      ok: allIds.every((id) => audited.has(id)),
      value: `${allIds.filter((id) => audited.has(id)).length} / ${allIds.length} (${auditLines - audited.size} redeliveries)`,
    },
    {
      check: "sequence numbers 1..n, no gap or duplicate",
      ok: seqProblems.length === 0,
      value: `${seqProblems.length} conversations wrong`,
    },
    {
      check: "per-conversation order kept in the projection",
      ok: outOfOrder === 0,
      value: `${outOfOrder} out of order`,
    },
    {
      check: "no runtime process exit the soak did not cause",
      ok: crashes.length === 0,
      value: crashes.join(", ") || "none",
    },
    {
      check: "nothing dead-lettered (all failures were system failures)",
      ok: Number(dl[0]!.n) === 0,
      value: dl[0]!.n,
    },
    {
      check: "runtime memory flat after warm-up (< 25% growth)",
      ok: workerMem.pct < 25,
      value: `${workerMem.from.toFixed(0)} → ${workerMem.to.toFixed(0)} MiB (${workerMem.pct.toFixed(1)}%)`,
    },
    {
      check: "producer memory flat after warm-up (< 25% growth)",
      ok: producerMem.pct < 25,
      value: `${producerMem.from.toFixed(0)} → ${producerMem.to.toFixed(0)} MiB (${producerMem.pct.toFixed(1)}%)`,
    },
  ];
  exitCode = checks.every((c) => c.ok) ? 0 : 1;
  const table = [
    `Soak of ${minutes} min at ${rate} events/s, ${conversations.length} conversations, 12 partitions, on 2 cores / 24 GiB; ${new Date().toISOString().slice(0, 16)}Z.`,
    `Command: \`npm run soak -- --minutes ${minutes} --rate ${rate}\`.`,
    "",
    `Sent: ${allIds.length} acknowledged, ${rejected} rejected and reported to the caller. Runtime restarts: ${restarts}.`,
    "",
    "Faults injected:",
    ...faultLog.map((f) => `- ${f}`),
    "",
    "| check | result | value |",
    "| --- | --- | --- |",
    ...checks.map((c) => `| ${c.check} | ${c.ok ? "pass" : "FAIL"} | ${c.value} |`),
  ].join("\n");
  console.log(`\n${table}\n`);
  if (!args.includes("--no-write")) {
    const file = join(root, "docs", "reliability.md");
    const text = existsSync(file) ? readFileSync(file, "utf8") : "# Reliability\n";
    const marker = "## Latest soak";
    const before = text.includes(marker) ? text.slice(0, text.indexOf(marker)) : `${text.trimEnd()}\n\n`;
    const afterStart = text.indexOf("\n## ", text.indexOf(marker) + 1);
    const after = text.includes(marker) && afterStart > 0 ? text.slice(afterStart) : "\n";
    writeFileSync(file, `${before}${marker}\n\n${table}\n${after}`);
    say(`wrote ${file}`);
  }
} catch (error) {
  console.error(`soak failed: ${(error as Error).message}`);
  exitCode = 1;
} finally {
  finishing = true;
  worker?.kill("SIGKILL");
  await pool.end().catch(() => {});
  postgres.destroy();
  if (kafka.started) await stopKafka(kafkaPort);
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);
