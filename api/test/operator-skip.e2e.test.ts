/**
 * Operator skip end to end (issue 12 item 4, issue 17 item 4), joining the operator
 * side (route, CLI) with the runtime side (stuck records in the published status,
 * skip requests applied as `operator` dead letters).
 *
 * NEEDS THE RUNTIME'S SKIP SUPPORT: it passes only once the runtime publishes `stuck`
 * and `oldestInFlightMs`, applies `subscription_skips` and takes the `stuckAfterMs`
 * option (the runtime engineer's branch). On a branch without it, createRuntime
 * refuses the unknown option and the test fails.
 *
 * A subscription run through `createRuntime` whose handler always fails with a system
 * error for one event: after the stuck threshold (3 s here) `GET
 * /v1/subscriptions` shows the record (partition, offset, type, conversation, error,
 * attempts, since) and the oldest in-flight age; `chatbus subscriptions skip` turns it
 * into a dead letter of class `operator` recorded with who, and then the conversation
 * moves on: the event sent after it in the same conversation is handled, in order,
 * and the skipped one never is. Another conversation was never held.
 */
import { createRuntime, type Runtime } from "@chatbus/consumer-runtime";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import { run as subscriptionsCli } from "../src/cli/subscriptions.ts";
import { eventually, type Harness, operatorKey, startHarness } from "./harness.ts";

let h: Harness;
let runtime: Runtime;
let token: string;
const subscription = uniqueName("skip_e2e");
/** Texts handled, in order, and attempts per text. */
const handled: string[] = [];
const attempts = new Map<string, number>();
const operator = { authorization: `Bearer ${operatorKey}`, "x-chatbus-operator": "olga" };

async function createConversation(): Promise<string> {
  const res = await h.app.inject({
    method: "POST",
    url: "/v1/conversations",
    headers: { authorization: `Bearer ${token}` },
    payload: { kind: "group", members: ["ben"] },
  });
  expect(res.statusCode).toBe(202);
  const id: string = res.json().conversationId;
  // Sends are for members, and membership is what the materialiser has applied.
  await eventually("the conversation to be materialised", async () => {
    const got = await h.app.inject({
      method: "GET",
      url: `/v1/conversations/${id}`,
      headers: { authorization: `Bearer ${token}` },
    });
    return got.statusCode === 200;
  });
  return id;
}

async function send(conversationId: string, text: string): Promise<{ partition: number; offset: string }> {
  const res = await h.app.inject({
    method: "POST",
    url: `/v1/conversations/${conversationId}/messages`,
    headers: { authorization: `Bearer ${token}` },
    payload: { content: { type: "text", text } },
  });
  expect(res.statusCode).toBe(202);
  return res.json();
}

interface StuckJson {
  partition: number;
  offset: string;
  eventType: string | null;
  conversationId: string | null;
  error: string;
  attempts: number;
  since: string;
}

beforeAll(async () => {
  h = await startHarness("skip_e2e", {}, 2);
  token = await h.login("ana");
  const options = {
    group: subscription,
    topic: h.topic,
    brokers: kafkaBrokers(),
    pool: h.schema.pool,
    fromBeginning: true,
    statusIntervalMs: 500,
    sessionTimeoutMs: 6000,
    systemRetry: { initialDelayMs: 200, maxDelayMs: 2000 },
    // One stuck record must not open the breaker: this test is about the skip.
    breaker: { volumeThreshold: 1_000_000 },
    logger: pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" }),
    // The runtime's stuck threshold (default 60 s), shortened.
    stuckAfterMs: 3_000,
  };
  runtime = createRuntime(options);
  runtime.on("chat.message.sent", async (event) => {
    const text = event.data.content.type === "text" ? event.data.content.text : "";
    attempts.set(text, (attempts.get(text) ?? 0) + 1);
    if (text === "stuck") throw new Error("notification service refused the call (HTTP 503)");
    handled.push(text);
  });
  await runtime.start();
});

afterAll(async () => {
  await runtime?.stop();
  await h?.close();
  vi.unstubAllEnvs();
});

describe("operator skip end to end", () => {
  it("shows the stuck record, skips it with the CLI, and the conversation moves on", async () => {
    const held = await createConversation();
    const other = await createConversation();
    await send(held, "before");
    const stuck = await send(held, "stuck");
    await send(held, "after");
    await send(other, "elsewhere");
    await eventually("the other conversation's message", () => handled.includes("elsewhere"), 60_000);
    expect(handled).toContain("before");
    expect(handled).not.toContain("after");

    // After the stuck threshold the record is listed.
    const row = await eventually(
      "the stuck record in GET /v1/subscriptions",
      async () => {
        const res = await h.app.inject({ method: "GET", url: "/v1/subscriptions", headers: operator });
        const found = res
          .json()
          .subscriptions.find((s: { subscription: string }) => s.subscription === subscription);
        return found?.stuck?.length > 0 ? found : undefined;
      },
      150_000,
    );
    const record = row.stuck[0] as StuckJson;
    expect(record).toMatchObject({
      partition: stuck.partition,
      offset: stuck.offset,
      eventType: "chat.message.sent",
      conversationId: held,
    });
    expect(record.error).toContain("HTTP 503");
    expect(record.attempts).toBeGreaterThan(1);
    expect(Date.parse(record.since)).toBeLessThan(Date.now() - 2_000);
    expect(row.inFlight).toBeGreaterThanOrEqual(1);
    expect(row.oldestInFlightMs).toBeGreaterThan(2_000);

    vi.stubEnv("CHATBUS_API_URL", h.url);
    vi.stubEnv("CHATBUS_OPERATOR_KEY", operatorKey);
    vi.stubEnv("CHATBUS_OPERATOR", "olga");
    const out: string[] = [];
    const log = vi.spyOn(console, "log").mockImplementation((line: unknown) => void out.push(String(line)));
    const progress = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    let code: number;
    try {
      code = await subscriptionsCli([
        "skip",
        subscription,
        String(stuck.partition),
        stuck.offset,
        "--wait",
        "60",
      ]);
    } finally {
      log.mockRestore();
      progress.mockRestore();
    }
    expect(code, out.join("\n")).toBe(0);
    const deadLetterId = /dead letter (\d+)/.exec(out.join("\n"))?.[1];
    expect(deadLetterId).toBeDefined();

    const dead = await h.app.inject({
      method: "GET",
      url: `/v1/dead-letters/${deadLetterId}`,
      headers: operator,
    });
    expect(dead.json()).toMatchObject({
      subscription,
      failureClass: "operator",
      partition: stuck.partition,
      offset: stuck.offset,
      conversationId: held,
    });
    expect(out.join("\n")).toContain("requested by operator:olga");

    // The partition moved on: "after" is handled, in order, and "stuck" never was.
    await eventually("the message after the skipped one", () => handled.includes("after"), 60_000);
    const inHeld = handled.filter((t) => ["before", "stuck", "after"].includes(t));
    expect(inHeld).toEqual(["before", "after"]);
    expect(attempts.get("after")).toBe(1);
    const settled = await eventually(
      "the stuck list to clear",
      async () => {
        const res = await h.app.inject({ method: "GET", url: "/v1/subscriptions", headers: operator });
        const found = res
          .json()
          .subscriptions.find((s: { subscription: string }) => s.subscription === subscription);
        return found?.stuck?.length === 0 && found.skipsPending.length === 0 ? found : undefined;
      },
      30_000,
    );
    expect(settled.breaker).toBe("closed");
  });
});
