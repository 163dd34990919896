/**
 * A materialiser in its own process, for the kill -9 test:
 *   DATABASE_URL (with search_path) KAFKA_BROKERS CHATBUS_TOPIC MATERIALISER_GROUP
 *   [MATERIALISER_MAX_BYTES] tsx --conditions=@chatbus/source materialiser-process.ts
 * Prints "ready" once consuming; stops cleanly on SIGTERM.
 */

import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 8 });
const materialiser = await startMaterialiser({
  pool,
  groupId: process.env.MATERIALISER_GROUP ?? "chatbus-materialiser",
  maxBytesPerPartition: Number(process.env.MATERIALISER_MAX_BYTES ?? 1024 * 1024),
  sessionTimeoutMs: 6000,
});
process.stdout.write("ready\n");
process.on("SIGTERM", () => {
  void materialiser.stop().then(() => pool.end().then(() => process.exit(0)));
});
