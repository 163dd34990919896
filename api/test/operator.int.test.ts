/**
 * The operator flow end to end, with a real runtime: a handler that fails with a
 * BusinessError produces a dead letter that the API (and the CLI over it) shows;
 * after the handler is fixed, a replay through the API handles it and the API
 * shows it replayed, recorded with who asked. A discard is recorded too.
 */
import { BusinessError, createRuntime, type Runtime } from "@chatbus/consumer-runtime";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import { run as deadLettersCli } from "../src/cli/dead-letters.ts";
import { run as subscriptionsCli } from "../src/cli/subscriptions.ts";
import { eventually, type Harness, operatorKey, startHarness } from "./harness.ts";

let h: Harness;
let runtime: Runtime;
let ana: string;
let conversationId: string;
const subscription = uniqueName("notifications");
let fixed = false;
const handled: string[] = [];

beforeAll(async () => {
  h = await startHarness("api_op");
  runtime = createRuntime({
    group: subscription,
    topic: h.topic,
    brokers: kafkaBrokers(),
    pool: h.schema.pool,
    fromBeginning: true,
    statusIntervalMs: 500,
    replayPollMs: 200,
    sessionTimeoutMs: 6000,
    logger: pino({ level: "silent" }),
  });
  runtime.on("chat.message.sent", async (event) => {
    const text = event.data.content.type === "text" ? event.data.content.text : "";
    if (text.startsWith("poison") && !fixed) throw new BusinessError(`cannot notify about "${text}".`);
    handled.push(event.id);
  });
  await runtime.start();
  ana = await h.login("ana");
  const created = await h.app.inject({
    method: "POST",
    url: "/v1/conversations",
    headers: { authorization: `Bearer ${ana}` },
    payload: { kind: "group", members: ["ben"] },
  });
  conversationId = created.json().conversationId;
  await eventually("the conversation", async () => {
    const res = await h.app.inject({
      method: "GET",
      url: "/v1/me/conversations",
      headers: { authorization: `Bearer ${ana}` },
    });
    return res.json().conversations.length === 1;
  });
});

afterAll(async () => {
  await runtime?.stop();
  await h?.close();
  vi.unstubAllEnvs();
});

const operator = (name = "alice") => ({ authorization: `Bearer ${operatorKey}`, "x-chatbus-operator": name });

async function send(text: string): Promise<string> {
  const res = await h.app.inject({
    method: "POST",
    url: `/v1/conversations/${conversationId}/messages`,
    headers: { authorization: `Bearer ${ana}` },
    payload: { content: { type: "text", text } },
  });
  expect(res.statusCode).toBe(202);
  return res.json().eventId;
}

async function deadLetterOf(eventId: string) {
  const res = await h.app.inject({
    method: "GET",
    url: `/v1/dead-letters?subscription=${subscription}&limit=10`,
    headers: operator(),
  });
  expect(res.statusCode).toBe(200);
  return (
    res.json().items as {
      id: string;
      eventId: string;
      status: string;
      statusChangedBy: string | null;
      errorCode: string;
      failureClass: string;
    }[]
  ).find((d) => d.eventId === eventId);
}

describe("dead letters through the API", () => {
  it("shows a business failure as a dead letter, replays it after the fix, and shows it replayed", async () => {
    const eventId = await send("poison one");
    const dead = await eventually("the dead letter", () => deadLetterOf(eventId), 60_000);
    expect(dead).toMatchObject({
      status: "waiting",
      failureClass: "business",
      errorCode: "CHATBUS_BUSINESS",
    });
    expect(handled).not.toContain(eventId);

    const subs = await eventually("the subscription status", async () => {
      const res = await h.app.inject({ method: "GET", url: "/v1/subscriptions", headers: operator() });
      const found = res
        .json()
        .subscriptions.find((s: { subscription: string }) => s.subscription === subscription);
      return found?.deadLettersWaiting === 1 && found.instances.length === 1 ? found : undefined;
    });
    expect(subs).toMatchObject({ breaker: "closed", state: "running" });
    expect(subs.partitions.length).toBeGreaterThan(0);

    fixed = true;
    const replay = await h.app.inject({
      method: "POST",
      url: `/v1/dead-letters/${dead.id}/replay`,
      headers: operator("alice"),
    });
    expect(replay.statusCode).toBe(200);
    expect(replay.json()).toMatchObject({ status: "replaying", statusChangedBy: "operator:alice" });
    await eventually("the replayed event to be handled", () => handled.includes(eventId), 60_000);
    const after = await eventually("replayed status", async () => {
      const d = await deadLetterOf(eventId);
      return d?.status === "replayed" ? d : undefined;
    });
    expect(after.id).toBe(dead.id);

    // Replaying again is a conflict, not a silent second delivery.
    const again = await h.app.inject({
      method: "POST",
      url: `/v1/dead-letters/${dead.id}/replay`,
      headers: operator(),
    });
    expect(again.statusCode).toBe(409);
    const missing = await h.app.inject({
      method: "POST",
      url: "/v1/dead-letters/999999/replay",
      headers: operator(),
    });
    expect(missing.statusCode).toBe(404);
  });

  it("lists, discards and bulk-replays with the CLI over the API", async () => {
    fixed = false;
    const discardId = await send("poison two");
    const replayId = await send("poison three");
    const [toDiscard] = await Promise.all([
      eventually("dead letter two", () => deadLetterOf(discardId), 60_000),
      eventually("dead letter three", () => deadLetterOf(replayId), 60_000),
    ]);
    vi.stubEnv("CHATBUS_API_URL", h.url);
    vi.stubEnv("CHATBUS_OPERATOR_KEY", operatorKey);
    vi.stubEnv("CHATBUS_OPERATOR", "bob");
    const out: string[] = [];
    const log = vi.spyOn(console, "log").mockImplementation((line: unknown) => void out.push(String(line)));
    try {
      expect(await deadLettersCli(["list", "--subscription", subscription, "--status", "waiting"])).toBe(0);
      expect(out.join("\n")).toMatch(/ID\s+SUBSCRIPTION\s+STATUS/);
      expect(out.join("\n")).toContain(toDiscard.id);
      expect(await deadLettersCli(["discard", toDiscard.id, "--reason", "spam"])).toBe(0);
      fixed = true;
      expect(await deadLettersCli(["replay", "--all", "--subscription", subscription])).toBe(0);
      expect(out.join("\n")).toContain("replaying 1 dead letter(s)");
      expect(await subscriptionsCli([])).toBe(0);
      expect(out.join("\n")).toContain(subscription);
    } finally {
      log.mockRestore();
    }
    const discarded = await deadLetterOf(discardId);
    expect(discarded).toMatchObject({ status: "discarded", statusChangedBy: "operator:bob" });
    await eventually("bulk replay handled", () => handled.includes(replayId), 60_000);
    expect(handled).not.toContain(discardId);
    expect(await deadLettersCli(["replay"])).toBe(2);
  });
});
