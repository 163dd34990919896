/**
 * Decode micro-benchmark (not a test, no Kafka): the cost of the SDK's `decodeRecord`
 * on records shaped as kafkajs hands them over (key, value and every header a Buffer),
 * next to a bare `JSON.parse` of the same values, the least any consumer pays.
 *
 *   npx tsx --conditions=@chatbus/source bench/consumer/decode.ts [--records 20000] [--rounds 40]
 *
 * To compare with another version of the decoder (e.g. main's), copy it next to the
 * SDK's sources and name it: `git show main:producer-sdk/src/codec.ts >
 * producer-sdk/src/codec-main.ts`, then `DECODE_COMPARE=producer-sdk/src/codec-main.ts`
 * adds its row (delete the copy afterwards).
 *
 * Profile it with `node --cpu-prof --conditions=@chatbus/source --import tsx bench/consumer/decode.ts`
 * and summarise with `npx tsx bench/producer/profile-top.ts <file>.cpuprofile`.
 *
 * The records are the mix a chat topic carries: mostly `chat.message.sent` (short
 * texts and a few 1 KiB ones, some custom content), receipts and edits. The rows run
 * in many short interleaved rounds (each over a slice of the records) and each row
 * keeps its fastest round: interference from other processes only ever adds time, so
 * the minimum is the steadiest estimate on a shared machine. The load average is
 * printed at start and end.
 */
import { loadavg } from "node:os";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { type ChatEventInput, decodeRecord, encodeEvent, type RawRecord } from "@chatbus/producer-sdk";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const { values } = parseArgs({
  options: {
    records: { type: "string", default: "20000" },
    rounds: { type: "string", default: "40" },
  },
});
const count = Number(values.records);
const rounds = Number(values.rounds);

function eventFor(i: number): ChatEventInput {
  const sender = `user-${i % 97}`;
  switch (i % 10) {
    case 7:
      return { type: "chat.receipt.read", userId: sender, upToSeq: i };
    case 8:
      return {
        type: "chat.message.edited",
        messageId: "0190f6a2-7b1c-7def-8abc-0123456789ab",
        editorId: sender,
        content: { type: "text", text: `edited ${i}` },
      };
    case 9:
      return {
        type: "chat.message.sent",
        senderId: sender,
        content: {
          type: "custom",
          customType: "red_packet",
          data: { amount: 888, currency: "CNY", greeting: "恭喜发财" },
          description: "[Red packet]",
        },
        clientMsgId: `c-${i}`,
      };
    default:
      return {
        type: "chat.message.sent",
        senderId: sender,
        content: { type: "text", text: i % 20 === 0 ? "x".repeat(1024) : `hello number ${i}, how are you?` },
        priority: "normal",
      };
  }
}

/** Records as kafkajs delivers them: Buffers everywhere. */
function buildRecords(n: number): RawRecord[] {
  return Array.from({ length: n }, (_, i) => {
    const { record } = encodeEvent(`conv-${i % 1000}`, eventFor(i), { source: "/bench" });
    const headers: Record<string, Buffer> = {};
    for (const [name, value] of Object.entries(record.headers)) headers[name] = Buffer.from(value);
    return { key: Buffer.from(record.key), value: Buffer.from(record.value), headers };
  });
}

/**
 * Runs `fn` over every record; returns CPU ns per record. CPU time of this process
 * (user + system) rather than wall time: on a shared machine the wall clock also counts
 * the time other processes held the core.
 */
function time(records: RawRecord[], fn: (r: RawRecord) => unknown): number {
  let sink = 0;
  const started = process.cpuUsage();
  for (const record of records) if (fn(record)) sink++;
  const used = process.cpuUsage(started);
  const ns = (used.user + used.system) * 1000;
  if (sink !== records.length) throw new Error(`only ${sink} of ${records.length} records decoded`);
  return ns / records.length;
}

type Decode = (r: RawRecord) => unknown;

/** A decodeRecord as a bench row: throws on a record it refuses (none should be refused). */
function decodeRow(decode: typeof decodeRecord): Decode {
  return (r) => {
    const result = decode(r);
    if (!result.ok) throw new Error(`undecodable bench record: ${result.reason}`);
    return result;
  };
}

const rows: [string, Decode][] = [
  ["JSON.parse of the value (baseline)", (r) => JSON.parse(r.value!.toString())],
  ["decodeRecord", decodeRow(decodeRecord)],
];

async function main(): Promise<void> {
  const compare = process.env.DECODE_COMPARE;
  if (compare) {
    const module = (await import(pathToFileURL(resolve(compare)).href)) as {
      decodeRecord: typeof decodeRecord;
    };
    rows.push([`decodeRecord of ${compare}`, decodeRow(module.decodeRecord)]);
  }
  const load = () =>
    loadavg()
      .map((l) => l.toFixed(2))
      .join(" ");
  console.log(`decode bench: ${count} records, ${rounds} interleaved rounds; load average ${load()}`);
  const records = buildRecords(count);
  for (const [, fn] of rows) time(records, fn); // warm-up: JIT
  const samples = new Map<string, number[]>(rows.map(([name]) => [name, []]));
  const slice = Math.max(1, Math.floor(records.length / 4));
  for (let round = 0; round < rounds; round++) {
    const from = (round * slice) % records.length;
    const part = records.slice(from, from + slice);
    for (const [name, fn] of rows) samples.get(name)!.push(time(part, fn));
  }
  const best = (name: string) => Math.min(...samples.get(name)!);
  const baselineRuns = samples.get(rows[0]![0])!;
  // The ratio within each round (same load), then the median over rounds.
  const medianRatio = (name: string) => {
    const ratios = samples
      .get(name)!
      .map((ns, round) => ns / baselineRuns[round]!)
      .sort((a, b) => a - b);
    return ratios[Math.floor(ratios.length / 2)]!;
  };
  console.log(
    "\n| path | CPU ns/record (best round) | records/s of CPU (best round) | vs JSON.parse (best rounds) | vs JSON.parse (median of rounds) |",
  );
  console.log("|---|---:|---:|---:|---:|");
  for (const [name] of rows) {
    const ns = best(name);
    console.log(
      `| ${name} | ${ns.toFixed(0)} | ${Math.round(1e9 / ns).toLocaleString("en")} | ${(ns / best(rows[0]![0])).toFixed(2)}x | ${medianRatio(name).toFixed(2)}x |`,
    );
  }
  console.log(`\nload average at the end: ${load()}`);
}

await main();
