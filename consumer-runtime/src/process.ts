/**
 * The runtime process (`npm start` runs it through `main.ts`): reads the environment,
 * migrates the database, starts the subscriptions, and stops them on SIGTERM.
 */
import pg from "pg";
import { type Logger, pino } from "pino";
import { Registry } from "prom-client";
import { ensureDatabase, migrate } from "./database/migrate.ts";
import { startMaterialiser } from "./materialiser/materialiser.ts";
import { createRuntime, type Runtime } from "./runtime/runtime.ts";
import { type Stoppable, stopOnSignals } from "./runtime/shutdown.ts";

/** What a running runtime process holds. */
export interface RuntimeProcess {
  logger: Logger;
  pool: pg.Pool;
  registry: Registry;
  /** Everything started, stopped in reverse order by `stop`. */
  started: Stoppable[];
  stop(): Promise<void>;
}

/** The demo subscription: logs every message it sees. */
export function notificationsDemo(options: { pool: pg.Pool; logger: Logger; registry: Registry }): Runtime {
  const runtime = createRuntime({ group: "notifications", ...options });
  runtime.on("chat.message.sent", (event, ctx) => {
    ctx.logger.info({ senderId: event.data.senderId }, "notify members of a new message");
  });
  return runtime;
}

/**
 * Starts the runtime process: env `KAFKA_BROKERS`, `DATABASE_URL`, `CHATBUS_TOPIC`,
 * `CHATBUS_ALERT_WEBHOOK`, `LOG_LEVEL`. Resolves once every subscription runs.
 */
export async function startRuntimeProcess(): Promise<RuntimeProcess> {
  const logger = pino({ level: process.env.LOG_LEVEL ?? "info", name: "chatbus-runtime" });
  const databaseUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/chatbus";
  await ensureDatabase(databaseUrl);
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 });
  await migrate(pool);
  const registry = new Registry();
  const started: Stoppable[] = [];
  const stop = async () => {
    for (const target of [...started].reverse()) await target.stop();
    await pool.end();
  };
  stopOnSignals([{ stop }], { logger });

  // Built-in and demo subscriptions. The materialiser starts here too (its engineer
  // adds it): create it with { pool, logger, registry }, start it, push it on `started`.
  const notifications = notificationsDemo({ pool, logger, registry });
  await notifications.start();
  started.push(notifications);
  // The materialiser applies up to 12 partitions at once, one connection each: its own pool.
  const materialiserPool = new pg.Pool({ connectionString: databaseUrl, max: 13 });
  const materialiser = await startMaterialiser({ pool: materialiserPool, logger, registry });
  started.push({ stop: () => materialiser.stop().then(() => materialiserPool.end()) });

  return { logger, pool, registry, started, stop };
}
