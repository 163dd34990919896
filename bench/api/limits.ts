/**
 * The shared write limits alone (no HTTP, no Kafka): `admit` of member sends from
 * `--connections` concurrent loops for `--seconds`, one user in 200 conversations
 * (the send benchmark's shape: every write locks the same user bucket), once with
 * one `chatbus_take_tokens` call per write (migration 006, the limiter before group
 * commit) and once through `createWriteLimiter` (group commit, migration 009). Rates
 * are so high that nothing is refused: only the checks' cost shows.
 *
 *   npx tsx --conditions=@chatbus/source bench/api/limits.ts [--seconds 5] [--connections 64]
 *
 * Uses DATABASE_URL; its schema is its own and is dropped at the end.
 */
import { parseArgs } from "node:util";
import pino from "pino";
import { configDefaults } from "../../api/src/config.ts";
import { bucketsOf, createWriteLimiter, type WriteRequest } from "../../api/src/write-limits.ts";
import { createTestSchema } from "../../test/support/isolation.ts";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "5" },
    connections: { type: "string", default: "64" },
  },
});
const SECONDS = Number(values.seconds);
const CONNECTIONS = Number(values.connections);
const limits = {
  ...configDefaults.rateLimits,
  enabled: true,
  groupMessagesPerSecond: 1e9,
  userMessagesPerSecond: 1e9,
};
const schema = await createTestSchema("bench_limits");
const pool = schema.pool;
const request = (i: number): WriteRequest => ({
  what: "message",
  userId: "sender",
  conversationId: `bench-send-${i % 200}`,
  conversationKind: "group",
  priority: "normal",
});

/** One call of 006's function per write, as the limiter did before group commit. */
async function perWrite(i: number): Promise<void> {
  const buckets = bucketsOf(request(i), limits);
  await pool.query(
    "SELECT wait, short FROM chatbus_take_tokens($1::text[], $2::float8[], $3::float8[], $4::float8[])",
    [
      buckets.map((b) => b.key),
      buckets.map((b) => b.rate),
      buckets.map((b) => Math.max(1, b.rate * limits.burstSeconds)),
      buckets.map((b) => b.needed),
    ],
  );
}

/** Admits from CONNECTIONS loops for SECONDS; writes/s and latency percentiles. */
async function run(title: string, admit: (i: number) => Promise<void>) {
  const latencies: number[] = [];
  const until = performance.now() + SECONDS * 1000;
  let next = 0;
  await Promise.all(
    Array.from({ length: CONNECTIONS }, async () => {
      while (performance.now() < until) {
        const started = performance.now();
        await admit(next++);
        latencies.push(performance.now() - started);
      }
    }),
  );
  latencies.sort((a, b) => a - b);
  const at = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!.toFixed(1);
  console.log(
    `bench/limits: ${title}: ${Math.round(latencies.length / SECONDS)} writes/s, p50 ${at(0.5)} ms, p99 ${at(0.99)} ms (${CONNECTIONS} concurrent)`,
  );
}

const limiter = createWriteLimiter(pool, limits, pino({ level: "warn" }));
await run("one chatbus_take_tokens call per write (006)", perWrite);
await run("group commit, chatbus_take_tokens_batch (009)", (i) => limiter.admit(request(i)));
await run("one chatbus_take_tokens call per write (006), again", perWrite);
await run("group commit, chatbus_take_tokens_batch (009), again", (i) => limiter.admit(request(i)));
limiter.close();
await schema.cleanup();
