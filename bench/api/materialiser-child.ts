/**
 * The API bench's materialiser, in its own process as in production (the API process
 * does not materialise). In the bench's process it took the API's event loop for every
 * send it wrote, a cost the trivial route never paid.
 *
 *   tsx --conditions=@chatbus/source bench/api/materialiser-child.ts <databaseUrl> <topic> <groupId>
 *
 * Prints `ready` once started; stops on SIGTERM.
 */
import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import pino from "pino";

const [databaseUrl, topic, groupId] = process.argv.slice(2) as [string, string, string];
const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 });
const materialiser = await startMaterialiser({
  pool,
  brokers: (process.env.KAFKA_BROKERS ?? "127.0.0.1:9092").split(","),
  topic,
  groupId,
  logger: pino({ level: "warn" }),
});
console.log("ready");
process.once("SIGTERM", async () => {
  await materialiser.stop();
  await pool.end();
  process.exit(0);
});
