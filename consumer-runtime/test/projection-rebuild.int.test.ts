/**
 * Rebuild: after a live run with edits, recalls and receipts, `chatbus projection
 * rebuild` replays the log into a fresh schema while the live materialiser keeps
 * applying new events, verifies, and switches readers. The live materialiser then
 * continues in the rebuilt tables. Checked three ways: the rebuild's own verify,
 * `chatbus projection verify` against a from-scratch reference run, and this test's
 * own row snapshot.
 */
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  createProjectionReader,
  type Materialiser,
  type RebuildProgress,
  rebuildProjection,
  startMaterialiser,
} from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databaseUrl, kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import {
  generateWorkload,
  produceWorkload,
  projectionSnapshot,
  sequenceViolations,
  waitUntilApplied,
} from "./materialiser-support.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
let topic: string;
let live: TestSchema;
let reference: TestSchema;
let materialiser: Materialiser | undefined;
let referenceMaterialiser: Materialiser | undefined;
let oldSchema: string | undefined;

function chatbus(args: string[]) {
  return spawnSync(
    process.execPath,
    ["--import", "tsx", "--conditions=@chatbus/source", join(root, "api/src/cli/main.ts"), ...args],
    {
      env: { ...process.env, DATABASE_URL: databaseUrl(), KAFKA_BROKERS: kafkaBrokers().join(",") },
      encoding: "utf8",
      timeout: 60_000,
    },
  );
}

beforeAll(async () => {
  topic = await createTestTopic("proj_rebuild", 6);
  live = await createTestSchema("proj_live");
  reference = await createTestSchema("proj_ref");
});

afterAll(async () => {
  await materialiser?.stop();
  await referenceMaterialiser?.stop();
  if (oldSchema) {
    const admin = new pg.Client({ connectionString: databaseUrl() });
    await admin.connect();
    await admin.query(`DROP SCHEMA IF EXISTS "${oldSchema}" CASCADE`);
    await admin.end();
  }
  await live?.cleanup();
  await reference?.cleanup();
});

describe("projection rebuild", () => {
  it("rebuilds while live, verifies, switches readers atomically, and equals a from-scratch run", async () => {
    const workload = generateWorkload(120, 3000, 11, { prefix: "rb" });
    const types = new Set(workload.map((e) => e.input.type));
    for (const t of ["chat.message.edited", "chat.message.recalled", "chat.receipt.read", "chat.member.left"])
      expect(types).toContain(t);
    materialiser = await startMaterialiser({
      pool: live.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("proj-live"),
    });
    await produceWorkload(topic, workload.slice(0, 2000));
    await waitUntilApplied(live.pool, topic);
    const reader = createProjectionReader(live.pool);
    const before = await reader.history("rb-1", { after: 0, limit: 1000 });

    // Readers keep working during the rebuild, and live events keep arriving.
    let readsDuringRebuild = 0;
    let rebuilding = true;
    const readLoop = (async () => {
      while (rebuilding) {
        const page = await reader.history("rb-1", { after: 0, limit: 1000 });
        expect(page.length).toBeGreaterThanOrEqual(before.length);
        readsDuringRebuild++;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const progress: RebuildProgress[] = [];
    const rebuild = rebuildProjection({
      databaseUrl: live.url,
      topic,
      brokers: kafkaBrokers(),
      onProgress: (p) => progress.push(p),
    });
    await produceWorkload(topic, workload.slice(2000, 2600));
    const result = await rebuild;
    rebuilding = false;
    await readLoop;
    oldSchema = result.otherSchema;

    expect(result.switched).toBe(true);
    expect(result.verify.identical).toBe(true);
    expect(readsDuringRebuild).toBeGreaterThan(0);
    expect(progress.at(-1)?.phase).toBe("done");
    expect(progress.some((p) => p.phase === "replay" && p.eventsTotal >= 2000)).toBe(true);
    // The switch really happened: the live schema's tables are new ones, the old ones moved.
    const moved = await live.pool.query(
      "SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = $1 AND tablename = 'messages'",
      [oldSchema],
    );
    expect(moved.rows[0].n).toBe(1);

    // The live materialiser continues in the rebuilt tables.
    await produceWorkload(topic, workload.slice(2600));
    await waitUntilApplied(live.pool, topic);
    expect(await sequenceViolations(live.pool)).toEqual([]);

    referenceMaterialiser = await startMaterialiser({
      pool: reference.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("proj-ref"),
    });
    await waitUntilApplied(reference.pool, topic);

    const cli = chatbus(["projection", "verify", live.schema, reference.schema]);
    expect(cli.stderr).toBe("");
    expect(cli.stdout).toContain("identical");
    expect(cli.status).toBe(0);

    const a = await projectionSnapshot(live.pool);
    const b = await projectionSnapshot(reference.pool);
    expect(a.event_log!.length).toBe(workload.length);
    for (const table of Object.keys(b)) expect({ table, rows: a[table] }).toEqual({ table, rows: b[table] });

    // And verify reports a difference when there is one.
    await reference.pool.query(
      "UPDATE messages SET edit_count = edit_count + 1 WHERE seq = 1 AND conversation_id = 'rb-1'",
    );
    const differs = chatbus(["projection", "verify", live.schema, reference.schema]);
    expect(differs.status).toBe(1);
    expect(differs.stdout).toContain("DIFFERENT");
    expect(chatbus(["projection", "--help"]).status).toBe(0);

    // The CLI rebuild (no live materialiser this time): progress on stderr, switch, exit 0.
    await materialiser.stop();
    materialiser = undefined;
    const cliRebuild = chatbus(["projection", "rebuild", "--schema", live.schema, "--topic", topic]);
    expect(cliRebuild.stderr).toMatch(/replay .*events .*ev\/s .*ETA/);
    expect(cliRebuild.stderr).toContain("done");
    expect(cliRebuild.stdout).toContain("verified identical");
    expect(cliRebuild.status).toBe(0);
    const second = /old one is in schema (\S+) /.exec(cliRebuild.stdout)?.[1];
    expect(second).toBeDefined();
    const cleanup = new pg.Client({ connectionString: databaseUrl() });
    await cleanup.connect();
    await cleanup.query(`DROP SCHEMA IF EXISTS "${second}" CASCADE`);
    await cleanup.end();
    await reference.pool.query(
      "UPDATE messages SET edit_count = edit_count - 1 WHERE seq = 1 AND conversation_id = 'rb-1'",
    );
    expect(chatbus(["projection", "verify", live.schema, reference.schema]).status).toBe(0);
    expect(chatbus(["projection", "verify", "only-one"]).status).toBe(2);
  });
});
