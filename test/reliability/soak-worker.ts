/**
 * The runtime process of the soak: the materialiser plus an `audit` subscription whose
 * handler appends "<pid> <event id>" to OUT_FILE and throws a system error
 * while FAIL_FLAG exists (a dependency that is down for a while). Prints "started".
 * Env: KAFKA_BROKERS, TOPIC, DATABASE_URL, OUT_FILE, FAIL_FLAG, MATERIALISER_GROUP, AUDIT_GROUP.
 */
import { appendFileSync, existsSync } from "node:fs";
import { createRuntime, stopOnSignals } from "@chatbus/consumer-runtime";
import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import { pino } from "pino";

const logger = pino({ level: "warn" });
const topic = process.env.TOPIC!;
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL!, max: 14 });
const materialiser = await startMaterialiser({
  pool,
  logger,
  topic,
  groupId: process.env.MATERIALISER_GROUP!,
  sessionTimeoutMs: 10_000,
});
const audit = createRuntime({
  group: process.env.AUDIT_GROUP!,
  topic,
  databaseUrl: process.env.DATABASE_URL!,
  logger,
  concurrency: 32,
  fromBeginning: true,
  sessionTimeoutMs: 10_000,
  heartbeatIntervalMs: 1000,
  systemRetry: { initialDelayMs: 100, maxDelayMs: 2000 },
  breaker: { resetTimeoutMs: 2000 },
});
audit.on("chat.message.sent", async (event) => {
  if (existsSync(process.env.FAIL_FLAG!)) throw new Error("simulated dependency outage");
  appendFileSync(process.env.OUT_FILE!, `${process.pid} ${event.id}\n`);
});
await audit.start();
stopOnSignals([audit, { stop: () => materialiser.stop().then(() => pool.end()) }]);
console.log("started");
