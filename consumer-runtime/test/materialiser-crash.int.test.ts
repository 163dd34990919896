/**
 * Effectively-once under crashes: a materialiser in a child process is killed with
 * SIGKILL twice while it applies thousands of events in hundreds of conversations,
 * and restarted. Its projection must equal that of an undisturbed run over the same
 * log, and every conversation's sequence numbers must be 1..n.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Materialiser, startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import {
  appliedCount,
  generateWorkload,
  produceWorkload,
  projectionSnapshot,
  sequenceViolations,
  waitUntilApplied,
} from "./materialiser-support.ts";

const here = dirname(fileURLToPath(import.meta.url));
const TOTAL = 8000;
let topic: string;
let crashed: TestSchema;
let calm: TestSchema;
let child: ChildProcess | undefined;
let undisturbed: Materialiser | undefined;

function startChild(group: string): Promise<ChildProcess> {
  const proc = spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@chatbus/source", join(here, "materialiser-process.ts")],
    {
      env: {
        ...process.env,
        DATABASE_URL: crashed.url,
        KAFKA_BROKERS: kafkaBrokers().join(","),
        CHATBUS_TOPIC: topic,
        MATERIALISER_GROUP: group,
        // Small fetches: many small transactions, so that a kill lands mid-run.
        MATERIALISER_MAX_BYTES: "4096",
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  return new Promise((resolve, reject) => {
    proc.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("ready")) resolve(proc);
    });
    proc.on("exit", (code) => reject(new Error(`materialiser process exited with ${code} before ready`)));
  });
}

async function killWhenApplied(proc: ChildProcess, atLeast: number): Promise<number> {
  const deadline = Date.now() + 90_000;
  for (;;) {
    const n = await appliedCount(crashed.pool, topic);
    if (n >= atLeast) {
      proc.kill("SIGKILL");
      await new Promise((resolve) => proc.once("exit", resolve));
      return n;
    }
    if (Date.now() > deadline) throw new Error(`only ${n} of ${atLeast} events applied before the deadline`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

beforeAll(async () => {
  topic = await createTestTopic("mat_crash", 12);
  crashed = await createTestSchema("mat_crash");
  calm = await createTestSchema("mat_calm");
  await produceWorkload(topic, generateWorkload(300, TOTAL, 7, { textBytes: 300 }));
});

afterAll(async () => {
  child?.kill("SIGKILL");
  await undisturbed?.stop();
  await crashed?.cleanup();
  await calm?.cleanup();
});

describe("materialiser under kill -9", () => {
  it("applies every event exactly once across two SIGKILLs and equals an undisturbed run", async () => {
    const group = uniqueName("mat-crash");
    child = await startChild(group);
    const first = await killWhenApplied(child, TOTAL * 0.2);
    child = await startChild(group);
    const second = await killWhenApplied(child, TOTAL * 0.55);
    // Both kills happened while work was left, so each restart had to resume mid-log.
    expect(first).toBeLessThan(TOTAL);
    expect(second).toBeLessThan(TOTAL);
    child = await startChild(group);
    await waitUntilApplied(crashed.pool, topic, 120_000);
    child.kill("SIGTERM");

    undisturbed = await startMaterialiser({
      pool: calm.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-calm"),
    });
    await waitUntilApplied(calm.pool, topic, 120_000);

    expect(await sequenceViolations(crashed.pool)).toEqual([]);
    const a = await projectionSnapshot(crashed.pool);
    const b = await projectionSnapshot(calm.pool);
    expect(a.event_log!.length).toBe(TOTAL);
    expect(a.conversations!.length).toBe(300);
    for (const table of Object.keys(b)) expect({ table, rows: a[table] }).toEqual({ table, rows: b[table] });
    const dead = await crashed.pool.query("SELECT count(*)::int AS n FROM dead_letters");
    expect(dead.rows[0].n).toBe(0);
  });
});
