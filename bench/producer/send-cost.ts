/**
 * The SDK's own CPU per send, without Kafka (not a test): what `send` adds on top of
 * building the same record by hand, the way the producer bench's "raw kafkajs" row does.
 * The network and kafkajs's encoding are the same for both and left out, so this shows
 * where the SDK can still lose ground to raw kafkajs.
 *
 *   npx tsx --conditions=@chatbus/source bench/producer/send-cost.ts [--events 20000] [--rounds 30]
 *
 * Rows (CPU time of this process, the best of interleaved rounds, load average printed):
 * - the raw record: JSON, UUIDv7, CloudEvents headers (the bench's `rawRecord`);
 * - `encodeEvent`: the same plus validation;
 * - kafkajs's own encoding of those records (its v0 record encoder), which both rows of
 *   the producer bench pay in full: it allocates a zero-filled 512-byte `Encoder` per
 *   record and per header, so it dwarfs the rest. (Header values passed as pre-encoded
 *   Buffers were tried and measured the same, within noise: 28.4 vs 28.7 µs.)
 * - the batcher round trip: `RecordBatcher` with 1,000 callers each awaiting its record,
 *   its produce function answering at once (what one send costs in promises and queueing).
 */
import { createRequire } from "node:module";
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { type EncodedRecord, encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import { RecordBatcher } from "../../producer-sdk/src/record-batcher.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

/** kafkajs's own record encoder (v0 records, as a produce request writes them). */
const encodeKafkaRecord = createRequire(import.meta.url)(
  "kafkajs/src/protocol/recordBatch/record/v0/index.js",
) as (record: object) => unknown;

const { values } = parseArgs({
  options: { events: { type: "string", default: "20000" }, rounds: { type: "string", default: "30" } },
});
const events = Number(values.events);
const rounds = Number(values.rounds);
const text = "x".repeat(1024 - 60);
const eventFor = (i: number) => ({
  type: "chat.message.sent" as const,
  senderId: `user-${i % 97}`,
  content: { type: "text" as const, text },
});

function rawRecord(i: number): EncodedRecord {
  const { type, ...data } = eventFor(i);
  return {
    key: `conv-${i % 2000}`,
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

const prebuilt = Array.from({ length: 1000 }, (_, i) => rawRecord(i));

/** 1,000 callers each awaiting `count / 1000` records through a batcher whose produce answers at once. */
async function batcherRoundTrips(count: number): Promise<void> {
  const batcher = new RecordBatcher<number>({
    produce: async (batch) => new Map(batch.map((r) => [r.partition, "0"])),
    lingerMs: 2,
    maxBatchSize: 1000,
    maxBatchBytes: 1 << 20,
    timeoutMs: 30_000,
    timeoutError: () => new Error("timeout"),
    failureError: (error) => error as Error,
    onFailure: () => {},
  });
  let next = 0;
  await Promise.all(
    Array.from({ length: 1000 }, async () => {
      while (next < count) {
        const i = next++;
        await new Promise<string>((resolve, reject) =>
          batcher.add({ message: i, partition: i % 12, bytes: 1100, resolve, reject }),
        );
      }
    }),
  );
}

async function cpuNsPer(count: number, run: () => unknown): Promise<number> {
  const started = process.cpuUsage();
  await run();
  const used = process.cpuUsage(started);
  return ((used.user + used.system) * 1000) / count;
}

const rows: [string, () => unknown][] = [
  [
    "raw record by hand",
    () => {
      for (let i = 0; i < events; i++) rawRecord(i);
    },
  ],
  [
    "encodeEvent (validation + record)",
    () => {
      for (let i = 0; i < events; i++) encodeEvent(`conv-${i % 2000}`, eventFor(i), { source: "/bench" });
    },
  ],
  ["batcher round trip, 1,000 callers", () => batcherRoundTrips(events)],
  [
    "kafkajs record encoding (v0 record with its 7 headers)",
    () => {
      for (let i = 0; i < events; i++) encodeKafkaRecord(prebuilt[i % prebuilt.length]!);
    },
  ],
];

const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");
console.log(
  `send-cost bench: ${events} events of ~1 KiB, ${rounds} interleaved rounds; load average ${load()}`,
);
const best = new Map<string, number>();
for (let round = 0; round <= rounds; round++) {
  for (const [name, run] of rows) {
    const ns = await cpuNsPer(events, run);
    if (round > 0) best.set(name, Math.min(best.get(name) ?? Number.POSITIVE_INFINITY, ns)); // round 0: JIT warm-up
  }
}
console.log("\n| path | CPU ns per event (best round) |");
console.log("|---|---:|");
for (const [name, ns] of best) console.log(`| ${name} | ${ns.toFixed(0)} |`);
console.log(`\nload average at the end: ${load()}`);
