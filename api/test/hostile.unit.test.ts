/**
 * Hostile clients at the API (issue 13, issue 12 item 3), without Kafka or
 * PostgreSQL: the values PostgreSQL cannot store, role escalation, priority abuse,
 * user mistakes, page limits, log redaction and direct-conversation id collisions.
 * Each refusal must name its field or rule, and send nothing. The projection is a
 * small in-memory fake; write-limits.int.test.ts and test/security/ use the real ones.
 */

import type { MemberView, ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import type { ChatEventInput } from "@chatbus/producer-sdk";
import type pg from "pg";
import pino from "pino";
import { Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";
import { type ApiApp, redactUrl } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { type ApiConfig, configDefaults, validateConfig } from "../src/config.ts";
import { directConversationId } from "../src/routes/conversations.ts";

const serviceKey = "unit-service-key-0123456789";
const recalledId = "0190a7b2-4c3d-7e8f-9a0b-000000000002";
const liveId = "0190a7b2-4c3d-7e8f-9a0b-000000000001";

const apps: ApiApp[] = [];
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

type Role = "owner" | "admin" | "member";

async function makeApp(overrides: Partial<ApiConfig> = {}) {
  const sent: { conversationId: string; event: ChatEventInput }[] = [];
  const roles: Record<string, Record<string, Role>> = {
    g1: { olga: "owner", adam: "admin", mia: "member", max: "member" },
    "dm:ana:ben": { ana: "owner", ben: "member" },
  };
  const member = (id: string, userId: string): MemberView => ({
    conversationId: id,
    userId,
    role: roles[id]![userId]!,
    joinedAt: new Date(0),
    leftAt: null,
    lastDeliveredSeq: 0,
    lastReadSeq: 0,
    unreadCount: 0,
  });
  const message = (eventId: string, recalled: boolean) => ({
    eventId,
    conversationId: "g1",
    senderId: "mia",
    seq: 1,
    recalledAt: recalled ? new Date(0) : null,
  });
  const projection = {
    isMember: async (id: string, user: string) => roles[id]?.[user] !== undefined,
    conversation: async (id: string) =>
      roles[id] ? { id, kind: id.startsWith("dm") ? "direct" : "group", lastSeq: 5 } : null,
    members: async (id: string) => Object.keys(roles[id] ?? {}).map((u) => member(id, u)),
    messageByEventId: async (id: string) =>
      id === liveId ? message(id, false) : id === recalledId ? message(id, true) : null,
    history: async () => [],
    historyPage: async () => ({ messages: [], positions: [] }),
    inbox: async () => [],
  } as unknown as ProjectionReader;
  const app = await buildApp({
    config: validateConfig({
      ...configDefaults,
      nodeEnv: "test",
      jwtSecret: "unit-test-secret-0123456789abcdef",
      operatorKey: "unit-operator-key-0123456789",
      serviceKeys: [serviceKey],
      devLogin: true,
      rateLimits: { ...configDefaults.rateLimits, enabled: false },
      ...overrides,
    }),
    logger: pino({ level: "silent" }),
    registry: new Registry(),
    bus: {
      send: async (conversationId, event) => {
        sent.push({ conversationId, event });
        return { eventId: liveId, partition: 0, offset: String(sent.length) };
      },
    },
    projection,
    pool: {} as pg.Pool,
    readiness: {},
  });
  apps.push(app);
  const tokens = new Map<string, string>();
  const call = async (
    user: string,
    method: "POST" | "PATCH" | "DELETE" | "GET",
    url: string,
    payload?: object,
  ) => {
    let token = tokens.get(user) ?? (user === "service" ? serviceKey : undefined);
    if (!token) {
      const res = await app.inject({ method: "POST", url: "/v1/dev/login", payload: { username: user } });
      token = res.json().token as string;
      tokens.set(user, token);
    }
    return app.inject({
      method,
      url,
      headers: { authorization: `Bearer ${token}` },
      ...(payload ? { payload } : {}),
    });
  };
  return { app, sent, call, roles };
}

describe("values PostgreSQL cannot store (issue 12 item 3)", () => {
  const cases: [string, string, string, object, string][] = [
    [
      "NUL in a text",
      "POST",
      "/v1/conversations/g1/messages",
      { content: { type: "text", text: "a\u0000b" } },
      "content.text",
    ],
    [
      "a lone surrogate in a text",
      "POST",
      "/v1/conversations/g1/messages",
      { content: { type: "text", text: "\ud800" } },
      "content.text",
    ],
    [
      "NUL deep in custom data",
      "POST",
      "/v1/conversations/g1/messages",
      { content: { type: "custom", customType: "blob", data: { x: ["\u0000"] } } },
      "content.data.x.0",
    ],
    [
      "NUL in an edit",
      "PATCH",
      `/v1/conversations/g1/messages/${liveId}`,
      { content: { type: "text", text: "\u0000" } },
      "content.text",
    ],
    [
      "NUL in a title",
      "POST",
      "/v1/conversations",
      { kind: "group", members: ["ben"], title: "a\u0000b" },
      "title",
    ],
    [
      "a lone surrogate in a title",
      "POST",
      "/v1/conversations",
      { kind: "group", members: ["ben"], title: "\udfff" },
      "title",
    ],
    ["a read seq of 10^19", "POST", "/v1/conversations/g1/read", { seq: 10000000000000000000 }, "seq"],
    ["a read seq of 1e300", "POST", "/v1/conversations/g1/read", { seq: 1e300 }, "seq"],
  ];
  for (const [name, method, url, payload, field] of cases) {
    it(`${name} → 400 naming \`${field}\`, nothing sent`, async () => {
      const { sent, call } = await makeApp();
      const res = await call("mia", method as "POST", url, payload);
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toMatchObject({ code: "CHATBUS_VALIDATION", field });
      expect(res.json().error.message).toContain(`\`${field}\``);
      expect(sent).toHaveLength(0);
    });
  }

  for (const name of ["after", "before"]) {
    it(`?${name}=99999999999999999999 → 400 naming \`${name}\` (was a 500)`, async () => {
      const { call } = await makeApp();
      const res = await call("mia", "GET", `/v1/conversations/g1/messages?${name}=99999999999999999999`);
      expect(res.statusCode).toBe(400);
      expect(res.json().error.field).toBe(name);
    });
  }

  it("a read seq past the conversation's last message → 400 naming `seq`; at it → 202", async () => {
    const { call, sent } = await makeApp(); // g1's last seq is 5
    const past = await call("mia", "POST", "/v1/conversations/g1/read", { seq: 6 });
    expect(past.statusCode).toBe(400);
    expect(past.json().error.field).toBe("seq");
    expect(sent).toHaveLength(0);
    const at = await call("mia", "POST", "/v1/conversations/g1/read", { seq: 5 });
    expect(at.statusCode).toBe(202);
    expect(sent).toHaveLength(1);
  });
});

describe("roles (issue 13 item 1)", () => {
  const add = (role?: Role) => (userId: string) => ({ userId, ...(role ? { role } : {}) });
  const cases: [string, string, object, number, string | undefined][] = [
    ["a plain member grants owner", "mia", add("owner")("mallory"), 403, "owners-grant-roles"],
    ["a plain member grants admin", "mia", add("admin")("mallory"), 403, "owners-grant-roles"],
    ["an admin grants owner", "adam", add("owner")("mallory"), 403, "owners-grant-roles"],
    ["an admin grants admin", "adam", add("admin")("mallory"), 403, "owners-grant-roles"],
    ["a plain member adds a member", "mia", add()("mallory"), 403, "admins-manage-members"],
    ["an admin adds a plain member", "adam", add()("nora"), 202, undefined],
    ["the owner grants admin", "olga", add("admin")("nora"), 202, undefined],
    ["the owner grants owner", "olga", add("owner")("nora"), 202, undefined],
  ];
  for (const [name, actor, payload, status, rule] of cases) {
    it(`${name} → ${status}${rule ? ` naming ${rule}` : ""}`, async () => {
      const { call, sent } = await makeApp();
      const res = await call(actor, "POST", "/v1/conversations/g1/members", payload);
      expect(res.statusCode).toBe(status);
      if (rule) {
        expect(res.json().error.message).toContain(`rule \`${rule}\``);
        expect(sent).toHaveLength(0);
      } else {
        expect(sent).toHaveLength(1);
      }
    });
  }

  const removals: [string, string, string, number, string | undefined][] = [
    ["a plain member removes the owner", "mia", "olga", 403, "owner-protected"],
    ["an admin removes the owner", "adam", "olga", 403, "owner-protected"],
    ["a plain member removes another", "mia", "max", 403, "admins-manage-members"],
    ["an admin removes a plain member", "adam", "max", 202, undefined],
    ["the owner removes the admin", "olga", "adam", 202, undefined],
    ["the last owner leaves", "olga", "olga", 403, "keeps-an-owner"],
    ["a plain member leaves", "mia", "mia", 202, undefined],
  ];
  for (const [name, actor, target, status, rule] of removals) {
    it(`${name} → ${status}${rule ? ` naming ${rule}` : ""}`, async () => {
      const { call, sent } = await makeApp();
      const res = await call(actor, "DELETE", `/v1/conversations/g1/members/${target}`);
      expect(res.statusCode).toBe(status);
      if (rule) expect(res.json().error.message).toContain(`rule \`${rule}\``);
      expect(sent).toHaveLength(status === 202 ? 1 : 0);
    });
  }

  it("an owner may leave once another owner exists", async () => {
    const { call, sent, roles } = await makeApp();
    roles.g1!.nora = "owner";
    const res = await call("olga", "DELETE", "/v1/conversations/g1/members/olga");
    expect(res.statusCode).toBe(202);
    expect(sent).toHaveLength(1);
  });
});

describe("priority (issue 13 item 2)", () => {
  it("a user token asking for high → 403 naming `priority`, nothing sent", async () => {
    const { call, sent } = await makeApp();
    const res = await call("mia", "POST", "/v1/conversations/g1/messages", {
      content: { type: "text", text: "spam" },
      priority: "high",
    });
    expect(res.statusCode).toBe(403);
    expect(res.json().error.field).toBe("priority");
    expect(sent).toHaveLength(0);
  });

  it("a service key may send high", async () => {
    const { call, sent } = await makeApp();
    const res = await call("service", "POST", "/v1/conversations/g1/messages", {
      senderId: "olga",
      content: { type: "text", text: "system notice" },
      priority: "high",
    });
    expect(res.statusCode).toBe(202);
    expect(sent).toHaveLength(1);
  });
});

describe("user mistakes answered at the API (issue 13 item 4)", () => {
  it("creating a direct conversation that exists → 200 with the same id, nothing sent", async () => {
    const { call, sent } = await makeApp();
    const res = await call("ben", "POST", "/v1/conversations", { kind: "direct", members: ["ana"] });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ conversationId: "dm:ana:ben", existing: true });
    expect(sent).toHaveLength(0);
  });

  it("adding an existing member → 409, nothing sent", async () => {
    const { call, sent } = await makeApp();
    const res = await call("olga", "POST", "/v1/conversations/g1/members", { userId: "mia" });
    expect(res.statusCode).toBe(409);
    expect(res.json().error.code).toBe("CHATBUS_CONFLICT");
    expect(sent).toHaveLength(0);
  });

  it("editing or recalling a recalled message → 409, nothing sent", async () => {
    const { call, sent } = await makeApp();
    const url = `/v1/conversations/g1/messages/${recalledId}`;
    const edit = await call("mia", "PATCH", url, { content: { type: "text", text: "again" } });
    expect(edit.statusCode).toBe(409);
    expect((await call("mia", "DELETE", url)).statusCode).toBe(409);
    expect(sent).toHaveLength(0);
    const live = await call("mia", "PATCH", `/v1/conversations/g1/messages/${liveId}`, {
      content: { type: "text", text: "fixed" },
    });
    expect(live.statusCode).toBe(202);
  });
});

describe("limits (issue 13 item 7)", () => {
  it("a group at its member limit refuses one more (409), below it accepts", async () => {
    const atLimit = await makeApp({ maxGroupMembers: 4 }); // g1 has 4 members
    const full = await atLimit.call("olga", "POST", "/v1/conversations/g1/members", { userId: "nora" });
    expect(full.statusCode).toBe(409);
    expect(full.json().error.message).toContain("CHATBUS_MAX_GROUP_MEMBERS=4");
    expect(atLimit.sent).toHaveLength(0);
    const room = await makeApp({ maxGroupMembers: 5 });
    const added = await room.call("olga", "POST", "/v1/conversations/g1/members", { userId: "nora" });
    expect(added.statusCode).toBe(202);
  });

  it("a group created with more members than the limit → 400 naming `members`; at the limit → 202", async () => {
    const { call, sent } = await makeApp({ maxGroupMembers: 3 });
    const over = await call("olga", "POST", "/v1/conversations", { kind: "group", members: ["a", "b", "c"] });
    expect(over.statusCode).toBe(400);
    expect(over.json().error.field).toBe("members");
    expect(sent).toHaveLength(0);
    const at = await call("olga", "POST", "/v1/conversations", { kind: "group", members: ["a", "b"] });
    expect(at.statusCode).toBe(202);
  });

  for (const [path, setting, name] of [
    ["/v1/conversations/g1/messages", "historyMaxLimit", "history"],
    ["/v1/me/conversations", "inboxMaxLimit", "inbox"],
  ] as const) {
    it(`the ${name} page size: the limit passes, one past it → 400 naming \`limit\``, async () => {
      const { call } = await makeApp({ [setting]: 7 });
      expect((await call("mia", "GET", `${path}?limit=7`)).statusCode).toBe(200);
      const past = await call("mia", "GET", `${path}?limit=8`);
      expect(past.statusCode).toBe(400);
      expect(past.json().error.field).toBe("limit");
    });
  }
});

describe("smaller holes (issue 13 item 9)", () => {
  it("redacts the SSE token in logs however its name is encoded", () => {
    for (const name of [
      "access_token",
      "access%5Ftoken",
      "access%5ftoken",
      "%61ccess_token",
      "ACCESS_TOKEN",
    ]) {
      const logged = redactUrl(`/v1/me/events?x=1&${name}=eyJsecret.part.sig&y=2`);
      expect(logged).not.toContain("eyJsecret");
      expect(logged).toContain("x=1");
      expect(logged).toContain("y=2");
    }
    expect(redactUrl("/v1/me/events?not_access_token=keep")).toContain("keep");
  });

  it("direct-conversation ids of users with `:` cannot collide", () => {
    expect(directConversationId("a", "b:c")).not.toBe(directConversationId("a:b", "c"));
    expect(directConversationId("ana", "ben")).toBe("dm:ana:ben");
    expect(directConversationId("ben", "ana")).toBe("dm:ana:ben");
    expect(directConversationId("a:b", "c")).toBe(directConversationId("c", "a:b"));
  });
});
