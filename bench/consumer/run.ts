/**
 * Consumer runtime benchmark (not a test): events/s on one topic, side by side in one run.
 *
 * 1. No-op handler: chatbus `createRuntime` (decode, key queues, offset tracking,
 *    breaker, commits) versus a raw kafkajs `eachBatch` consumer that does nothing.
 * 2. A handler that waits 5 ms per event: chatbus with `concurrency` 64 versus raw
 *    kafkajs one-at-a-time per partition (`eachMessage`, partitionsConsumedConcurrently
 *    = partitions) and kafkajs's default (one partition at a time).
 *
 *   npx tsx --conditions=@chatbus/source bench/consumer/run.ts [--events 100000] [--seconds 10] [--only noop|runtime]
 *
 * `--only runtime` runs the chatbus no-op handler alone (twice); with `--profile <dir>`
 * each round is CPU-profiled (node:inspector) from the runtime's start to its stop, so
 * that producing the topic and the raw consumers are not in the profile:
 *   npx tsx bench/consumer/run.ts --only runtime --profile /tmp/prof
 *   npx tsx bench/producer/profile-top.ts /tmp/prof/runtime-1.cpuprofile
 * Without `--conditions=@chatbus/source` the packages load from their built dist/
 * (`npm run prepare` builds them): no esbuild `__name` wrappers, the code users run.
 *
 * `--only runtime --compare <dir>` runs another checkout's built runtime (e.g. main's,
 * `git archive main | tar -x -C /tmp/main && cd /tmp/main && npm ci`) in the same
 * process, alternating with this one round by round (`--rounds`, default 4 each) on
 * the same topic: on a loaded machine only such side-by-side numbers compare.
 *
 * Uses KAFKA_BROKERS (default 127.0.0.1:9092) and DATABASE_URL; makes its own topic and schema.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { Session } from "node:inspector/promises";
import { loadavg } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { createRuntime, type Runtime } from "@chatbus/consumer-runtime";
import { decodeRecord, encodeEvent } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import { pino } from "pino";
import { kafkaBrokers } from "../../test/support/env.ts";
import { createTestSchema, createTestTopic, uniqueName } from "../../test/support/isolation.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const { values } = parseArgs({
  options: {
    events: { type: "string", default: "100000" },
    seconds: { type: "string", default: "10" },
    partitions: { type: "string", default: "12" },
    only: { type: "string", default: "" },
    profile: { type: "string", default: "" },
    compare: { type: "string", default: "" },
    rounds: { type: "string", default: "4" },
  },
});
const events = Number(values.events);
const seconds = Number(values.seconds);
const partitions = Number(values.partitions);
const conversations = 1000;
const kafka = new Kafka({ clientId: "chatbus-bench", brokers: kafkaBrokers(), logLevel: logLevel.NOTHING });
const say = (line: string) => console.log(line);
/** Printed at start and end: on a shared machine only the ratios within one run hold. */
const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");

interface Result {
  name: string;
  handled: number;
  ms: number;
  cpuPerEvent: number;
}
const rate = (r: Result) => (r.handled / r.ms) * 1000;

async function produce(topic: string, count: number): Promise<void> {
  const producer = kafka.producer({ idempotent: true });
  await producer.connect();
  const started = Date.now();
  let batch = [];
  for (let i = 0; i < count; i++) {
    const { record } = encodeEvent(
      `bench-${i % conversations}`,
      { type: "chat.message.sent", senderId: "bench", content: { type: "text", text: `n:${i}` } },
      { source: "/bench" },
    );
    batch.push(record);
    if (batch.length === 2000 || i === count - 1) {
      await producer.send({ topic, acks: -1, messages: batch });
      batch = [];
    }
  }
  await producer.disconnect();
  say(`produced ${count} events to ${topic} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

/** Runs until `target` events or `limitMs`; the clock starts at the first event. */
async function measure(
  name: string,
  target: number,
  limitMs: number,
  start: (onEvent: () => void) => Promise<() => Promise<void>>,
): Promise<Result> {
  let handled = 0;
  let first = 0;
  let last = 0;
  // CPU time of this process from the first event to the end: on a shared machine
  // wall time mostly measures the neighbours, CPU per event much less so.
  let cpuAtFirst = process.cpuUsage();
  let resolve!: () => void;
  const done = new Promise<void>((r) => {
    resolve = r;
  });
  const stop = await start(() => {
    const now = Date.now();
    if (handled === 0) {
      first = now;
      cpuAtFirst = process.cpuUsage();
      setTimeout(resolve, limitMs);
    }
    handled++;
    last = now;
    if (handled >= target) resolve();
  });
  await done;
  const cpu = process.cpuUsage(cpuAtFirst);
  const cpuPerEvent = (cpu.user + cpu.system) / handled;
  const result = { name, handled, ms: Math.max(1, last - first), cpuPerEvent };
  await stop();
  say(
    `  ${name}: ${handled} events in ${(result.ms / 1000).toFixed(2)} s = ${rate(result).toFixed(0)} events/s, ${cpuPerEvent.toFixed(1)} µs CPU per event`,
  );
  return result;
}

function rawEachBatch(topic: string, decode = false) {
  return async (onEvent: () => void) => {
    const consumer = kafka.consumer({ groupId: uniqueName("bench-raw"), maxWaitTimeInMs: 1000 });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      partitionsConsumedConcurrently: partitions,
      eachBatch: async ({ batch }) => {
        for (const message of batch.messages) {
          if (decode && !decodeRecord(message).ok) throw new Error("undecodable record in the bench topic");
          onEvent();
        }
      },
    });
    return () => consumer.disconnect();
  };
}

function rawEachMessage(topic: string, waitMs: number, concurrentPartitions: number) {
  return async (onEvent: () => void) => {
    const consumer = kafka.consumer({ groupId: uniqueName("bench-raw-msg"), maxWaitTimeInMs: 1000 });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      partitionsConsumedConcurrently: concurrentPartitions,
      eachMessage: async () => {
        await new Promise((r) => setTimeout(r, waitMs));
        onEvent();
      },
    });
    return () => consumer.disconnect();
  };
}

function chatbus(
  topic: string,
  pool: import("pg").Pool,
  waitMs: number,
  concurrency: number,
  create: typeof createRuntime = createRuntime,
) {
  return async (onEvent: () => void) => {
    const runtime: Runtime = create({
      group: uniqueName("bench-chatbus"),
      topic,
      brokers: kafkaBrokers(),
      pool,
      logger: pino({ level: "warn" }),
      concurrency,
    });
    runtime.on("chat.message.sent", async () => {
      if (waitMs > 0) await new Promise((r) => setTimeout(r, waitMs));
      onEvent();
    });
    await runtime.start();
    return () => runtime.stop();
  };
}

/** Runs `task` under the V8 CPU profiler and writes the profile to `file`. */
async function profiled<T>(file: string, task: () => Promise<T>): Promise<T> {
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.start");
  try {
    return await task();
  } finally {
    const { profile } = await session.post("Profiler.stop");
    await mkdir(values.profile, { recursive: true });
    await writeFile(file, JSON.stringify(profile));
    session.disconnect();
    say(`  profile: ${file}`);
  }
}

/** `--compare`: this runtime and another checkout's, alternating, in one process on one topic. */
async function compareRuntimes(topic: string, pool: import("pg").Pool, limit: number): Promise<void> {
  const other = (await import(resolve(values.compare, "consumer-runtime/dist/index.js"))) as {
    createRuntime: typeof createRuntime;
  };
  const sides = [
    {
      name: `chatbus no-op handler (${values.compare})`,
      create: other.createRuntime,
      results: [] as Result[],
    },
    { name: "chatbus no-op handler (this checkout)", create: createRuntime, results: [] as Result[] },
  ];
  for (let round = 1; round <= Number(values.rounds); round++) {
    for (const side of round % 2 === 1 ? sides : [...sides].reverse()) {
      side.results.push(
        await measure(side.name, events, limit * 3, chatbus(topic, pool, 0, 64, side.create)),
      );
    }
  }
  const median = (list: number[]) => [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)]!;
  say("\n| runtime | events/s, best | median | CPU µs per event, best | median |");
  say("|---|---:|---:|---:|---:|");
  for (const side of sides) {
    const rates = side.results.map(rate);
    const cpu = side.results.map((r) => r.cpuPerEvent);
    say(
      `| ${side.name} | ${Math.max(...rates).toFixed(0)} | ${median(rates).toFixed(0)} | ${Math.min(...cpu).toFixed(1)} | ${median(cpu).toFixed(1)} |`,
    );
  }
}

async function main(): Promise<void> {
  say(`consumer bench: load average ${load()}`);
  const schema = await createTestSchema("bench_consumer");
  const topic = await createTestTopic("bench_consumer", partitions);
  try {
    await produce(topic, events);
    const limit = seconds * 1000;
    say(`\nno-op handler (${events} events, ${partitions} partitions, ${conversations} conversations):`);
    const noop: Result[] = [];
    if (values.only === "runtime" && values.compare) {
      await compareRuntimes(topic, schema.pool, limit);
      return;
    }
    if (values.only === "runtime") {
      for (let round = 1; round <= 2; round++) {
        const run = () =>
          measure("chatbus no-op handler", events, limit * 3, chatbus(topic, schema.pool, 0, 64));
        noop.push(
          values.profile
            ? await profiled(join(values.profile, `runtime-${round}.cpuprofile`), run)
            : await run(),
        );
      }
      return;
    }
    for (let round = 0; round < 2; round++) {
      noop.push(await measure("raw kafkajs eachBatch", events, limit * 3, rawEachBatch(topic)));
      noop.push(
        await measure("raw kafkajs eachBatch + decodeRecord", events, limit * 3, rawEachBatch(topic, true)),
      );
      noop.push(
        await measure("chatbus no-op handler", events, limit * 3, chatbus(topic, schema.pool, 0, 64)),
      );
    }
    if (values.only === "noop") {
      for (const r of noop) say(`| ${r.name} | ${rate(r).toFixed(0)} |`);
      return;
    }
    say(`\n5 ms handler (time-boxed to ${seconds} s each):`);
    const slow = [
      await measure("chatbus concurrency 64", events, limit, chatbus(topic, schema.pool, 5, 64)),
      await measure("chatbus concurrency 256", events, limit, chatbus(topic, schema.pool, 5, 256)),
      await measure(
        `kafkajs one at a time per partition (${partitions} partitions in parallel)`,
        events,
        limit,
        rawEachMessage(topic, 5, partitions),
      ),
      await measure(
        "kafkajs default eachMessage (one at a time)",
        events,
        limit,
        rawEachMessage(topic, 5, 1),
      ),
    ];

    const best = (name: string) => Math.max(...noop.filter((r) => r.name === name).map(rate));
    const raw = best("raw kafkajs eachBatch");
    const ours = best("chatbus no-op handler");
    const decoded = best("raw kafkajs eachBatch + decodeRecord");
    const perPartition = rate(slow[2]!);
    say("\n| scenario | events/s | vs baseline |");
    say("|---|---:|---:|");
    say(`| raw kafkajs eachBatch, no-op (best of 2) | ${raw.toFixed(0)} | baseline |`);
    say(
      `| raw kafkajs eachBatch + the SDK's decodeRecord, no-op (best of 2) | ${decoded.toFixed(0)} | ${((decoded / raw) * 100).toFixed(0)}% of raw |`,
    );
    say(
      `| chatbus, no-op handler (best of 2) | ${ours.toFixed(0)} | ${((ours / raw) * 100).toFixed(0)}% of raw, ${((ours / decoded) * 100).toFixed(0)}% of raw + decode |`,
    );
    say(`| 5 ms handler: kafkajs one at a time per partition | ${perPartition.toFixed(0)} | baseline |`);
    say(
      `| 5 ms handler: kafkajs default (one at a time) | ${rate(slow[3]!).toFixed(0)} | ${(rate(slow[3]!) / perPartition).toFixed(2)}x |`,
    );
    say(
      `| 5 ms handler: chatbus concurrency 64 | ${rate(slow[0]!).toFixed(0)} | ${(rate(slow[0]!) / perPartition).toFixed(1)}x |`,
    );
    say(
      `| 5 ms handler: chatbus concurrency 256 | ${rate(slow[1]!).toFixed(0)} | ${(rate(slow[1]!) / perPartition).toFixed(1)}x |`,
    );
  } finally {
    say(`\nload average at the end: ${load()}`);
    await schema.cleanup();
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteTopics({ topics: [topic, `${topic}.dlq`] }).catch(() => {});
    await admin.disconnect();
  }
}

await main();
