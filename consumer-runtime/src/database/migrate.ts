import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";

/**
 * Forward-only schema migrations: `consumer-runtime/migrations/NNN_name.sql`, applied
 * in name order, each in its own transaction, recorded in `chatbus_migrations`.
 * A small runner instead of a migration framework because the SQL is plain, the
 * order is total, and it must apply into whichever schema `search_path` names (each
 * test file and each projection rebuild gets its own schema).
 */
const migrationsDir = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "migrations");

/** Arbitrary constant key so that concurrent starters apply migrations one at a time. */
const MIGRATION_LOCK_KEY = 7_204_180_001;

export interface MigrationResult {
  applied: string[];
  schema: string;
}

/** Applies every migration not yet recorded in the pool's current schema. */
export async function migrate(pool: pg.Pool): Promise<MigrationResult> {
  const files = readdirSync(migrationsDir)
    .filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f))
    .sort();
  const client = await pool.connect();
  try {
    const { rows } = await client.query<{ schema: string }>("SELECT current_schema() AS schema");
    const schema = rows[0]!.schema;
    await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK_KEY]);
    try {
      await client.query(
        "CREATE TABLE IF NOT EXISTS chatbus_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
      );
      const done = new Set(
        (await client.query<{ version: string }>("SELECT version FROM chatbus_migrations")).rows.map(
          (r) => r.version,
        ),
      );
      const applied: string[] = [];
      for (const file of files) {
        if (done.has(file)) continue;
        await client.query("BEGIN");
        try {
          await client.query(readFileSync(join(migrationsDir, file), "utf8"));
          await client.query("INSERT INTO chatbus_migrations (version) VALUES ($1)", [file]);
          await client.query("COMMIT");
        } catch (error) {
          await client.query("ROLLBACK");
          throw new Error(`migration ${file} failed in schema ${schema}: ${(error as Error).message}`, {
            cause: error,
          });
        }
        applied.push(file);
      }
      return { applied, schema };
    } finally {
      await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK_KEY]);
    }
  } finally {
    client.release();
  }
}

/**
 * Creates the database named in `url` when it does not exist yet, connecting to the
 * server's `postgres` database to do so. Throws a one-line error naming the address
 * when the server cannot be reached.
 */
export async function ensureDatabase(url: string): Promise<{ created: boolean }> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.slice(1));
  if (!/^[A-Za-z0-9_-]+$/.test(name)) {
    throw new Error(`DATABASE_URL must name a database of letters, digits, _ or -; got "${name}"`);
  }
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const client = new pg.Client({ connectionString: admin.toString(), connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
  } catch (error) {
    throw new Error(
      `PostgreSQL is not reachable at ${target.host} (${(error as Error).message}); start it or set DATABASE_URL.`,
      { cause: error },
    );
  }
  try {
    const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]);
    if (rowCount) return { created: false };
    await client.query(`CREATE DATABASE "${name}"`).catch((error: { code?: string }) => {
      if (error.code !== "42P04") throw error; // created concurrently by another starter
    });
    return { created: true };
  } finally {
    await client.end();
  }
}
