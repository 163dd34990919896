/**
 * Operator skips through the API and the CLI, against real PostgreSQL: a status row
 * (published with the runtime's own store function) says a subscription is stuck on a
 * record; the operator sees it in `GET /v1/subscriptions` and `chatbus subscriptions`,
 * asks for a skip (route and CLI), hostile input is refused naming the field, and the
 * request shows as applied once the runtime's side marks it (here `markSkipApplied`
 * stands in for the runtime, whose own tests cover applying it).
 */

import { markSkipApplied } from "@chatbus/consumer-runtime/operator";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { recordDeadLetter } from "../../consumer-runtime/src/dead-letters/store.ts";
import { publishSubscriptionStatus } from "../../consumer-runtime/src/status/store.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import { run as subscriptionsCli } from "../src/cli/subscriptions.ts";
import { type Harness, operatorKey, startHarness } from "./harness.ts";

let h: Harness;
const subscription = uniqueName("notify");
const since = new Date(Date.now() - 95_000).toISOString();

beforeAll(async () => {
  h = await startHarness("api_skip", {}, 2);
  await publishSubscriptionStatus(h.schema.pool, subscription, "instance-a", {
    group: `chatbus.${subscription}`,
    topic: h.topic,
    breaker: "closed",
    inFlight: 3,
    oldestInFlightMs: 95_000,
    stuck: [
      {
        partition: 1,
        offset: "41",
        eventType: "chat.message.sent",
        conversationId: "conv-stuck",
        error: "connect ECONNREFUSED 10.0.0.9:443",
        attempts: 17,
        since,
      },
    ],
    processed: 10,
    failed: 17,
    deadLettered: 0,
    startedAt: new Date().toISOString(),
    partitions: [
      { partition: 0, committedOffset: "12", highWatermark: "12", lag: 0, paused: false },
      { partition: 1, committedOffset: "41", highWatermark: "50", lag: 9, paused: false },
    ],
  });
});

afterAll(async () => {
  await h?.close();
  vi.unstubAllEnvs();
});

const operator = (name = "alice") => ({ authorization: `Bearer ${operatorKey}`, "x-chatbus-operator": name });

function postSkip(body: unknown, name = subscription) {
  return h.app.inject({
    method: "POST",
    url: `/v1/subscriptions/${encodeURIComponent(name)}/skip`,
    headers: operator(),
    payload: body as object,
  });
}

/** Captures console.log and console.error lines while `fn` runs. */
async function captured(fn: () => Promise<number>): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = vi.spyOn(console, "log").mockImplementation((line: unknown) => void out.push(String(line)));
  const error = vi.spyOn(console, "error").mockImplementation((line: unknown) => void err.push(String(line)));
  const stderr = vi.spyOn(process.stderr, "write").mockImplementation((chunk: unknown) => {
    err.push(String(chunk));
    return true;
  });
  try {
    const code = await fn();
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    log.mockRestore();
    error.mockRestore();
    stderr.mockRestore();
  }
}

describe("stuck records and in-flight work in GET /v1/subscriptions", () => {
  it("shows the stuck record, events in flight and the oldest in-flight age", async () => {
    const res = await h.app.inject({ method: "GET", url: "/v1/subscriptions", headers: operator() });
    expect(res.statusCode).toBe(200);
    const found = res
      .json()
      .subscriptions.find((s: { subscription: string }) => s.subscription === subscription);
    expect(found).toMatchObject({
      inFlight: 3,
      oldestInFlightMs: 95_000,
      stuck: [
        {
          partition: 1,
          offset: "41",
          eventType: "chat.message.sent",
          conversationId: "conv-stuck",
          error: "connect ECONNREFUSED 10.0.0.9:443",
          attempts: 17,
          since,
          instanceId: "instance-a",
        },
      ],
    });
  });

  it("needs the operator key", async () => {
    const token = await h.login("mallory");
    const res = await h.app.inject({
      method: "POST",
      url: `/v1/subscriptions/${subscription}/skip`,
      headers: { authorization: `Bearer ${token}` },
      payload: { partition: 1, offset: "41" },
    });
    expect(res.statusCode).toBe(403);
  });
});

describe("POST /v1/subscriptions/:subscription/skip", () => {
  it.each([
    [{ partition: 1, offset: -1 }, "offset"],
    [{ partition: 1, offset: "-1" }, "offset"],
    [{ partition: 1, offset: "12abc" }, "offset"],
    [{ partition: 1, offset: "99999999999999999999" }, "offset"],
    [{ partition: 1, offset: "9223372036854775808" }, "offset"],
    [{ partition: 1, offset: 1e300 }, "offset"],
    [{ partition: 1, offset: 2 ** 60 }, "offset"],
    [{ partition: 1, offset: 41.5 }, "offset"],
    [{ partition: 1, offset: null }, "offset"],
    [{ partition: 1 }, "offset"],
    [{ partition: -1, offset: "41" }, "partition"],
    [{ partition: "1", offset: "41" }, "partition"],
    [{ partition: 2 ** 40, offset: "41" }, "partition"],
    [{ partition: 7, offset: "41" }, "partition"],
    [{ partition: 1, offset: "50" }, "offset"],
    [{ partition: 1, offset: "41", extra: true }, "extra"],
  ])("refuses %j naming %s", async (body, field) => {
    const res = await postSkip(body);
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error.code).toBe("CHATBUS_VALIDATION");
    expect(`${res.json().error.field ?? ""} ${res.json().error.message}`).toContain(field);
  });

  it("refuses an unknown or malformed subscription", async () => {
    const unknown = await postSkip({ partition: 1, offset: "41" }, "no-such-subscription");
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json().error.message).toContain("no-such-subscription");
    const malformed = await postSkip({ partition: 1, offset: "41" }, "../etc");
    expect([400, 404]).toContain(malformed.statusCode);
    const spaced = await postSkip({ partition: 1, offset: "41" }, "a b");
    expect(spaced.statusCode).toBe(400);
    expect(spaced.json().error.message).toContain("subscription");
  });

  it("checks the offset's range when the subscription reports no partitions yet", async () => {
    const idle = uniqueName("idle");
    await publishSubscriptionStatus(h.schema.pool, idle, "instance-b", {
      group: idle,
      topic: h.topic,
      breaker: "closed",
      inFlight: 0,
      processed: 0,
      failed: 0,
      deadLettered: 0,
      startedAt: new Date().toISOString(),
      partitions: [],
    });
    const huge = await postSkip({ partition: 3, offset: "9223372036854775808" }, idle);
    expect(huge.statusCode, huge.body).toBe(400);
    expect(huge.json().error.field).toBe("offset");
    const max = await postSkip({ partition: 3, offset: "9223372036854775807" }, idle);
    expect(max.statusCode, max.body).toBe(202);
  });

  it("answers 409 for a record already committed", async () => {
    const res = await postSkip({ partition: 1, offset: "40" });
    expect(res.statusCode).toBe(409);
  });

  it("records the request with who and when (202), once, and shows when it is applied", async () => {
    const before = Date.now();
    const res = await postSkip({ partition: 1, offset: "41" });
    expect(res.statusCode, res.body).toBe(202);
    const skip = res.json();
    expect(skip).toMatchObject({
      subscription,
      topic: h.topic,
      partition: 1,
      offset: "41",
      status: "pending",
      requestedBy: "operator:alice",
      appliedAt: null,
      deadLetterId: null,
    });
    expect(Date.parse(skip.requestedAt)).toBeGreaterThanOrEqual(before - 5000);
    // Asking again returns the same request, not a second one.
    const again = await postSkip({ partition: 1, offset: 41 });
    expect(again.statusCode).toBe(202);
    expect(again.json().id).toBe(skip.id);

    const listed = await h.app.inject({ method: "GET", url: "/v1/subscriptions", headers: operator() });
    const row = listed
      .json()
      .subscriptions.find((s: { subscription: string }) => s.subscription === subscription);
    expect(row.skipsPending.map((k: { id: string }) => k.id)).toEqual([skip.id]);

    const { id: deadLetterId } = await recordDeadLetter(h.schema.pool, {
      subscription,
      topic: h.topic,
      partition: 1,
      offset: "41",
      key: "conv-stuck",
      headers: {},
      value: Buffer.from("{}"),
      failureClass: "operator",
      errorCode: "CHATBUS_OPERATOR_SKIP",
      errorMessage: "skipped by operator:alice",
      attempts: 17,
      firstFailedAt: new Date(since),
      lastFailedAt: new Date(),
    });
    await markSkipApplied(h.schema.pool, skip.id, "instance-a", deadLetterId);
    const applied = await h.app.inject({
      method: "GET",
      url: `/v1/subscriptions/skips/${skip.id}`,
      headers: operator(),
    });
    expect(applied.statusCode).toBe(200);
    expect(applied.json()).toMatchObject({ status: "applied", appliedBy: "instance-a", deadLetterId });
    const missing = await h.app.inject({
      method: "GET",
      url: "/v1/subscriptions/skips/987654321",
      headers: operator(),
    });
    expect(missing.statusCode).toBe(404);
    const huge = await h.app.inject({
      method: "GET",
      url: "/v1/subscriptions/skips/9999999999999999999",
      headers: operator(),
    });
    expect(huge.statusCode).toBe(400);
  });
});

describe("chatbus subscriptions", () => {
  beforeAll(() => {
    vi.stubEnv("CHATBUS_API_URL", h.url);
    vi.stubEnv("CHATBUS_OPERATOR_KEY", operatorKey);
    vi.stubEnv("CHATBUS_OPERATOR", "bob");
  });

  it("shows in-flight work and the stuck record with the command to skip it", async () => {
    const { code, out } = await captured(() => subscriptionsCli([]));
    expect(code).toBe(0);
    expect(out).toMatch(/IN FLIGHT\s+OLDEST IN FLIGHT\s+STUCK/);
    const line = out.split("\n").find((l) => l.startsWith(subscription));
    expect(line).toMatch(/\s3\s+1m 35s\s+1\s/);
    expect(out).toContain("conv-stuck");
    expect(out).toContain("ECONNREFUSED");
    expect(out).toContain(`chatbus subscriptions skip ${subscription} 1 41`);
  });

  it("skips, waits with progress, and exits 0 once the runtime applied it", async () => {
    const pending = captured(() => subscriptionsCli(["skip", subscription, "1", "44", "--wait", "60"]));
    // Stand in for the runtime: apply the request once it exists.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const { rows } = await h.schema.pool.query<{ id: string }>(
        `SELECT id::text FROM subscription_skips WHERE subscription = $1 AND "offset" = 44`,
        [subscription],
      );
      if (rows[0]) {
        await new Promise((resolve) => setTimeout(resolve, 1500));
        await markSkipApplied(h.schema.pool, rows[0].id, "instance-a", null);
        break;
      }
      if (Date.now() > deadline) throw new Error("the CLI did not record a skip request");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const { code, out, err } = await pending;
    expect(code, err).toBe(0);
    expect(out).toContain("requested by operator:bob");
    expect(err).toContain("waiting for the instance that owns partition 1");
    expect(out).toContain("applied at");
  });

  it("exits 1 when the skip is not applied in time, 1 with the API's message on a bad offset, 2 on bad usage", async () => {
    const late = await captured(() => subscriptionsCli(["skip", subscription, "1", "46", "--wait", "1"]));
    expect(late.code).toBe(1);
    expect(late.err).toContain("is not applied after 1 s");
    const refused = await captured(() =>
      subscriptionsCli(["skip", subscription, "1", "9223372036854775808"]),
    );
    expect(refused.code).toBe(1);
    expect(refused.err).toContain("offset");
    const unknown = await captured(() => subscriptionsCli(["skip", "nobody-here", "1", "4"]));
    expect(unknown.code).toBe(1);
    expect(unknown.err).toContain("nobody-here");
    expect((await captured(() => subscriptionsCli(["skip", subscription, "1"]))).code).toBe(2);
    expect((await captured(() => subscriptionsCli(["skip", subscription, "x", "1"]))).code).toBe(2);
    expect((await captured(() => subscriptionsCli(["skip", subscription, "1", "-4"]))).code).toBe(2);
    expect((await captured(() => subscriptionsCli(["frobnicate"]))).code).toBe(2);
  });

  it("refuses a plain http:// URL to another host unless --insecure", async () => {
    // 0.0.0.0 reaches this machine on Linux but is not a loopback name: it stands in
    // for a remote host that the test can still talk to.
    vi.stubEnv("CHATBUS_API_URL", h.url.replace("127.0.0.1", "0.0.0.0"));
    try {
      const refused = await captured(() => subscriptionsCli([]));
      expect(refused.code).toBe(1);
      expect(refused.err).toContain("refusing to send the operator key in clear text to http://0.0.0.0:");
      expect(refused.err).toContain("--insecure");
      const skipRefused = await captured(() => subscriptionsCli(["skip", subscription, "1", "42"]));
      expect(skipRefused.code).toBe(1);
      const allowed = await captured(() => subscriptionsCli(["--insecure"]));
      expect(allowed.code, allowed.err).toBe(0);
      expect(allowed.out).toContain(subscription);
    } finally {
      vi.stubEnv("CHATBUS_API_URL", h.url);
    }
  });
});
