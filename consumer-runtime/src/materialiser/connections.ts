/**
 * Every connection the materialiser applies batches on has a statement timeout and TCP
 * keep-alive, so that a hung connection or a silently dropped peer cannot stall a batch
 * for ever: the statement fails (SQLSTATE 57014, a system failure) and the batch is
 * retried. New connections get both from the pool's options (set here on the caller's
 * pool); connections the pool already held get them on their first use for a batch.
 * On that first use each connection also switches to generic plans (`prepareConnection`).
 */
import type pg from "pg";

const timeouts = new WeakMap<pg.Pool, number>();
const prepared = new WeakSet<pg.PoolClient>();

/** Sets keep-alive and the statement timeout for the pool's future connections. */
export function configureConnections(pool: pg.Pool, statementTimeoutMs: number): void {
  // pg-pool creates each client with `new Client(pool.options)`.
  const options = (pool as unknown as { options: Record<string, unknown> }).options;
  options.keepAlive = true;
  options.keepAliveInitialDelayMillis ??= 10_000;
  options.statement_timeout ??= statementTimeoutMs;
  timeouts.set(pool, Number(options.statement_timeout));
}

/**
 * A pool of `max` connections made like `pool`'s (same connection options, so the same
 * search_path, and the same client class), for the materialiser's periodic work: the
 * status publisher and the dead-letter replay poller. Why: on the batch pool they
 * waited behind every partition's transaction for a connection (wait p99 184 ms under
 * load, issue 12) and took connections the partitions' batches then waited for.
 */
export function sidePool(pool: pg.Pool, max: number): pg.Pool {
  const options = (pool as unknown as { options: pg.PoolConfig }).options;
  const Pool = pool.constructor as new (config: pg.PoolConfig) => pg.Pool;
  return new Pool({ ...options, max });
}

/** Once per connection: keep-alive on its socket, the statement timeout and generic plans (one round trip). */
export async function prepareConnection(pool: pg.Pool, client: pg.PoolClient): Promise<void> {
  const timeout = timeouts.get(pool);
  if (timeout === undefined || prepared.has(client)) return;
  const socket = (
    client as unknown as { connection?: { stream?: { setKeepAlive?: (on: boolean, ms: number) => void } } }
  ).connection?.stream;
  socket?.setKeepAlive?.(true, 10_000);
  // A generic plan for the batch statements: each is built so that every lookup is an
  // index lookup whatever the parameters (projection-loader.ts), and planning the load
  // afresh for each batch (PostgreSQL's default, custom plans) cost ~1 ms of the
  // server's CPU per transaction, half of its work for a small batch (issue 12).
  await client.query(
    `SET statement_timeout = ${Math.floor(timeout)}; SET plan_cache_mode = force_generic_plan`,
  );
  prepared.add(client);
}

/**
 * Runs `work` on a prepared connection of `pool`. A connection whose work failed is
 * destroyed, not reused: it may be mid-transaction or broken.
 */
export async function withBatchConnection<T>(
  pool: pg.Pool,
  work: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  try {
    await prepareConnection(pool, client);
    const result = await work(client);
    client.release();
    return result;
  } catch (error) {
    client.release(true);
    throw error;
  }
}
