/**
 * Producer benchmark: the chatbus SDK next to raw clients on the same broker, in one run.
 *
 *   npx tsx --conditions=@chatbus/source bench/producer/run.ts
 *
 * Rows, all with acks=all and an idempotent producer, 1 KiB chat.message.sent events:
 * - chatbus SDK (kafkajs) and chatbus SDK (platformatic): CONCURRENCY callers, each
 *   awaiting `bus.send` in a loop (validation, encoding, rate limiter off, batching
 *   with its default linger), on each producer backend.
 * - raw kafkajs: the same records (JSON, UUIDv7, CloudEvents headers built per event,
 *   no validation) in hand-made `send` batches of the SDK's batch size (kafkajs has no
 *   linger), one request in flight as idempotence requires.
 * - raw kafkajs, pre-encoded: the same, with records built once up front: kafkajs alone.
 * - raw @platformatic/kafka: the same records and batches through its Producer
 *   (installed on first use, see scripts/platformatic-kafka.ts).
 * - kafka-producer-perf-test (Java, org.apache.kafka.tools.ProducerPerformance): the
 *   ceiling of this machine; 1 KiB random values, no key or headers, linger.ms=2.
 * Node rows run in interleaved rounds so that load from elsewhere hits them alike.
 * Then p50/p99 at a fixed 5,000 events/s for each (raw clients batch what is due
 * while a request is in flight).
 *
 * Env: BENCH_EVENTS (default 60000), BENCH_CONCURRENCY (1000), BENCH_ROUNDS (3),
 * BENCH_RATE (5000), BENCH_RATE_SECONDS (5), BENCH_ONLY (comma-separated name parts),
 * KAFKA_BROKERS (127.0.0.1:9092).
 */
import { spawn } from "node:child_process";
import { cpus, loadavg, totalmem } from "node:os";
import { createChatBus, type EncodedRecord, uuidv7 } from "@chatbus/producer-sdk";
import { Kafka, logLevel, Partitioners } from "kafkajs";
import { installKafka } from "../../scripts/kafka.ts";
import { linkPlatformatic, loadPlatformatic } from "../../scripts/platformatic-kafka.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const brokers = (process.env.KAFKA_BROKERS ?? "127.0.0.1:9092").split(",");
const events = Number(process.env.BENCH_EVENTS ?? 60_000);
const concurrency = Number(process.env.BENCH_CONCURRENCY ?? 1000);
const rate = Number(process.env.BENCH_RATE ?? 5000);
const rateSeconds = Number(process.env.BENCH_RATE_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const batchSize = Math.min(concurrency, 1000); // what the SDK gathers under this load (maxBatchSize 1000)
const conversations = 2000;
/** Runs only the columns whose name contains BENCH_ONLY. */
const only = process.env.BENCH_ONLY;
const text = "x".repeat(1024 - 60); // value ≈ 1 KiB with senderId and content wrapper

/** Topics this run made; deleted at the end. */
const created: string[] = [];
const kafka = new Kafka({ clientId: "chatbus-bench", brokers, logLevel: logLevel.NOTHING });

interface Result {
  eventsPerSecond: number;
  p50: number;
  p99: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function summarise(latencies: number[], count: number, seconds: number): Result {
  const sorted = Float64Array.from(latencies).sort();
  return { eventsPerSecond: count / seconds, p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

async function freshTopic(name: string): Promise<string> {
  const topic = `bench_producer_${name}_${Date.now().toString(36)}`;
  created.push(topic);
  const admin = kafka.admin();
  await admin.connect();
  try {
    await admin.createTopics({
      topics: [{ topic, numPartitions: 12, replicationFactor: 1 }],
      waitForLeaders: false,
    });
    // A busy broker can take a while to elect leaders: poll rather than trust one try.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const metadata = await admin.fetchTopicMetadata({ topics: [topic] }).catch(() => undefined);
      const partitions = metadata?.topics[0]?.partitions ?? [];
      if (partitions.length === 12 && partitions.every((p) => p.leader >= 0)) return topic;
      if (Date.now() > deadline) throw new Error(`topic ${topic} has no leaders after 60 s`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await admin.disconnect();
  }
}

async function deleteTopics(topics: string[]): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  await admin.deleteTopics({ topics }).catch(() => {});
  await admin.disconnect();
}

const eventFor = (i: number) => ({
  type: "chat.message.sent" as const,
  senderId: `user-${i % 97}`,
  content: { type: "text" as const, text },
});

/**
 * What a raw client must do per event to write the same record: JSON, a UUIDv7 and
 * the CloudEvents headers (but no validation, rate limiting or batching).
 */
function rawRecord(i: number): EncodedRecord {
  const { type, ...data } = eventFor(i);
  return {
    key: `conv-${i % conversations}`,
    value: Buffer.from(JSON.stringify(data)),
    headers: {
      ce_specversion: "1.0",
      ce_id: uuidv7(),
      ce_type: type,
      ce_source: "/bench",
      ce_time: new Date().toISOString(),
      ce_dataschema: "urn:chatbus:chat.message.sent:v1",
      "content-type": "application/json",
    },
  };
}

/** The same records built once, for the "pre-encoded" row (kafkajs's own cost only). */
const pool: EncodedRecord[] = Array.from({ length: 4096 }, (_, i) => rawRecord(i));

/** Calls `tick(due)` about every millisecond with how many events are due at `rate`/s. */
async function pace(tick: (from: number, to: number) => void): Promise<number> {
  const total = rate * rateSeconds;
  const started = performance.now();
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate));
    if (due > sent) tick(sent, due);
    sent = due;
    await new Promise((r) => setTimeout(r, 1));
  }
  return started;
}

/** Sends at `rate` events/s for `rateSeconds`, each event through `sendOne`. */
async function paced(sendOne: (i: number) => Promise<unknown>): Promise<Result> {
  const latencies: number[] = [];
  const inFlight: Promise<unknown>[] = [];
  let failures = 0;
  let firstFailure: unknown;
  const started = await pace((from, to) => {
    for (let i = from; i < to; i++) {
      const t0 = performance.now();
      inFlight.push(
        sendOne(i).then(
          () => latencies.push(performance.now() - t0),
          (error: unknown) => {
            failures++;
            firstFailure ??= error;
          },
        ),
      );
    }
  });
  await Promise.all(inFlight);
  if (failures > 0)
    throw new Error(`${failures} sends failed at the fixed rate; the first: ${String(firstFailure)}`);
  return summarise(latencies, rate * rateSeconds, (performance.now() - started) / 1000);
}

/**
 * The same rate through hand-made batches: what is due while a request is in
 * flight goes out in the next one (one request in flight, as idempotence requires).
 */
async function pacedBatches(sendBatch: (indexes: number[]) => Promise<unknown>): Promise<Result> {
  const latencies: number[] = [];
  let waiting: { i: number; t0: number }[] = [];
  let inFlight: Promise<void> | undefined;
  const pump = () => {
    if (inFlight || waiting.length === 0) return;
    const batch = waiting;
    waiting = [];
    inFlight = sendBatch(batch.map((w) => w.i)).then(() => {
      const now = performance.now();
      for (const w of batch) latencies.push(now - w.t0);
      inFlight = undefined;
      pump();
    });
  };
  const started = await pace((from, to) => {
    const t0 = performance.now();
    for (let i = from; i < to; i++) waiting.push({ i, t0 });
    pump();
  });
  while (inFlight || waiting.length > 0) await (inFlight ?? new Promise((r) => setTimeout(r, 1)));
  return summarise(latencies, rate * rateSeconds, (performance.now() - started) / 1000);
}

/** Raw measurements of one run, merged across rounds. */
interface Sample {
  count: number;
  seconds: number;
  latencies: number[];
}

/** A client under test: throughput runs (interleaved with the others) and a fixed-rate run. */
interface Contender {
  name: string;
  throughput(count: number): Promise<Sample>;
  paced(): Promise<Result>;
  close(): Promise<void>;
}

/** Sends `count` records in sequential hand-made batches of `batchSize` through `sendBatch`. */
async function batches(
  count: number,
  sendBatch: (from: number, size: number) => Promise<unknown>,
): Promise<Sample> {
  const latencies: number[] = [];
  const started = performance.now();
  for (let sent = 0; sent < count; sent += batchSize) {
    const size = Math.min(batchSize, count - sent);
    const t0 = performance.now();
    await sendBatch(sent, size);
    const latency = performance.now() - t0;
    for (let j = 0; j < size; j++) latencies.push(latency);
  }
  return { count, seconds: (performance.now() - started) / 1000, latencies };
}

async function sdkContender(producer: "kafkajs" | "platformatic"): Promise<Contender> {
  // The SDK imports @platformatic/kafka by name: link the cached install into node_modules.
  if (producer === "platformatic") linkPlatformatic();
  const topic = await freshTopic(`sdk_${producer}`);
  const bus = await createChatBus({
    brokers,
    topic,
    rateLimit: { enabled: false },
    source: "/bench",
    producer,
  });
  return {
    name: `chatbus SDK (${producer})`,
    async throughput(count) {
      const latencies: number[] = [];
      let next = 0;
      const started = performance.now();
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < count) {
            const i = next++;
            const t0 = performance.now();
            await bus.send(`conv-${i % conversations}`, eventFor(i));
            latencies.push(performance.now() - t0);
          }
        }),
      );
      return { count, seconds: (performance.now() - started) / 1000, latencies };
    },
    paced: () => paced((i) => bus.send(`conv-${i % conversations}`, eventFor(i))),
    close: () => bus.close(),
  };
}

async function kafkajsContender(preEncoded: boolean): Promise<Contender> {
  const topic = await freshTopic("kafkajs");
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner,
  });
  await producer.connect();
  const record = preEncoded ? (i: number) => pool[i % pool.length]! : rawRecord;
  const send = (messages: EncodedRecord[]) => producer.send({ topic, acks: -1, messages });
  return {
    name: preEncoded ? "raw kafkajs, pre-encoded records" : "raw kafkajs, hand-made batches",
    throughput: (count) =>
      batches(count, (from, size) => send(Array.from({ length: size }, (_, j) => record(from + j)))),
    paced: () => pacedBatches((indexes) => send(indexes.map(record))),
    close: () => producer.disconnect(),
  };
}

async function platformaticContender(): Promise<Contender> {
  const { Producer, ProduceAcks, stringSerializers } = await loadPlatformatic();
  const topic = await freshTopic("platformatic");
  const producer = new Producer({
    clientId: "chatbus-bench-platformatic",
    bootstrapBrokers: brokers,
    idempotent: true,
    acks: ProduceAcks.ALL,
    serializers: stringSerializers,
  });
  const message = (i: number) => {
    const r = rawRecord(i);
    return { topic, key: r.key, value: r.value.toString(), headers: r.headers };
  };
  return {
    name: "raw @platformatic/kafka, hand-made batches",
    throughput: (count) =>
      batches(count, (from, size) =>
        producer.send({ messages: Array.from({ length: size }, (_, j) => message(from + j)) }),
      ),
    paced: () => pacedBatches((indexes) => producer.send({ messages: indexes.map(message) })),
    close: () => producer.close(),
  };
}

/** Runs Kafka's ProducerPerformance tool; parses its summary line. */
async function perfTest(topic: string, records: number, throughput: number): Promise<Result> {
  const classpath = installKafka();
  const args = [
    "-Xmx512m",
    "-Dlog4j.configuration=file:/dev/null",
    "-cp",
    classpath,
    "org.apache.kafka.tools.ProducerPerformance",
    "--topic",
    topic,
    "--num-records",
    String(records),
    "--record-size",
    "1024",
    "--throughput",
    String(throughput),
    "--producer-props",
    `bootstrap.servers=${brokers.join(",")}`,
    "acks=all",
    "enable.idempotence=true",
    "linger.ms=2",
    "batch.size=131072",
  ];
  const output = await new Promise<string>((resolve, reject) => {
    const child = spawn("java", args, { stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    child.stdout.on("data", (d: Buffer) => {
      text += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      text += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) =>
      code === 0
        ? resolve(text)
        : reject(new Error(`ProducerPerformance exited ${code}: ${text.slice(-500)}`)),
    );
  });
  const summary = output
    .trim()
    .split("\n")
    .reverse()
    .find((l) => l.includes("records sent") && l.includes("50th"));
  const match = /([\d.]+) records\/sec.*?(\d+) ms 50th.*?(\d+) ms 99th/.exec(summary ?? "");
  if (!match) throw new Error(`could not parse ProducerPerformance output: ${output.slice(-500)}`);
  return { eventsPerSecond: Number(match[1]), p50: Number(match[2]), p99: Number(match[3]) };
}

async function benchPerfTest(): Promise<{ throughput: Result; paced: Result }> {
  const topic = await freshTopic("java");
  const throughput = await perfTest(topic, Math.max(events * 2, 100_000), -1);
  const pacedResult = await perfTest(topic, rate * rateSeconds, rate);
  return { throughput, paced: pacedResult };
}

const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : "n/a");
/** The 1-, 5- and 15-minute load averages: printed at start and end, since only ratios hold on a busy machine. */
const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");

async function main(): Promise<void> {
  console.log(
    `producer bench: ${events} events of ~1 KiB, ${concurrency} concurrent callers, batches of ${batchSize}, ` +
      `${rounds} interleaved rounds; fixed rate ${rate}/s for ${rateSeconds} s; brokers ${brokers.join(",")}; ` +
      `${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB; node ${process.version}; load average ${load()}`,
  );
  const wanted = (name: string) => !only || only.split(",").some((o) => name.includes(o));
  const contenders: Contender[] = [];
  for (const make of [
    () => sdkContender("kafkajs"),
    () => sdkContender("platformatic"),
    () => kafkajsContender(false),
    () => kafkajsContender(true),
    platformaticContender,
  ]) {
    const contender = await make();
    if (wanted(contender.name)) contenders.push(contender);
    else await contender.close();
  }
  const rows = new Map<string, { throughput: Result; paced: Result } | Error>();
  const samples = new Map<string, Sample[]>(contenders.map((c) => [c.name, []]));
  // This process's CPU time per row (user + system, all threads): steadier than
  // events/s on a shared machine, since other processes' load does not add to it.
  const cpuMicros = new Map<string, number>();
  for (const c of contenders) await c.throughput(5000); // warm-up: JIT, connections, metadata
  // Interleaved rounds, so that load from elsewhere on the machine hits every client alike.
  for (let round = 0; round < rounds; round++) {
    for (const c of contenders) {
      process.stdout.write(`round ${round + 1}: ${c.name} ...\n`);
      const cpuBefore = process.cpuUsage();
      samples.get(c.name)!.push(await c.throughput(Math.ceil(events / rounds)));
      const cpu = process.cpuUsage(cpuBefore);
      cpuMicros.set(c.name, (cpuMicros.get(c.name) ?? 0) + cpu.user + cpu.system);
    }
  }
  for (const c of contenders) {
    process.stdout.write(`fixed rate: ${c.name} ...\n`);
    const runs = samples.get(c.name)!;
    const count = runs.reduce((n, r) => n + r.count, 0);
    const seconds = runs.reduce((n, r) => n + r.seconds, 0);
    const throughput = summarise(
      runs.flatMap((r) => r.latencies),
      count,
      seconds,
    );
    // A failed fixed-rate run (a loaded machine can push sends past their timeout)
    // still leaves the throughput rounds to report.
    const pacedResult = await c.paced().catch((error: unknown) => {
      console.error(`fixed rate: ${c.name}: ${(error as Error).message}`);
      return { eventsPerSecond: Number.NaN, p50: Number.NaN, p99: Number.NaN };
    });
    rows.set(c.name, { throughput, paced: pacedResult });
    await c.close();
  }
  const javaName = "kafka-producer-perf-test (Java)";
  if (wanted(javaName)) {
    process.stdout.write(`running ${javaName} ...\n`);
    rows.set(
      javaName,
      await benchPerfTest().catch((error: unknown) => {
        console.error(error);
        return error as Error;
      }),
    );
  }
  await deleteTopics(created);
  console.log(`\nload average at the end: ${load()}`);
  console.log("");
  console.log("| client | events/s | p50 ms | p99 ms | p50 ms @ 5k/s | p99 ms @ 5k/s |");
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const [name, result] of rows) {
    if (result instanceof Error) {
      console.log(`| ${name} | failed: ${result.message.split("\n")[0]} | | | | |`);
      continue;
    }
    const { throughput: t, paced: p } = result;
    console.log(
      `| ${name} | ${Math.round(t.eventsPerSecond).toLocaleString("en")} | ${fmt(t.p50)} | ${fmt(t.p99)} | ${fmt(p.p50)} | ${fmt(p.p99)} |`,
    );
  }
  if (cpuMicros.size > 0) {
    console.log("\n| client | CPU µs per event in this process (throughput rounds) |");
    console.log("|---|---:|");
    for (const [name, micros] of cpuMicros) {
      const count = samples.get(name)!.reduce((n, r) => n + r.count, 0);
      console.log(`| ${name} | ${fmt(micros / count)} |`);
    }
  }
  const byName = (prefix: string) =>
    [...rows].find(([name]) => name.startsWith(prefix))?.[1] ?? new Error("not run");
  const sdk = byName("chatbus SDK (kafkajs)");
  const sdkPlatformatic = byName("chatbus SDK (platformatic)");
  const kafkajs = byName("raw kafkajs, hand-made");
  const platformatic = byName("raw @platformatic");
  const java = byName("kafka-producer-perf-test");
  const ratio = (label: string, a: { throughput: Result } | Error, b: { throughput: Result } | Error) => {
    if (a instanceof Error || b instanceof Error) return;
    const percent = (100 * a.throughput.eventsPerSecond) / b.throughput.eventsPerSecond;
    console.log(`${label}: ${percent.toFixed(0)}%`);
  };
  console.log("");
  ratio("SDK (kafkajs) / raw kafkajs throughput", sdk, kafkajs);
  ratio("SDK (platformatic) / raw kafkajs throughput", sdkPlatformatic, kafkajs);
  ratio("SDK (platformatic) / raw @platformatic/kafka throughput", sdkPlatformatic, platformatic);
  ratio("SDK (kafkajs) / Java perf tool throughput", sdk, java);
  ratio("SDK (platformatic) / Java perf tool throughput", sdkPlatformatic, java);
  ratio("raw @platformatic/kafka / raw kafkajs throughput", platformatic, kafkajs);
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
