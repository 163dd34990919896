/**
 * Dead letters at scale, against real PostgreSQL: 12,000 dead letters inserted with
 * SQL, paged through with the API (`GET /v1/dead-letters?cursor=`) and with the CLI
 * (`chatbus dead-letters list --cursor`): every one is visited exactly once (distinct
 * ids = 12,000, equal to the table's ids) in strictly descending order, also while
 * new dead letters are inserted between pages (those are newer than the first page and
 * appear at the top of the next listing), and with a subscription filter.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { run as deadLettersCli } from "../src/cli/dead-letters.ts";
import { type Harness, operatorKey, startHarness } from "./harness.ts";

let h: Harness;
const total = 12_000;

/** Inserts `n` dead letters with SQL; offsets start at `from` (each row is its own record). */
async function insertDeadLetters(n: number, from: number): Promise<void> {
  await h.schema.pool.query(
    `INSERT INTO dead_letters (subscription, topic, partition, "offset", record_key, headers, value,
       event_type, failure_class, error_code, error_message, attempts, first_failed_at, last_failed_at, status)
     SELECT (ARRAY['alpha','beta','gamma'])[1 + i % 3], 'chat.events', i % 12, i, 'conv-' || (i % 97),
       '{}'::jsonb, convert_to('{"n":' || i || '}', 'UTF8'), 'chat.message.sent', 'business',
       'CHATBUS_BUSINESS', 'failed ' || i, 1, now(), now(),
       CASE WHEN i % 10 = 0 THEN 'discarded' ELSE 'waiting' END
     FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS i`,
    [from, n],
  );
}

async function allIds(where = "TRUE", params: unknown[] = []): Promise<string[]> {
  const { rows } = await h.schema.pool.query<{ id: string }>(
    `SELECT id::text FROM dead_letters WHERE ${where} ORDER BY dead_letters.id DESC`,
    params,
  );
  return rows.map((r) => r.id);
}

/** Checks a visit: no id twice, strictly descending, exactly `expected`. */
function expectVisitedOnce(visited: string[], expected: string[]): void {
  expect(new Set(visited).size).toBe(visited.length);
  for (let i = 1; i < visited.length; i++) {
    if (!(BigInt(visited[i]!) < BigInt(visited[i - 1]!))) {
      throw new Error(`not strictly descending at ${i}: ${visited[i - 1]} then ${visited[i]}`);
    }
  }
  expect(visited.length).toBe(expected.length);
  expect(visited).toEqual(expected);
}

/** Pages through the API; `between` runs after each page (e.g. inserts more). */
async function pageApi(
  query: Record<string, string>,
  between: (page: number) => Promise<void> = async () => {},
): Promise<string[]> {
  const visited: string[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < 1000; page++) {
    const params = new URLSearchParams({ ...query, ...(cursor ? { cursor } : {}) });
    const res = await h.app.inject({
      method: "GET",
      url: `/v1/dead-letters?${params}`,
      headers: { authorization: `Bearer ${operatorKey}` },
    });
    expect(res.statusCode, res.body).toBe(200);
    const body = res.json() as { items: { id: string }[]; nextCursor: string | null };
    visited.push(...body.items.map((d) => d.id));
    cursor = body.nextCursor;
    if (!cursor) return visited;
    await between(page);
  }
  throw new Error("more than 1000 pages");
}

beforeAll(async () => {
  h = await startHarness("dl_scale", {}, 1);
  await insertDeadLetters(total, 1);
});

afterAll(async () => {
  await h?.close();
  vi.unstubAllEnvs();
});

describe(`${total.toLocaleString("en")} dead letters`, () => {
  it("the API's cursor visits every one exactly once, newest first", async () => {
    const expected = await allIds();
    expect(expected).toHaveLength(total);
    expectVisitedOnce(await pageApi({ limit: "1000" }), expected);
    // A page size that does not divide the total.
    expectVisitedOnce(await pageApi({ limit: "997" }), expected);
  });

  it("with a subscription and status filter", async () => {
    const expected = await allIds("subscription = $1 AND status = $2", ["beta", "waiting"]);
    expect(expected.length).toBe(3600);
    expectVisitedOnce(await pageApi({ limit: "500", subscription: "beta", status: "waiting" }), expected);
    const gamma = await allIds("subscription = $1", ["gamma"]);
    expectVisitedOnce(await pageApi({ limit: "1000", subscription: "gamma" }), gamma);
  });

  it("while new dead letters are inserted between pages", async () => {
    const before = await allIds();
    let next = 1_000_000;
    const visited = await pageApi({ limit: "700" }, async () => {
      await insertDeadLetters(37, next);
      next += 37;
    });
    // Every dead letter that existed at the start, once; the new ones are above the first page.
    expectVisitedOnce(visited, before);
    const after = await allIds();
    expect(after.length).toBeGreaterThan(before.length);
    const fresh = await pageApi({ limit: "1000" });
    expectVisitedOnce(fresh, after);
    expect(fresh.slice(0, after.length - before.length).every((id) => !before.includes(id))).toBe(true);
  });

  it("the CLI pages through every one exactly once, newest first", async () => {
    vi.stubEnv("CHATBUS_API_URL", h.url);
    vi.stubEnv("CHATBUS_OPERATOR_KEY", operatorKey);
    const expected = await allIds();
    const visited: string[] = [];
    let cursor: string | null = null;
    let inserted = 0;
    const out: string[] = [];
    const log = vi.spyOn(console, "log").mockImplementation((line: unknown) => void out.push(String(line)));
    try {
      for (let page = 0; page < 100; page++) {
        out.length = 0;
        const args = ["list", "--json", "--limit", "1000", ...(cursor ? ["--cursor", cursor] : [])];
        expect(await deadLettersCli(args)).toBe(0);
        const body = JSON.parse(out.join("\n")) as { items: { id: string }[]; nextCursor: string | null };
        visited.push(...body.items.map((d) => d.id));
        cursor = body.nextCursor;
        if (!cursor) break;
        // New dead letters between CLI pages too.
        await insertDeadLetters(11, 2_000_000 + inserted);
        inserted += 11;
      }
      // --all walks every page itself (with progress on stderr).
      out.length = 0;
      const progress: string[] = [];
      const stderr = vi.spyOn(process.stderr, "write").mockImplementation((chunk: unknown) => {
        progress.push(String(chunk));
        return true;
      });
      const everything = await deadLettersCli(["list", "--all", "--json"]).finally(() =>
        stderr.mockRestore(),
      );
      expect(everything).toBe(0);
      const all = JSON.parse(out.join("\n")) as { items: { id: string }[]; nextCursor: null };
      expectVisitedOnce(
        all.items.map((d) => d.id),
        await allIds(),
      );
      expect(progress.some((line) => /^fetched \d+ dead letters/.test(line))).toBe(true);
      // The table view offers the next command with the cursor.
      out.length = 0;
      expect(await deadLettersCli(["list", "--limit", "5"])).toBe(0);
      expect(out.join("\n")).toMatch(/more: chatbus dead-letters list --cursor \d+/);
    } finally {
      log.mockRestore();
    }
    expectVisitedOnce(visited, expected);
    expect(inserted).toBeGreaterThan(0);
  });

  it("refuses a cursor that is not an id", async () => {
    for (const cursor of ["-1", "abc", "99999999999999999999", "9223372036854775808"]) {
      const res = await h.app.inject({
        method: "GET",
        url: `/v1/dead-letters?cursor=${cursor}`,
        headers: { authorization: `Bearer ${operatorKey}` },
      });
      expect(res.statusCode, `${cursor}: ${res.body}`).toBe(400);
      expect(res.json().error.message).toContain("cursor");
    }
  });
});
