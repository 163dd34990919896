/**
 * End-to-end latency under load (`npm run bench:e2e`): the real runtime process
 * (materialiser) and the real API process run on a fresh topic and schema; this
 * driver sends `chat.message.sent` at a fixed rate through the SDK and measures,
 * from the moment `send` resolved:
 *   (a) row readable — the materialiser's NOTIFY for the record's offset arrives
 *       (it is sent after the commit, so the row is readable then);
 *   (b) delivered over SSE — a member's `GET /v1/me/events` stream yields the event.
 * The last column splits the p99 by when `send` resolved: in the first 5 s, while the
 * freshly started processes open connections and compile their hot paths, and after.
 *
 *   npm run bench:e2e -- [--rates 1000,10000] [--seconds 20]
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { eventsChannel } from "@chatbus/consumer-runtime/materialiser";
import { createChatBus } from "@chatbus/producer-sdk";
import pg from "pg";
import { ensureDatabase } from "../../consumer-runtime/src/database/migrate.ts";
import { databaseUrl, kafkaBrokers } from "../../test/support/env.ts";
import { createTestSchema, createTestTopic } from "../../test/support/isolation.ts";
import { machineCpuMs } from "../machine-cpu.ts";

const root = join(import.meta.dirname, "..", "..");
const args = process.argv.slice(2);
if (args.includes("--help")) {
  console.log(`usage: npm run bench:e2e -- [--rates 1000,10000] [--seconds 20]

Needs Kafka at KAFKA_BROKERS (default 127.0.0.1:9092) and PostgreSQL at DATABASE_URL.`);
  process.exit(0);
}
const arg = (name: string, fallback: string) =>
  args.includes(name) ? args[args.indexOf(name) + 1]! : fallback;
const rates = arg("--rates", "1000,10000").split(",").map(Number);
const seconds = Number(arg("--seconds", "20"));
const apiPort = 3591;
const coldMs = 5000;
const conversations = Array.from({ length: 200 }, (_, i) => `e2e-${i}`);

await ensureDatabase(databaseUrl());
const rows: string[] = [];
const children: ChildProcess[] = [];

function startProcess(entry: string, env: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@chatbus/source", join(root, entry)],
    {
      cwd: root,
      env: { ...process.env, LOG_LEVEL: "warn", ...env },
      stdio: ["ignore", "ignore", "inherit"],
    },
  );
  children.push(child);
  return child;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

try {
  for (const rate of rates) {
    const schema = await createTestSchema("bench_e2e");
    const topic = await createTestTopic("bench_e2e", 12);
    const env = { KAFKA_BROKERS: kafkaBrokers().join(","), DATABASE_URL: schema.url, CHATBUS_TOPIC: topic };
    startProcess("consumer-runtime/src/main.ts", { ...env, CHATBUS_METRICS_PORT: "19564" });
    startProcess("api/src/main.ts", {
      ...env,
      PORT: String(apiPort),
      NODE_ENV: "development",
      CHATBUS_DEV_LOGIN: "1",
    });
    const base = `http://127.0.0.1:${apiPort}`;
    for (let i = 0; ; i++) {
      if ((await fetch(`${base}/readyz`).catch(() => undefined))?.ok) break;
      if (i > 300) throw new Error("the API did not become ready within 60 s");
      await new Promise((r) => setTimeout(r, 200));
    }

    const bus = await createChatBus({ brokers: kafkaBrokers(), topic, rateLimit: { enabled: false } });
    for (const id of conversations) {
      await bus.send(id, {
        type: "chat.conversation.created",
        kind: "group",
        createdBy: "ana",
        members: ["ana", "bob"],
      });
    }

    // (a) row readable: NOTIFY after each commit names the partition and offset range.
    const resolvedAt = new Map<string, number>(); // eventId → when send resolved
    const byOffset = new Map<string, string>(); // "partition:offset" → eventId
    const readable: number[] = [];
    const delivered: number[] = [];
    // Split by when `send` resolved: in the first 5 s, when the stack is fresh (connections, JIT), or after.
    const cold = { readable: [] as number[], delivered: [] as number[] };
    const steady = { readable: [] as number[], delivered: [] as number[] };
    const arrivedAt = new Map<string, number>(); // eventId → when the SSE frame arrived
    const notified: { partition: number; from: bigint; to: bigint; at: number }[] = [];
    const listener = new pg.Client({ connectionString: schema.url });
    await listener.connect();
    listener.on("notification", (n) => {
      const { partition, from, to } = JSON.parse(n.payload!) as {
        partition: number;
        from: string;
        to: string;
      };
      notified.push({ partition, from: BigInt(from), to: BigInt(to), at: performance.now() });
    });
    await listener.query(`LISTEN "${eventsChannel(schema.schema)}"`);

    // (b) delivered over SSE to bob.
    const { token } = (await (
      await fetch(`${base}/v1/dev/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: '{"username":"bob"}',
      })
    ).json()) as { token: string };
    const abort = new AbortController();
    const frames = new Map<string, number>();
    let streamEnd = "open until the end";
    const sse = await fetch(`${base}/v1/me/events?access_token=${token}`, { signal: abort.signal });
    const sseDone = (async () => {
      const decoder = new TextDecoder();
      let buffer = "";
      for await (const chunk of sse.body!) {
        buffer += decoder.decode(chunk as Uint8Array, { stream: true });
        let end = buffer.indexOf("\n\n");
        while (end >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          end = buffer.indexOf("\n\n");
          const name = /^event: (.+)$/m.exec(frame)?.[1] ?? "(comment)";
          frames.set(name, (frames.get(name) ?? 0) + 1);
          const data = frame.split("\n").find((l) => l.startsWith("data: "));
          if (!frame.includes("event: chat.message.sent") || !data) continue;
          arrivedAt.set((JSON.parse(data.slice(6)) as { eventId: string }).eventId, performance.now());
        }
      }
      streamEnd = "closed by the server";
    })().catch((error: unknown) => {
      // An aborted or destroyed body throws: say which, instead of "open until the end".
      if (!abort.signal.aborted) streamEnd = `broken by the server (${String(error)})`;
    });

    // Fixed-rate open-loop sending: every 10 ms, send what is due.
    const started = performance.now();
    let sent = 0;
    const pending: Promise<void>[] = [];
    // The whole machine's CPU from the end of the first 5 s to the end of sending (this process included).
    let steadyFrom: { cpuMs: number; sent: number } | undefined;
    while (performance.now() - started < seconds * 1000) {
      if (!steadyFrom && performance.now() - started >= coldMs) steadyFrom = { cpuMs: machineCpuMs(), sent };
      const due = Math.floor(((performance.now() - started) / 1000) * rate);
      while (sent < due) {
        const id = conversations[sent % conversations.length]!;
        sent++;
        pending.push(
          bus
            .send(id, {
              type: "chat.message.sent",
              senderId: "ana",
              content: { type: "text", text: "x".repeat(1000) },
            })
            .then(
              (r) => {
                resolvedAt.set(r.eventId, performance.now());
                byOffset.set(`${r.partition}:${r.offset}`, r.eventId);
              },
              () => {},
            ),
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    const cpuMicrosPerEvent = steadyFrom
      ? ((machineCpuMs() - steadyFrom.cpuMs) * 1000) / (sent - steadyFrom.sent)
      : Number.NaN;
    await Promise.all(pending);
    const achieved = resolvedAt.size / ((performance.now() - started) / 1000);
    await new Promise((r) => setTimeout(r, 5000)); // let the tail arrive

    for (const n of notified) {
      for (let o = n.from; o <= n.to; o++) {
        const eventId = byOffset.get(`${n.partition}:${o}`);
        const at = eventId === undefined ? undefined : resolvedAt.get(eventId);
        // A NOTIFY may arrive before the driver saw `send` resolve: that is 0 ms, not negative.
        if (at === undefined) continue;
        readable.push(Math.max(0, n.at - at));
        (at - started < coldMs ? cold : steady).readable.push(Math.max(0, n.at - at));
      }
    }
    // Like a NOTIFY, a frame may arrive before the driver saw `send` resolve: 0 ms then.
    for (const [eventId, at] of arrivedAt) {
      const sentAt = resolvedAt.get(eventId);
      if (sentAt === undefined) continue;
      delivered.push(Math.max(0, at - sentAt));
      (sentAt - started < coldMs ? cold : steady).delivered.push(Math.max(0, at - sentAt));
    }
    // The API's own SSE counters say where frames went (written, or the stream cut off and why).
    const metrics = await (await fetch(`${base}/metrics`)).text();
    const sseMetrics = metrics
      .split("\n")
      .filter(
        (l) =>
          /^chatbus_sse_(events_delivered_total|disconnects_total|streams|catch_ups_total) /.test(l) ||
          /^chatbus_sse_disconnects_total\{/.test(l) ||
          /^chatbus_sse_catch_ups_total\{/.test(l),
      );
    abort.abort();
    await sseDone;
    await listener.end();
    await bus.close();
    for (const c of children.splice(0)) {
      c.kill("SIGTERM");
      await new Promise((r) => c.once("exit", r));
    }
    await schema.cleanup();

    const p99 = (samples: number[]) =>
      percentile(
        [...samples].sort((a, b) => a - b),
        99,
      ).toFixed(1);
    for (const [what, samples, key] of [
      ["row readable", readable, "readable"],
      ["delivered over SSE", delivered, "delivered"],
    ] as const) {
      const sorted = [...samples].sort((a, b) => a - b);
      rows.push(
        `| ${rate} | ${Math.round(achieved)} | ${what} | ${sorted.length} / ${resolvedAt.size} | ${percentile(sorted, 50).toFixed(1)} | ${percentile(sorted, 99).toFixed(1)} | ${percentile(sorted, 99.9).toFixed(1)} | ${p99(cold[key])} / ${p99(steady[key])} | ${cpuMicrosPerEvent.toFixed(0)} |`,
      );
    }
    process.stderr.write(
      `rate ${rate}: SSE stream ${streamEnd}; frames ${JSON.stringify(Object.fromEntries(frames))}\n  API: ${sseMetrics.join("; ")}\n`,
    );
  }
} finally {
  for (const c of children) c.kill("SIGKILL");
}

console.log(
  `\nEnd-to-end latency from send resolved, ${seconds} s per rate, 1 KiB text, ${conversations.length} conversations, one SSE client\n`,
);
console.log(
  `| target events/s | achieved events/s | to | measured | p50 ms | p99 ms | p99.9 ms | p99 ms, sent in the first ${coldMs / 1000} s / after | machine CPU µs/event after ${coldMs / 1000} s |`,
);
console.log("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const r of rows) console.log(r);
process.exit(0);
