/**
 * Compares two projections row by row (every column but the wall-clock ones), with
 * `EXCEPT ALL` in both directions so that duplicated rows count too.
 */
import type pg from "pg";

/** The projection's tables, in the order they are compared and switched. */
export const projectionTables = [
  "conversations",
  "members",
  "messages",
  "receipts",
  "duplicate_messages",
  "event_log",
  "projection_offsets",
] as const;

/** Columns that hold the time of the apply, not something derived from the log. */
const wallClockColumns = new Set(["materialised_at", "updated_at"]);

/** How one table differs. */
export interface TableComparison {
  table: string;
  rowsA: number;
  rowsB: number;
  /** Rows of A that B lacks (counting duplicates). */
  onlyInA: number;
  onlyInB: number;
  /** Up to 3 of each, as JSON. */
  examplesOnlyInA: string[];
  examplesOnlyInB: string[];
}

/** The result of `verifyProjections`. */
export interface VerifyReport {
  schemaA: string;
  schemaB: string;
  identical: boolean;
  tables: TableComparison[];
}

/**
 * Compares the projections in schemas `a` and `b` of the database behind `pool`.
 * Schema names are quoted, so any schema works; nothing is changed.
 */
export async function verifyProjections(
  pool: pg.Pool | pg.PoolClient,
  a: string,
  b: string,
): Promise<VerifyReport> {
  const tables: TableComparison[] = [];
  const q = (name: string) => `"${name.replaceAll('"', '""')}"`;
  for (const table of projectionTables) {
    const { rows: cols } = await pool.query<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2
        ORDER BY ordinal_position`,
      [a, table],
    );
    if (cols.length === 0) throw new Error(`schema ${a} has no table ${table}; is it a migrated projection?`);
    const list = cols
      .map((c) => c.column_name)
      .filter((c) => !wallClockColumns.has(c))
      .map(q)
      .join(", ");
    const diff = async (x: string, y: string) => {
      const { rows } = await pool.query<{ n: string; examples: string[] | null }>(
        `SELECT count(*) AS n, (array_agg(row_to_json(d)::text))[1:3] AS examples
           FROM (SELECT ${list} FROM ${q(x)}.${table} EXCEPT ALL SELECT ${list} FROM ${q(y)}.${table}) d`,
      );
      return { n: Number(rows[0]!.n), examples: rows[0]!.examples ?? [] };
    };
    const count = async (s: string) =>
      Number((await pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${q(s)}.${table}`)).rows[0]!.n);
    const [ab, ba, rowsA, rowsB] = [await diff(a, b), await diff(b, a), await count(a), await count(b)];
    tables.push({
      table,
      rowsA,
      rowsB,
      onlyInA: ab.n,
      onlyInB: ba.n,
      examplesOnlyInA: ab.examples,
      examplesOnlyInB: ba.examples,
    });
  }
  return {
    schemaA: a,
    schemaB: b,
    identical: tables.every((t) => t.onlyInA === 0 && t.onlyInB === 0),
    tables,
  };
}
