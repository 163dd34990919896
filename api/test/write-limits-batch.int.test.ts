/**
 * The shared write limits' group commit (migration 009, `chatbus_take_tokens_batch`):
 * writes that arrive while a check is in flight are decided together, in arrival
 * order, all-or-none per write. Two API apps with pools of their own send at once,
 * so their batches interleave on the same bucket rows: together they must admit no
 * more than the limit, and every 429 must name it.
 */
import { createProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import pg from "pg";
import pino from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ApiApp } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { configDefaults } from "../src/config.ts";
import type { ApiError } from "../src/errors.ts";
import { createWriteLimiter } from "../src/write-limits.ts";
import { eventually, type Harness, startHarness } from "./harness.ts";

let h: Harness;
let poolA: pg.Pool;
let poolB: pg.Pool;
let a: ApiApp;
let b: ApiApp;
let group: string;

/** A group bucket of 4 that refills at 1/s; ana's own of 40 (not the one that bites). */
const rateLimits = {
  ...configDefaults.rateLimits,
  groupMessagesPerSecond: 1,
  userMessagesPerSecond: 10,
  userWritesPerSecond: 10,
  burstSeconds: 4,
};
const logger = pino({ level: "silent" });

/** An API process of its own: its own pool, so its own limiter and batches. */
function appOn(pool: pg.Pool): Promise<ApiApp> {
  return buildApp({
    config: { ...h.config, rateLimits },
    logger,
    registry: new Registry(),
    bus: h.bus,
    projection: createProjectionReader(pool),
    pool,
    readiness: {},
  });
}

beforeAll(async () => {
  h = await startHarness("api_limits_batch", { rateLimits });
  poolA = new pg.Pool({ connectionString: h.schema.url, max: 4 });
  poolB = new pg.Pool({ connectionString: h.schema.url, max: 4 });
  [a, b] = await Promise.all([appOn(poolA), appOn(poolB)]);
  const ana = await h.login("ana");
  const res = await a.inject({
    method: "POST",
    url: "/v1/conversations",
    headers: { authorization: `Bearer ${ana}` },
    payload: { kind: "group", members: ["ben", "cy"] },
  });
  expect(res.statusCode).toBe(202);
  group = res.json().conversationId as string;
  await eventually("the group", () => createProjectionReader(h.schema.pool).isMember(group, "cy"));
});

afterAll(async () => {
  await a?.close();
  await b?.close();
  await poolA?.end();
  await poolB?.end();
  await h?.close();
});

describe("group commit of the shared write limits", () => {
  it("two processes sending at once admit no more than the conversation's limit together", async () => {
    const tokens = await Promise.all(["ana", "ben", "cy"].map((user) => h.login(user)));
    const perApp = 30;
    const started = performance.now();
    const results = await Promise.all(
      Array.from({ length: perApp * 2 }, (_, i) =>
        (i % 2 === 0 ? a : b).inject({
          method: "POST",
          url: `/v1/conversations/${group}/messages`,
          headers: { authorization: `Bearer ${tokens[i % 3]}` },
          payload: { content: { type: "text", text: `c${i}` } },
        }),
      ),
    );
    const seconds = (performance.now() - started) / 1000;
    const accepted = results.filter((r) => r.statusCode === 202).length;
    const refused = results.filter((r) => r.statusCode === 429);
    expect(accepted + refused.length).toBe(perApp * 2);
    // Bucket of 4 refilling at 1/s, shared: per-process buckets would admit 8 or more.
    expect(accepted).toBeGreaterThanOrEqual(4);
    expect(accepted).toBeLessThanOrEqual(4 + Math.floor(seconds * 1));
    for (const res of refused) {
      expect(Number(res.headers["retry-after"])).toBeGreaterThanOrEqual(1);
      expect(res.json().error.message).toContain("1 messages/s in this group conversation");
    }
    // Both processes admitted from the same bucket: neither had one of its own.
    const acceptedBy = (app: number) =>
      results.filter((r, i) => i % 2 === app && r.statusCode === 202).length;
    expect(acceptedBy(0) + acceptedBy(1)).toBe(accepted);
  });

  it("one batch decides in arrival order, all-or-none per write", async () => {
    // Directly on the limiter: the first admit goes alone, the next five wait for it
    // and go together in one call. `zoe` has 2 message tokens, `g-order` 3.
    const limiter = createWriteLimiter(
      poolA,
      { ...rateLimits, groupMessagesPerSecond: 0.75, userMessagesPerSecond: 0.5 },
      logger,
    );
    try {
      const conversationId = `g-order-${Date.now()}`;
      const write = (userId: string) =>
        limiter.admit({
          what: "message",
          userId,
          conversationId,
          conversationKind: "group",
          priority: "normal",
        });
      const outcomes = await Promise.allSettled(
        ["zoe", "zoe", "zoe", "yan", "zoe", "xi"].map((user) => write(`${user}-${conversationId}`)),
      );
      const verdicts = outcomes.map((o) =>
        o.status === "fulfilled"
          ? "ok"
          : (o.reason as ApiError).message.includes("per user")
            ? "user"
            : "conv",
      );
      // zoe's third write is short of her own tokens and takes none of the
      // conversation's, so yan still gets the conversation's last token; xi is too late.
      expect(verdicts).toEqual(["ok", "ok", "user", "ok", "user", "conv"]);
    } finally {
      limiter.close();
    }
  });
});
