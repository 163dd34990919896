/**
 * Rebuild liveness (correctness review M5): a long reader holding a projection table
 * makes the switch's lock wait time out; the switch is rolled back and tried again,
 * and succeeds once the reader is done, instead of failing the whole rebuild.
 */
import { Writable } from "node:stream";
import { rebuildProjection, startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { generateWorkload, produceWorkload, waitUntilApplied } from "./materialiser-support.ts";

let live: TestSchema;
let topic: string;
beforeAll(async () => {
  live = await createTestSchema("proj_switch");
  topic = await createTestTopic("proj_switch", 2);
});
afterAll(async () => {
  await live?.cleanup();
});

describe("rebuild switch under a long reader", () => {
  it("retries the switch after a lock timeout and switches once the reader is done", async () => {
    await produceWorkload(topic, generateWorkload(10, 300, 5, { prefix: "sw" }));
    const materialiser = await startMaterialiser({
      pool: live.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("proj-switch"),
    });
    const reader = new pg.Client({ connectionString: live.url });
    await reader.connect();
    const lines: string[] = [];
    const logger = pino(
      { level: "warn" },
      new Writable({
        write(chunk, _encoding, done) {
          lines.push(chunk.toString());
          done();
        },
      }),
    );
    let otherSchema: string | undefined;
    try {
      await waitUntilApplied(live.pool, topic, 60_000);
      // A reader that keeps a projection table (ACCESS SHARE) for a while.
      await reader.query("BEGIN");
      await reader.query("SELECT count(*) FROM members");
      const released = new Promise<void>((resolve) =>
        setTimeout(() => {
          reader.query("COMMIT").then(
            () => resolve(),
            () => resolve(),
          );
        }, 4000),
      );
      const result = await rebuildProjection({
        databaseUrl: live.url,
        topic,
        brokers: kafkaBrokers(),
        lockTimeoutMs: 300,
        switchTimeoutMs: 60_000,
        logger,
      });
      await released;
      otherSchema = result.otherSchema;
      expect(result.switched).toBe(true);
      expect(result.verify.identical).toBe(true);
      expect(lines.some((l) => l.includes("waited too long for a lock"))).toBe(true);
    } finally {
      await reader.end().catch(() => {});
      await materialiser.stop();
      if (otherSchema) await live.pool.query(`DROP SCHEMA IF EXISTS "${otherSchema}" CASCADE`);
    }
  });
});
