/**
 * `npm start`: the whole stack on this machine. Brings up Kafka (unless
 * KAFKA_BROKERS points at a running cluster), prepares the PostgreSQL database,
 * starts the consumer runtime and the API as child processes, and stops everything
 * it started on Ctrl-C or SIGTERM.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureTopic } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";
import { ensureDatabase, migrate } from "../consumer-runtime/src/database/migrate.ts";
import { KafkaSetupError, kafkaAnswers, startKafka, stopKafka } from "./kafka.ts";
import { ensurePostgres, type PostgresChoice } from "./postgres.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

if (process.argv.includes("--help")) {
  console.log(`usage: npm start

Starts Kafka (unless KAFKA_BROKERS is set; KAFKA_NODES=3 for a three-node
cluster), creates and migrates the database at
DATABASE_URL, then runs the consumer runtime and the API on PORT (default 3000).
Ctrl-C stops everything this command started. See README.md for every setting.`);
  process.exit(0);
}

const say = (message: string) => console.log(`chatbus: ${message}`);
const children: ChildProcess[] = [];
let kafkaStarted: { port: number; nodes: number } | undefined;
// Set while the broker is starting: a Ctrl-C then waits for it and stops it too,
// instead of leaving a JVM behind that nobody stops.
let kafkaStarting: Promise<unknown> | undefined;
// The same for the embedded PostgreSQL (issue 19), when this run started one.
let postgresStarting: Promise<PostgresChoice> | undefined;
let stopping = false;

async function shutdown(code: number): Promise<never> {
  // A second signal is normal (the terminal signals the whole group, bootstrap.mjs
  // forwards it once more): the first shutdown goes on and exits when done. Exiting
  // here instead left the broker running (issue 14.2).
  if (stopping) return new Promise<never>(() => {});
  stopping = true;
  say("stopping ...");
  await Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          // 15 s: the runtime gives in-flight handlers 10 s; the whole stop must fit in 30 s.
          const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
          child.once("exit", () => {
            clearTimeout(timer);
            resolve();
          });
          child.kill("SIGTERM");
        }),
    ),
  );
  const postgres = await postgresStarting?.catch(() => undefined);
  await postgres?.stop?.().catch((error: Error) => console.error(`chatbus: ${error.message}`));
  await kafkaStarting?.catch(() => {});
  if (kafkaStarted) await stopKafka(kafkaStarted.port, kafkaStarted.nodes);
  say("stopped");
  process.exit(code);
}

function run(name: string, entry: string, env: NodeJS.ProcessEnv): ChildProcess {
  if (stopping) throw new Error(`not starting the ${name}: stopping`);
  // node with tsx's loader, in its own process group: a Ctrl-C in the terminal then
  // reaches it once, from shutdown(), instead of twice (which means "exit now").
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@chatbus/source", join(root, entry)],
    {
      cwd: root,
      env,
      detached: true,
      stdio: ["ignore", "inherit", "inherit"],
    },
  );
  child.once("exit", (code, signal) => {
    if (stopping) return;
    console.error(`chatbus: ${name} exited (${signal ?? `code ${code}`}); stopping the stack.`);
    void shutdown(1);
  });
  children.push(child);
  return child;
}

/** Newest modification time under `path` (a file or a folder), 0 when missing. */
function newest(path: string): number {
  if (!existsSync(path)) return 0;
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  return Math.max(0, ...readdirSync(path).map((name) => newest(join(path, name))));
}

/**
 * Builds the web pages with vite unless api/web/dist is newer than their sources: a
 * second start is quicker, and a rebuild (vite empties dist/ first) never pulls the
 * pages from under an API that is serving them.
 */
function buildWebPages(): void {
  const web = join(root, "api", "web");
  const sources = Math.max(
    ...["src", "index.html", "ops.html", "vite.config.ts"].map((f) => newest(join(web, f))),
  );
  const built = newest(join(web, "dist", "index.html"));
  if (built > sources) {
    say("web pages are up to date");
    return;
  }
  say("building the web pages (vite) ...");
  const started = Date.now();
  const build = spawnSync("npm", ["run", "--silent", "-w", "api", "build:web"], {
    cwd: root,
    stdio: ["ignore", "ignore", "inherit"],
  });
  if (build.status !== 0)
    throw new Error("building the web pages failed (npm run -w api build:web); see the lines above.");
  say(`web pages built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function waitForHttp(url: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && !stopping) {
    try {
      if ((await fetch(url)).ok) return true;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  return false;
}

async function post(url: string, body: unknown, token?: string): Promise<Record<string, unknown>> {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  if (!response.ok)
    throw new Error(`POST ${new URL(url).pathname} answered ${response.status}: ${await response.text()}`);
  return (await response.json()) as Record<string, unknown>;
}

/** The demo: ana and ben chat in a new group; returns how to look at it. */
async function runDemo(base: string): Promise<string> {
  const login = async (username: string) =>
    (await post(`${base}/v1/dev/login`, { username })).token as string;
  const ana = await login("ana");
  const created = await post(
    `${base}/v1/conversations`,
    { kind: "group", title: "chatbus demo", members: ["ana", "ben"] },
    ana,
  );
  const id = created.conversationId as string;
  // The conversation must be materialised before ana may post in it.
  for (let i = 0; i < 50; i++) {
    const response = await fetch(`${base}/v1/conversations/${id}`, {
      headers: { authorization: `Bearer ${ana}` },
    });
    if (response.ok) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  await post(
    `${base}/v1/conversations/${id}/messages`,
    { content: { type: "text", text: "Hi Ben, this came through Kafka." } },
    ana,
  );
  await post(
    `${base}/v1/conversations/${id}/messages`,
    {
      content: {
        type: "custom",
        customType: "red_packet",
        data: { amount: 88, currency: "CNY", greeting: "Good luck" },
        description: "[Red packet]",
      },
    },
    ana,
  );
  return `ana sent two messages to conversation ${id}; log in as "ben" on the chat page to read them.`;
}

async function main(): Promise<void> {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => void shutdown(0));

  const env: NodeJS.ProcessEnv = { ...process.env };
  if (env.KAFKA_BROKERS) {
    if (!(await kafkaAnswers(env.KAFKA_BROKERS.split(","), 5000))) {
      throw new KafkaSetupError(
        `no Kafka broker answers at KAFKA_BROKERS=${env.KAFKA_BROKERS}; start it, or unset KAFKA_BROKERS to let chatbus run its own.`,
      );
    }
    say(`using Kafka at ${env.KAFKA_BROKERS}`);
  } else {
    const port = Number(env.KAFKA_PORT ?? 9092);
    const nodes = Number(env.KAFKA_NODES ?? 1);
    const starting = startKafka(port, nodes).then((broker) => {
      if (broker.started) kafkaStarted = { port, nodes };
      return broker;
    });
    kafkaStarting = starting;
    const broker = await starting;
    env.KAFKA_BROKERS = broker.brokers.join(",");
  }

  const topic = env.CHATBUS_TOPIC ?? "chat.events";
  const admin = new Kafka({
    clientId: "chatbus-start",
    brokers: env.KAFKA_BROKERS.split(","),
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  const topicState = await ensureTopic(admin, {
    topic,
    partitions: Number(env.CHATBUS_PARTITIONS ?? 12),
  }).finally(() => admin.disconnect());
  say(`topic ${topic} ${topicState === "created" ? "created" : "ready"}`);

  // Development secrets shared by the API and the CLI for this run, printed below.
  const production = env.NODE_ENV === "production";
  if (!production) {
    env.CHATBUS_JWT_SECRET ??= randomBytes(32).toString("hex");
    env.CHATBUS_OPERATOR_KEY ??= `dev-operator-${randomBytes(12).toString("hex")}`;
    env.CHATBUS_DEV_LOGIN ??= "1";
    say(`dev login for this local stack: CHATBUS_DEV_LOGIN=${env.CHATBUS_DEV_LOGIN} (POST /v1/dev/login)`);
  }

  postgresStarting = ensurePostgres(env);
  const { databaseUrl } = await postgresStarting;
  env.DATABASE_URL = databaseUrl;
  const { created } = await ensureDatabase(databaseUrl);
  const pool = new pg.Pool({ connectionString: databaseUrl });
  const { applied } = await migrate(pool);
  await pool.end();
  say(
    `database ${new URL(env.DATABASE_URL).pathname.slice(1)} ${created ? "created" : "ready"}${applied.length ? `, applied ${applied.join(", ")}` : ""}`,
  );

  buildWebPages();

  const port = env.PORT ?? "3000";
  run("consumer runtime", "consumer-runtime/src/main.ts", env);
  run("api", "api/src/main.ts", env);
  const base = `http://127.0.0.1:${port}`;
  if (!(await waitForHttp(`${base}/readyz`, 60_000))) {
    throw new Error(`the API did not become ready at ${base}/readyz within 60 s; see its log lines above.`);
  }
  const demo = production
    ? undefined
    : await runDemo(base).catch((error: Error) => `demo failed: ${error.message}`);
  say(`stack is up:
  Kafka       ${env.KAFKA_BROKERS} (topic ${env.CHATBUS_TOPIC ?? "chat.events"})
  PostgreSQL  ${new URL(env.DATABASE_URL).host}/${new URL(env.DATABASE_URL).pathname.slice(1)}
  API         ${base}/v1   (OpenAPI at ${base}/docs, metrics at ${base}/metrics)
  Runtime     subscriptions: materialiser, notifications (metrics at http://127.0.0.1:${env.CHATBUS_METRICS_PORT ?? 9464}/metrics)
  Chat page   ${base}/            Operations page ${base}/ops
${production ? "" : `  Operator key (this run): ${env.CHATBUS_OPERATOR_KEY}  (export CHATBUS_OPERATOR_KEY=… for \`npx chatbus subscriptions\`)\n`}${demo ? `  Demo: ${demo}\n` : ""}Press Ctrl-C to stop.`);
}

// Whatever goes wrong while stopping must not end this process before Kafka and an
// embedded PostgreSQL are stopped: say it and carry on with the shutdown.
for (const event of ["uncaughtException", "unhandledRejection"] as const) {
  process.on(event, (error: unknown) => {
    console.error(
      `chatbus: ${event}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
    );
    void shutdown(1);
  });
}

main().catch((error: unknown) => {
  console.error(`chatbus: ${error instanceof Error ? error.message : String(error)}`);
  void shutdown(1);
});
