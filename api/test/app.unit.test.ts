/**
 * The app's contract without Kafka or PostgreSQL: auth, the error format, input
 * validation naming the field, and that a refused request never reaches the bus.
 * The bus and projection are fakes here; the .int tests use the real ones.
 */

import type { ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import type { ChatEventInput } from "@chatbus/producer-sdk";
import type pg from "pg";
import pino from "pino";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import type { ApiApp } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { type ApiConfig, configDefaults, loadConfig, validateConfig } from "../src/config.ts";
import { ConfigError } from "../src/errors.ts";

const jwtSecret = "unit-test-secret-0123456789abcdef";
const operatorKey = "unit-operator-key-0123456789";
const serviceKey = "unit-service-key-0123456789";

function config(overrides: Partial<ApiConfig> = {}): ApiConfig {
  return validateConfig({
    ...configDefaults,
    nodeEnv: "test",
    jwtSecret,
    operatorKey,
    serviceKeys: [serviceKey],
    devLogin: true,
    // The limits live in PostgreSQL (write-limits.int.test.ts); this fake has none.
    rateLimits: { ...configDefaults.rateLimits, enabled: false },
    ...overrides,
  });
}

interface Sent {
  conversationId: string;
  event: ChatEventInput;
}

const apps: ApiApp[] = [];
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

async function makeApp(
  overrides: Partial<ApiConfig> = {},
  readiness: Record<string, () => Promise<void>> = {},
) {
  const sent: Sent[] = [];
  const members: Record<string, string[]> = { "conv-1": ["ana", "ben"] };
  // Only what these routes call; anything else would throw (and fail the test).
  const projection = {
    isMember: async (id: string, user: string) => members[id]?.includes(user) ?? false,
    conversation: async (id: string) => (members[id] ? { id, kind: "group" } : null),
  } as unknown as ProjectionReader;
  // The operator routes' database is never reached here: auth refuses first.
  const pool = {} as pg.Pool;
  const app = await buildApp({
    config: config(overrides),
    logger: pino({ level: "silent" }),
    registry: new Registry(),
    bus: {
      send: async (conversationId, event) => {
        sent.push({ conversationId, event });
        return { eventId: "0190a7b2-4c3d-7e8f-9a0b-1c2d3e4f5a6b", partition: 3, offset: String(sent.length) };
      },
    },
    projection,
    pool,
    readiness,
  });
  apps.push(app);
  return { app, sent };
}

async function login(app: ApiApp, username: string): Promise<string> {
  const res = await app.inject({ method: "POST", url: "/v1/dev/login", payload: { username } });
  expect(res.statusCode).toBe(200);
  return res.json().token;
}

const text = { type: "text", text: "hello" };

describe("auth", () => {
  it("refuses a request without a token with 401 JSON and sends nothing", async () => {
    const { app, sent } = await makeApp();
    const res = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      payload: { content: text },
    });
    expect(res.statusCode).toBe(401);
    expect(res.json()).toEqual({ error: { code: "CHATBUS_UNAUTHORIZED", message: expect.any(String) } });
    expect(sent).toHaveLength(0);
  });

  it("refuses a tampered token with 401", async () => {
    const { app, sent } = await makeApp();
    const token = await login(app, "ana");
    const [h, p, s] = token.split(".");
    const payload = JSON.parse(Buffer.from(p!, "base64url").toString());
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...payload, sub: "ben" })).toString("base64url")}.${s}`;
    const res = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      headers: { authorization: `Bearer ${forged}` },
      payload: { content: text },
    });
    expect(res.statusCode).toBe(401);
    expect(Object.keys(res.json())).toEqual(["error"]);
    expect(sent).toHaveLength(0);
  });

  it("refuses an expired token with 401 CHATBUS_TOKEN_EXPIRED", async () => {
    const { app, sent } = await makeApp();
    // Signed with the right key, but its lifetime ended an hour ago.
    const expired = app.jwt.sign({ sub: "ana" }, { expiresIn: -3_600_000 });
    const res = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      headers: { authorization: `Bearer ${expired}` },
      payload: { content: text },
    });
    expect(res.statusCode).toBe(401);
    expect(res.json().error.code).toBe("CHATBUS_TOKEN_EXPIRED");
    expect(sent).toHaveLength(0);
  });

  it("refuses a token once it expires, although it was accepted (and remembered) before", async () => {
    const { app } = await makeApp();
    const token = app.jwt.sign({ sub: "ana" }, { expiresIn: "2s" });
    const send = () =>
      app.inject({
        method: "POST",
        url: "/v1/conversations/conv-1/messages",
        headers: { authorization: `Bearer ${token}` },
        payload: { content: text },
      });
    expect((await send()).statusCode).toBe(202);
    // `exp` has whole seconds: the token ends 1 to 2 s after signing.
    await new Promise((resolve) => setTimeout(resolve, 2100));
    const late = await send();
    expect(late.statusCode).toBe(401);
    expect(late.json().error.code).toBe("CHATBUS_TOKEN_EXPIRED");
  });

  it("answers a non-member with the same 403 whether or not the conversation exists", async () => {
    const { app, sent } = await makeApp();
    const token = await login(app, "eve");
    const headers = { authorization: `Bearer ${token}` };
    const existing = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      headers,
      payload: { content: text },
    });
    const missing = await app.inject({
      method: "POST",
      url: "/v1/conversations/nope/messages",
      headers,
      payload: { content: text },
    });
    expect(existing.statusCode).toBe(403);
    expect(missing.statusCode).toBe(403);
    expect(existing.body).toBe(missing.body);
    expect(sent).toHaveLength(0);
  });

  it("has no dev login unless CHATBUS_DEV_LOGIN=1", async () => {
    const { app } = await makeApp({ devLogin: false });
    const res = await app.inject({ method: "POST", url: "/v1/dev/login", payload: { username: "ana" } });
    expect(res.statusCode).toBe(404);
    expect(loadConfig({ NODE_ENV: "development" }).config.devLogin).toBe(false);
    const on = loadConfig({ NODE_ENV: "development", CHATBUS_DEV_LOGIN: "1" });
    expect(on.config.devLogin).toBe(true);
    expect(on.notes.warnings.join(" ")).toContain("CHATBUS_DEV_LOGIN=1");
  });

  it("has no dev login in production", async () => {
    const { app } = await makeApp({ nodeEnv: "production" });
    const res = await app.inject({ method: "POST", url: "/v1/dev/login", payload: { username: "ana" } });
    expect(res.statusCode).toBe(404);
    expect(res.json().error.code).toBe("CHATBUS_NOT_FOUND");
    expect(res.body).not.toContain('token":');
  });

  it("lets a service send on behalf of a member, and requires senderId", async () => {
    const { app, sent } = await makeApp();
    const headers = { authorization: `Bearer ${serviceKey}` };
    const missing = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      headers,
      payload: { content: text },
    });
    expect(missing.statusCode).toBe(400);
    expect(missing.json().error.field).toBe("senderId");
    const ok = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      headers,
      payload: { senderId: "ben", content: text },
    });
    expect(ok.statusCode).toBe(202);
    expect(ok.json()).toEqual({ eventId: expect.any(String), partition: 3, offset: "1" });
    expect(sent).toEqual([
      { conversationId: "conv-1", event: { type: "chat.message.sent", senderId: "ben", content: text } },
    ]);
  });
});

describe("operator routes", () => {
  for (const [name, credential] of [
    ["a user token", "user"],
    ["a service key", serviceKey],
  ] as const) {
    it(`refuse ${name} with 403 and no data`, async () => {
      const { app } = await makeApp();
      const token = credential === "user" ? await login(app, "ana") : credential;
      for (const [method, url] of [
        ["GET", "/v1/subscriptions"],
        ["GET", "/v1/dead-letters"],
        ["POST", "/v1/dead-letters/1/replay"],
        ["POST", "/v1/dead-letters/1/discard"],
      ] as const) {
        const res = await app.inject({ method, url, headers: { authorization: `Bearer ${token}` } });
        expect(res.statusCode, `${method} ${url}`).toBe(403);
        expect(Object.keys(res.json())).toEqual(["error"]);
      }
    });
  }

  it("refuse a wrong operator key with 401", async () => {
    const { app } = await makeApp();
    const res = await app.inject({
      method: "GET",
      url: "/v1/dead-letters",
      headers: { authorization: "Bearer nope" },
    });
    expect(res.statusCode).toBe(401);
  });

  it("refuse the operator key on user routes with 403", async () => {
    const { app, sent } = await makeApp();
    const res = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      headers: { authorization: `Bearer ${operatorKey}` },
      payload: { senderId: "ana", content: text },
    });
    expect(res.statusCode).toBe(403);
    expect(sent).toHaveLength(0);
  });
});

describe("bad input", () => {
  const cases: [string, unknown, string][] = [
    ["missing content", {}, "content"],
    ["wrong-typed text", { content: { type: "text", text: 42 } }, "content.text"],
    ["empty text", { content: { type: "text", text: "" } }, "content.text"],
    ["text over 16 KiB", { content: { type: "text", text: "x".repeat(16_385) } }, "content.text"],
    ["unknown field", { content: text, sneaky: true }, "sneaky"],
    ["bad priority", { content: text, priority: "urgent" }, "priority"],
    ["quoted clientMsgId", { content: text, clientMsgId: 'a"b' }, "clientMsgId"],
    ["10,000-char senderId", { content: text, senderId: "a".repeat(10_000) }, "senderId"],
  ];
  for (const [name, payload, field] of cases) {
    it(`${name} → 400 naming \`${field}\`, nothing sent`, async () => {
      const { app, sent } = await makeApp();
      const token = await login(app, "ana");
      const res = await app.inject({
        method: "POST",
        url: "/v1/conversations/conv-1/messages",
        headers: { authorization: `Bearer ${token}` },
        payload: payload as object,
      });
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toMatchObject({ code: "CHATBUS_VALIDATION", field });
      expect(res.json().error.message).toContain(`\`${field}\``);
      expect(sent).toHaveLength(0);
    });
  }

  for (const [name, id] of [
    ["quotes", encodeURIComponent('conv"1')],
    ["%00", "conv%001"],
    ["10,000 characters", "c".repeat(10_000)],
  ] as const) {
    it(`a conversation id with ${name} → 400 naming \`id\``, async () => {
      const { app, sent } = await makeApp();
      const token = await login(app, "ana");
      const res = await app.inject({
        method: "POST",
        url: `/v1/conversations/${id}/messages`,
        headers: { authorization: `Bearer ${token}` },
        payload: { content: text },
      });
      expect(res.statusCode).toBe(400);
      expect(res.json().error.field).toBe("id");
      expect(sent).toHaveLength(0);
    });
  }

  it("an oversized body → 413, nothing sent", async () => {
    const { app, sent } = await makeApp();
    const token = await login(app, "ana");
    const res = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      payload: JSON.stringify({ content: { type: "text", text: "x".repeat(100_000) } }),
    });
    expect(res.statusCode).toBe(413);
    expect(res.json().error.code).toBe("CHATBUS_PAYLOAD_TOO_LARGE");
    expect(sent).toHaveLength(0);
  });

  it("malformed JSON → 400", async () => {
    const { app } = await makeApp();
    const token = await login(app, "ana");
    const res = await app.inject({
      method: "POST",
      url: "/v1/conversations/conv-1/messages",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      payload: "{not json",
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.code).toBe("CHATBUS_VALIDATION");
  });
});

describe("health", () => {
  it("is ready when every dependency answers, and says which one does not (details only to the operator)", async () => {
    let kafkaUp = true;
    const { app } = await makeApp(
      {},
      {
        postgresql: async () => {},
        kafka: async () => {
          if (!kafkaUp) throw new Error("Kafka at 127.0.0.1:9092 did not answer within 2000 ms");
        },
      },
    );
    const ready = await app.inject({ method: "GET", url: "/readyz" });
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toEqual({ status: "ready", checks: { postgresql: "ok", kafka: "ok" } });
    kafkaUp = false;
    const anonymous = await app.inject({ method: "GET", url: "/readyz" });
    expect(anonymous.statusCode).toBe(503);
    expect(anonymous.json().checks).toEqual({ postgresql: "ok", kafka: "failing" });
    expect(anonymous.body).not.toContain("127.0.0.1");
    const down = await app.inject({
      method: "GET",
      url: "/readyz",
      headers: { authorization: `Bearer ${operatorKey}` },
    });
    expect(down.statusCode).toBe(503);
    expect(down.json().checks).toEqual({
      postgresql: "ok",
      kafka: expect.stringContaining("did not answer"),
    });
    expect(down.json().error.code).toBe("CHATBUS_NOT_READY");
    expect((await app.inject({ method: "GET", url: "/healthz" })).statusCode).toBe(200);
  });
});

describe("docs and metrics", () => {
  it("serves an OpenAPI document whose send body is the contract's MessageContent", async () => {
    const { app } = await makeApp();
    const res = await app.inject({ method: "GET", url: "/docs/json" });
    expect(res.statusCode).toBe(200);
    const doc = res.json();
    const send = doc.paths["/v1/conversations/{id}/messages"].post;
    const schema = send.requestBody.content["application/json"].schema;
    expect(schema.additionalProperties).toBe(false);
    expect(schema.properties.content.anyOf).toHaveLength(2);
  });

  it("counts request durations by route template and status", async () => {
    const { app } = await makeApp();
    await app.inject({ method: "GET", url: "/healthz" });
    const res = await app.inject({ method: "GET", url: "/metrics" });
    expect(res.body).toMatch(
      /chatbus_http_request_duration_seconds_count\{method="GET",route="\/healthz",status_code="200"\} 1/,
    );
  });
});

describe("configuration", () => {
  const base = {
    NODE_ENV: "production",
    CHATBUS_JWT_SECRET: "s".repeat(32),
    CHATBUS_OPERATOR_KEY: "o".repeat(32),
    CHATBUS_SERVICE_KEYS: "k".repeat(32),
  };
  for (const name of ["CHATBUS_JWT_SECRET", "CHATBUS_OPERATOR_KEY", "CHATBUS_SERVICE_KEYS"] as const) {
    it(`refuses to start in production without ${name}, naming it`, () => {
      const env = { ...base, [name]: "" };
      expect(() => loadConfig(env)).toThrow(ConfigError);
      expect(() => loadConfig(env)).toThrow(name);
    });
  }

  it("starts in development with random secrets and says so", () => {
    const { config, notes } = loadConfig({ NODE_ENV: "development" });
    expect(config.jwtSecret.length).toBeGreaterThanOrEqual(32);
    expect(notes.warnings.join(" ")).toContain("CHATBUS_JWT_SECRET");
  });

  it("reads service keys as a comma list", () => {
    const { config } = loadConfig({ ...base, CHATBUS_SERVICE_KEYS: `${"a".repeat(16)}, ${"b".repeat(16)}` });
    expect(config.serviceKeys).toEqual(["a".repeat(16), "b".repeat(16)]);
  });
});

describe("request ids", () => {
  it("echoes a sane X-Request-Id and replaces one that is not", async () => {
    const { app } = await makeApp();
    const kept = await app.inject({
      method: "GET",
      url: "/healthz",
      headers: { "x-request-id": "trace-42" },
    });
    expect(kept.headers["x-request-id"]).toBe("trace-42");
    const replaced = await app.inject({
      method: "GET",
      url: "/healthz",
      headers: { "x-request-id": 'a"b'.repeat(100) },
    });
    expect(replaced.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
  });
});
