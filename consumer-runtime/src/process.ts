/**
 * The runtime process (`npm start` runs it through `main.ts`): reads the environment,
 * migrates the database, starts the subscriptions, and stops them on SIGTERM.
 */
import { createServer, type Server } from "node:http";
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

/**
 * Prefix of every consumer group id this process joins (`CHATBUS_GROUP_PREFIX`,
 * default `chatbus`): two deployments sharing one Kafka cluster with different
 * prefixes never join each other's groups.
 */
export function groupPrefix(): string {
  const prefix = process.env.CHATBUS_GROUP_PREFIX || "chatbus";
  if (!/^[A-Za-z0-9._-]{1,100}$/.test(prefix)) {
    throw new Error(
      `CHATBUS_GROUP_PREFIX must be 1-100 characters of letters, digits, ".", "_" or "-"; got ${JSON.stringify(prefix)}`,
    );
  }
  return prefix;
}

/** The demo subscription: logs every message it sees. */
export function notificationsDemo(options: { pool: pg.Pool; logger: Logger; registry: Registry }): Runtime {
  const runtime = createRuntime({ group: `${groupPrefix()}-notifications`, ...options });
  runtime.on("chat.message.sent", (event, ctx) => {
    ctx.logger.info({ senderId: event.data.senderId }, "notify members of a new message");
  });
  return runtime;
}

/**
 * Serves `GET /metrics` (Prometheus text) and `GET /healthz` on `port`; resolves once
 * listening. Port 0 picks a free one.
 */
export async function serveMetrics(registry: Registry, port: number, logger: Logger): Promise<Server> {
  const server = createServer((request, response) => {
    if (request.method === "GET" && request.url?.startsWith("/metrics")) {
      registry.metrics().then(
        (text) => {
          response.writeHead(200, { "content-type": registry.contentType });
          response.end(text);
        },
        (error: Error) => {
          response.writeHead(500, { "content-type": "text/plain" });
          response.end(error.message);
        },
      );
    } else if (request.method === "GET" && request.url === "/healthz") {
      response.writeHead(200, { "content-type": "application/json" });
      response.end('{"status":"ok"}');
    } else {
      response.writeHead(404, { "content-type": "application/json" });
      response.end(
        '{"error":{"code":"CHATBUS_NOT_FOUND","message":"only GET /metrics and /healthz are served here."}}',
      );
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (error: NodeJS.ErrnoException) =>
      reject(
        new Error(
          `the runtime's metrics port ${port} is not available (${error.code ?? error.message}); set CHATBUS_METRICS_PORT to a free port.`,
        ),
      ),
    );
    server.listen(port, () => resolve());
  });
  logger.info({ port }, `runtime metrics on http://0.0.0.0:${port}/metrics`);
  return server;
}

/**
 * Starts the runtime process: env `KAFKA_BROKERS`, `DATABASE_URL`, `CHATBUS_TOPIC`,
 * `CHATBUS_ALERT_WEBHOOK`, `LOG_LEVEL`, `CHATBUS_METRICS_PORT` (default 9464). Resolves
 * once every subscription runs.
 */
export async function startRuntimeProcess(): Promise<RuntimeProcess> {
  const logger = pino({ level: process.env.LOG_LEVEL ?? "info", name: "chatbus-runtime" });
  const databaseUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/chatbus";
  await ensureDatabase(databaseUrl);
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 });
  // An idle connection dies when PostgreSQL restarts: log it instead of crashing (pg emits 'error').
  pool.on("error", (error) => logger.warn({ err: error }, "idle PostgreSQL connection closed"));
  await migrate(pool);
  const registry = new Registry();
  const started: Stoppable[] = [];
  const metricsServer = await serveMetrics(
    registry,
    Number(process.env.CHATBUS_METRICS_PORT ?? 9464),
    logger,
  );
  started.push({ stop: () => new Promise<void>((resolve) => metricsServer.close(() => resolve())) });
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
  // The materialiser applies up to 12 partitions at once, one connection each: its own pool
  // (its status publisher and replay poller make two more connections of their own).
  const materialiserPool = new pg.Pool({ connectionString: databaseUrl, max: 13 });
  const materialiser = await startMaterialiser({
    pool: materialiserPool,
    logger,
    registry,
    groupId: `${groupPrefix()}-materialiser`,
  });
  started.push({ stop: () => materialiser.stop().then(() => materialiserPool.end()) });

  return { logger, pool, registry, started, stop };
}
