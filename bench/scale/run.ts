/**
 * Scale-out benchmark: events/s through one subscription with 1, 2 and 3 runtime
 * processes on this machine, for a no-op handler (CPU-bound) and a handler that
 * waits 5 ms (I/O-bound). Each run pre-produces the same backlog to a fresh
 * 12-partition topic and times from the first worker's start to the last event.
 *
 *   npx tsx --conditions=@chatbus/source bench/scale/run.ts [--events 30000]
 */
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureDatabase } from "../../consumer-runtime/src/database/migrate.ts";
import { produceNumbered, readHandled, startWorker } from "../../test/reliability/scale-cluster.ts";
import { kafkaBrokers } from "../../test/support/env.ts";
import { createTestSchema, createTestTopic, uniqueName } from "../../test/support/isolation.ts";

if (process.argv.includes("--help")) {
  console.log(
    "usage: bench/scale/run.ts [--events N]  (default 30000; needs Kafka at KAFKA_BROKERS and PostgreSQL at DATABASE_URL)",
  );
  process.exit(0);
}
const eventsArg = process.argv.indexOf("--events");
const events = eventsArg > 0 ? Number(process.argv[eventsArg + 1]) : 30_000;
const conversations = Array.from({ length: 600 }, (_, i) => `bench-${i}`);
const perConversation = Math.ceil(events / conversations.length);
const total = perConversation * conversations.length;

await ensureDatabase(process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/chatbus");
const schema = await createTestSchema("bench_scale");
const dir = mkdtempSync(join(tmpdir(), "chatbus-bench-scale-"));
const rows: { handler: string; processes: number; seconds: number; rate: number }[] = [];

try {
  for (const handlerMs of [0, 5]) {
    for (const processes of [1, 2, 3]) {
      const topic = await createTestTopic("bench_scale", 12);
      await produceNumbered(kafkaBrokers(), topic, conversations, 0, perConversation);
      const outFile = join(dir, `${handlerMs}-${processes}.txt`);
      const settings = {
        brokers: kafkaBrokers(),
        topic,
        group: uniqueName("bench"),
        databaseUrl: schema.url,
        outFile,
        handlerMs,
        concurrency: 32,
      };
      const started = Date.now();
      const workers: ChildProcess[] = await Promise.all(
        Array.from({ length: processes }, () => startWorker(settings)),
      );
      for (;;) {
        const done = new Set(readHandled(outFile).map((h) => `${h.conversation}:${h.n}`)).size;
        process.stderr.write(`\r  handler ${handlerMs} ms, ${processes} process(es): ${done}/${total}   `);
        if (done >= total) break;
        if (Date.now() - started > 300_000) throw new Error("a run took longer than 5 minutes");
        await new Promise((r) => setTimeout(r, 250));
      }
      const seconds = (Date.now() - started) / 1000;
      rows.push({
        handler: handlerMs === 0 ? "no-op" : `${handlerMs} ms wait`,
        processes,
        seconds,
        rate: total / seconds,
      });
      for (const w of workers) w.kill("SIGTERM");
      await Promise.all(workers.map((w) => new Promise((r) => w.once("exit", r))));
    }
  }
} finally {
  process.stderr.write("\n");
  rmSync(dir, { recursive: true, force: true });
  await schema.cleanup();
}

console.log(
  `\nScale-out: ${total} events, 12 partitions, 600 conversations, concurrency 32 per process (time includes joining the group)\n`,
);
console.log("| handler | processes | seconds | events/s | vs 1 process |");
console.log("| --- | ---: | ---: | ---: | ---: |");
for (const r of rows) {
  const base = rows.find((x) => x.handler === r.handler && x.processes === 1)!;
  console.log(
    `| ${r.handler} | ${r.processes} | ${r.seconds.toFixed(1)} | ${Math.round(r.rate)} | ${(r.rate / base.rate).toFixed(2)}x |`,
  );
}
