/**
 * `chatbus projection rebuild|verify`: rebuild the conversation projection from the
 * log (progress on stderr) and compare two projections.
 */
import { parseArgs } from "node:util";
import type { RebuildProgress } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";

// Loaded on use, so that `chatbus --help` does not load the runtime.
const runtime = () => import("@chatbus/consumer-runtime/materialiser");

/** One line for `chatbus --help`. */
export const summary = "rebuild the conversation projection from the log, or verify two projections";

const usage = `usage:
  chatbus projection rebuild [--schema NAME] [--topic NAME] [--no-switch] [--timeout SECONDS]
  chatbus projection verify SCHEMA_A SCHEMA_B [--json]

rebuild  replays the topic from the beginning into a fresh schema, shows progress on
         stderr (events done, events/s, ETA), catches up with the live projection,
         verifies that both are identical and switches readers to the rebuilt tables
         in one transaction. The old tables are kept in the fresh schema (printed at
         the end); drop it when satisfied. Nothing changes for readers on failure.
  --schema     the live projection schema (default: DATABASE_URL's search_path, else public)
  --topic      the topic (default: CHATBUS_TOPIC, else chat.events)
  --no-switch  build and verify only; readers stay on the current projection
  --timeout    seconds to wait for the live projection to meet the rebuilt one (default 60)

verify   compares the projections in two schemas row by row (apart from wall-clock
         columns) and prints a table of differences.
  --json       print the report as JSON

environment: DATABASE_URL (postgres://postgres@127.0.0.1:5432/chatbus), KAFKA_BROKERS (127.0.0.1:9092)
exit codes: 0 done (identical), 1 failed or different, 2 bad usage`;

function databaseUrl(schema?: string): string {
  const url = new URL(process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/chatbus");
  if (schema) url.searchParams.set("options", `-c search_path=${schema}`);
  return url.toString();
}

function bar(p: RebuildProgress): string {
  const ratio = p.eventsTotal > 0 ? Math.min(1, p.eventsDone / p.eventsTotal) : 1;
  const width = 24;
  const filled = Math.round(ratio * width);
  const eta = p.etaSeconds === null ? "--" : `${Math.ceil(p.etaSeconds)}s`;
  return `${p.phase.padEnd(8)} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(ratio * 100).toFixed(0).padStart(3)}% ${p.eventsDone.toLocaleString("en")}/${p.eventsTotal.toLocaleString("en")} events  ${p.eventsPerSecond.toLocaleString("en")} ev/s  ETA ${eta}`;
}

async function rebuild(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      schema: { type: "string" },
      topic: { type: "string" },
      "no-switch": { type: "boolean" },
      timeout: { type: "string" },
    },
    allowPositionals: false,
  });
  const timeout = values.timeout === undefined ? 60 : Number(values.timeout);
  if (!Number.isFinite(timeout) || timeout <= 0) {
    console.error(
      `chatbus projection: --timeout must be a positive number of seconds; got ${values.timeout}`,
    );
    return 2;
  }
  const tty = process.stderr.isTTY;
  let lastLine = 0;
  const { rebuildProjection } = await runtime();
  const result = await rebuildProjection({
    databaseUrl: databaseUrl(values.schema),
    ...(values.topic ? { topic: values.topic } : {}),
    ...(process.env.KAFKA_BROKERS ? { brokers: process.env.KAFKA_BROKERS.split(",") } : {}),
    noSwitch: values["no-switch"] ?? false,
    switchTimeoutMs: timeout * 1000,
    onProgress: (p) => {
      if (tty) process.stderr.write(`\r${bar(p)}\x1b[K`);
      else if (Date.now() - lastLine > 1000 || p.phase !== "replay") {
        lastLine = Date.now();
        process.stderr.write(`${bar(p)}\n`);
      }
    },
  });
  if (tty) process.stderr.write("\n");
  console.log(
    result.switched
      ? `rebuilt ${result.events} events in ${result.seconds.toFixed(1)} s; verified identical; readers of schema ${result.schema} now use the rebuilt projection. The old one is in schema ${result.otherSchema} (DROP SCHEMA "${result.otherSchema}" CASCADE when satisfied).`
      : `rebuilt ${result.events} events in ${result.seconds.toFixed(1)} s into schema ${result.otherSchema}; verified identical to ${result.schema}; not switched (--no-switch).`,
  );
  return 0;
}

async function verify(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { json: { type: "boolean" } },
    allowPositionals: true,
  });
  if (positionals.length !== 2) {
    console.error(`chatbus projection verify: give two schema names.\n\n${usage}`);
    return 2;
  }
  const pool = new pg.Pool({ connectionString: databaseUrl(), max: 1 });
  try {
    const { verifyProjections } = await runtime();
    const report = await verifyProjections(pool, positionals[0]!, positionals[1]!);
    if (values.json) console.log(JSON.stringify(report, null, 2));
    else {
      const rows = [
        ["table", `rows ${report.schemaA}`, `rows ${report.schemaB}`, "only in A", "only in B"],
        ...report.tables.map((t) => [t.table, t.rowsA, t.rowsB, t.onlyInA, t.onlyInB].map(String)),
      ];
      const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join("  "));
      for (const t of report.tables) {
        for (const e of t.examplesOnlyInA) console.log(`only in ${report.schemaA}.${t.table}: ${e}`);
        for (const e of t.examplesOnlyInB) console.log(`only in ${report.schemaB}.${t.table}: ${e}`);
      }
      console.log(report.identical ? "identical" : "DIFFERENT");
    }
    return report.identical ? 0 : 1;
  } finally {
    await pool.end();
  }
}

/** Runs `chatbus projection …`; returns the exit code. */
export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "--help" || sub === "-h" || sub === "help") {
    console.log(usage);
    return 0;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(usage);
    return 0;
  }
  try {
    if (sub === "rebuild") return await rebuild(rest);
    if (sub === "verify") return await verify(rest);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" || code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
      console.error(`chatbus projection: ${(error as Error).message}\n\n${usage}`);
      return 2;
    }
    console.error(`chatbus projection: ${(error as Error).message}`);
    return 1;
  }
  console.error(`chatbus projection: unknown or missing subcommand ${JSON.stringify(sub ?? "")}\n\n${usage}`);
  return 2;
}
