/**
 * One runtime process of a scale-out run: subscription GROUP on TOPIC, handling
 * chat.message.sent by waiting HANDLER_MS (simulated I/O) and then appending
 * "<pid> <conversation> <n>" to OUT_FILE synchronously, so that a kill -9 loses no
 * line of a handler that finished. Prints "started" once it joined the group.
 * Env: KAFKA_BROKERS, TOPIC, GROUP, DATABASE_URL, OUT_FILE, HANDLER_MS, CONCURRENCY.
 */
import { appendFileSync } from "node:fs";
import { createRuntime, stopOnSignals } from "@chatbus/consumer-runtime";
import { pino } from "pino";

const handlerMs = Number(process.env.HANDLER_MS ?? 0);
const runtime = createRuntime({
  group: process.env.GROUP!,
  topic: process.env.TOPIC!,
  databaseUrl: process.env.DATABASE_URL!,
  logger: pino({ level: "warn" }),
  concurrency: Number(process.env.CONCURRENCY ?? 32),
  fromBeginning: true,
  sessionTimeoutMs: 6000,
  heartbeatIntervalMs: 1000,
  commitIntervalMs: 200,
});
runtime.on("chat.message.sent", async (event) => {
  if (handlerMs > 0) await new Promise((r) => setTimeout(r, handlerMs));
  const text = event.data.content.type === "text" ? event.data.content.text : "";
  appendFileSync(process.env.OUT_FILE!, `${process.pid} ${event.conversationId} ${text}\n`);
});
await runtime.start();
stopOnSignals([runtime]);
console.log("started");
