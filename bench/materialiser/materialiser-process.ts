/**
 * The materialiser in its own process for the latency measurement, as in production
 * (the sender and the materialiser do not share an event loop). Env: DATABASE_URL (with
 * search_path), KAFKA_BROKERS, CHATBUS_TOPIC, MATERIALISER_GROUP, TRANSACTIONS_AT_ONCE (optional).
 * Prints "ready".
 */
import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 13 });
const turns = process.env.TRANSACTIONS_AT_ONCE;
const materialiser = await startMaterialiser({
  pool,
  groupId: process.env.MATERIALISER_GROUP ?? "bench",
  ...(turns === undefined ? {} : { transactionsAtOnce: Number(turns) }),
});
process.stdout.write("ready\n");
process.on("SIGTERM", () => {
  void materialiser.stop().then(() => pool.end().then(() => process.exit(0)));
});
