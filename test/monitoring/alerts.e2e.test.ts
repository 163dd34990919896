/**
 * The alert rules and the dashboard against a real Prometheus (Debian package) that
 * scrapes a running chatbus stack at a 1 s interval — a consumer runtime with a
 * test subscription and the materialiser (job chatbus-runtime), the API with its
 * producer and SSE (job chatbus-api) — with the rules of alerts.yml whose minutes are
 * shortened to seconds.
 *
 * A subscription's handler first rejects every event with a BusinessError (dead
 * letters pile up: ChatbusDeadLettersGrowing fires), then fails with a system error
 * (its circuit breaker opens: ChatbusBreakerOpen fires). After the fix the breaker
 * closes, one dead letter is replayed, then the rest: both alerts resolve. Then
 * every PromQL query of the Grafana dashboard runs against that Prometheus and must
 * parse and return series, and every exported chatbus_ metric must be documented in
 * docs/metrics.md with its type, labels and the latency buckets. Last, the runtime's
 * metrics endpoint goes away and ChatbusInstanceDown fires.
 */
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { type ApiApp, buildApp, loadConfig } from "@chatbus/api";
import { BusinessError, createRuntime } from "@chatbus/consumer-runtime";
import {
  createProjectionReader,
  eventsChannel,
  type Materialiser,
  startMaterialiser,
} from "@chatbus/consumer-runtime/materialiser";
import {
  getDeadLetter,
  listDeadLetters,
  replayAllDeadLetters,
  replayDeadLetter,
} from "@chatbus/consumer-runtime/operator";
import { type ChatBus, createChatBus, ValidationError } from "@chatbus/producer-sdk";
import { pino } from "pino";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../support/env.ts";
import { createTestSchema, createTestTopic, type TestSchema, uniqueName } from "../support/isolation.ts";
import {
  alertsFile,
  dashboardQueries,
  documentedMetricDetails,
  documentedMetricFor,
  latencyBuckets,
  type MetricDetails,
  resolveGrafanaVariables,
} from "./monitoring-files.ts";
import {
  type PrometheusAlert,
  PrometheusQueryError,
  type PrometheusServer,
  shortenRuleDurations,
  startPrometheus,
} from "./prometheus-server.ts";

/** Seconds per rule minute: `for: 1m` → 15 s, `[10m]` → 150 s (longer than the whole scenario, even on a busy machine). */
const secondsPerMinute = 15;
const partitions = 3;

type Mode = "business" | "system" | "fixed";
let mode: Mode = "business";

let topic: string;
let db: TestSchema;
let bus: ChatBus;
let runtime: ReturnType<typeof createRuntime>;
let materialiser: Materialiser;
let app: ApiApp;
let api: string;
let prometheus: PrometheusServer;
const servers: Server[] = [];
const runtimeRegistry = new Registry();
const apiRegistry = new Registry();
const subscription = uniqueName("alerts").replaceAll("_", "-");

/** Serves a registry at /metrics on a free port of 127.0.0.1; resolves with host:port. */
async function serveMetrics(registry: Registry): Promise<string> {
  const server = createServer(async (request, response) => {
    if (request.url !== "/metrics") {
      response.statusCode = 404;
      response.end();
      return;
    }
    response.setHeader("content-type", registry.contentType);
    response.end(await registry.metrics());
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const mine = (alert: PrometheusAlert, name: string) =>
  alert.labels.alertname === name && alert.labels.subscription === subscription;

/** Waits until the alert `name` of the test subscription is firing; resolves with it. */
function waitForFiring(name: string, timeoutMs: number): Promise<PrometheusAlert> {
  return prometheus.waitFor(
    `${name} for ${subscription} to fire`,
    async () => (await prometheus.alerts()).find((a) => mine(a, name) && a.state === "firing"),
    timeoutMs,
  );
}

/** Waits until the alert `name` of the test subscription is neither pending nor firing. */
async function waitForResolved(name: string, timeoutMs: number): Promise<void> {
  await prometheus.waitFor(
    `${name} for ${subscription} to resolve`,
    async () => ((await prometheus.alerts()).some((a) => mine(a, name)) ? undefined : true),
    timeoutMs,
  );
}

async function sendMessages(count: number, tag: string): Promise<void> {
  for (let i = 0; i < count; i++) {
    await bus.send(`mon-${tag}-${i}`, {
      type: "chat.message.sent",
      senderId: "ana",
      content: { type: "text", text: `${tag} ${i}` },
    });
  }
}

async function waitingDeadLetters(): Promise<string[]> {
  const page = await listDeadLetters(db.pool, { subscription, status: "waiting", limit: 1000 });
  return page.items.map((d) => d.id);
}

beforeAll(async () => {
  topic = await createTestTopic("monitoring", partitions);
  db = await createTestSchema("monitoring");
  const logger = pino({ level: "silent" });
  // The API's producer: events of the test are sent the way the API sends them.
  bus = await createChatBus({ brokers: kafkaBrokers(), topic, partitions, registry: apiRegistry, logger });
  runtime = createRuntime({
    group: subscription,
    topic,
    brokers: kafkaBrokers(),
    pool: db.pool,
    registry: runtimeRegistry,
    logger,
    breaker: {
      volumeThreshold: 3,
      errorThresholdPercentage: 50,
      rollingWindowMs: 10_000,
      resetTimeoutMs: 2_000,
    },
    systemRetry: { initialDelayMs: 100, maxDelayMs: 500 },
    statusIntervalMs: 500,
    replayPollMs: 300,
  });
  runtime.on("chat.message.sent", async () => {
    if (mode === "business")
      throw new BusinessError("the monitoring test rejects this event.", { code: "ALERTS_TEST_REJECTED" });
    if (mode === "system") throw new Error("the monitoring test's dependency is down");
  });
  await runtime.start();
  materialiser = await startMaterialiser({
    pool: db.pool,
    topic,
    brokers: kafkaBrokers(),
    groupId: uniqueName("monitoring-materialiser"),
    registry: runtimeRegistry,
    logger,
    statusIntervalMs: 500,
  });

  const { config } = loadConfig({
    NODE_ENV: "test",
    KAFKA_BROKERS: kafkaBrokers().join(","),
    DATABASE_URL: db.url,
    CHATBUS_TOPIC: topic,
    CHATBUS_PARTITIONS: String(partitions),
    CHATBUS_DEV_LOGIN: "1", // the test logs in through POST /v1/dev/login
  });
  app = await buildApp({
    config,
    logger,
    registry: apiRegistry,
    bus,
    readiness: {},
    projection: createProjectionReader(db.pool),
    pool: db.pool,
    realtime: { pool: db.pool, databaseUrl: db.url, channel: eventsChannel(db.schema) },
  });
  api = await app.listen({ host: "127.0.0.1", port: 0 });

  const runtimeTarget = await serveMetrics(runtimeRegistry);
  prometheus = await startPrometheus({
    port: 19090,
    intervalSeconds: 1,
    targets: [
      { job: "chatbus-runtime", target: runtimeTarget },
      { job: "chatbus-api", target: new URL(api).host },
    ],
    rules: shortenRuleDurations(readFileSync(alertsFile, "utf8"), secondsPerMinute),
  });
});

afterAll(async () => {
  await prometheus?.stop();
  await app?.close();
  await runtime?.stop();
  await materialiser?.stop();
  await bus?.close();
  await Promise.all(
    servers
      .filter((server) => server.listening)
      .map((server) => new Promise((resolve) => server.close(resolve))),
  );
  await db?.cleanup();
});

describe("alerts against a real Prometheus and a real runtime", () => {
  it("scrapes the runtime with nothing firing for the subscription", async () => {
    await prometheus.waitFor(
      "the runtime's breaker gauge in Prometheus",
      async () => {
        const result = await prometheus.query(`chatbus_breaker_state{subscription="${subscription}"}`);
        return result.length > 0 ? result : undefined;
      },
      60_000,
    );
    const active = (await prometheus.alerts()).filter((a) => a.labels.subscription === subscription);
    expect(active).toEqual([]);
  });

  it("fires ChatbusDeadLettersGrowing when a handler rejects events", async () => {
    mode = "business";
    await sendMessages(6, "rejected");
    await prometheus.waitFor(
      "6 waiting dead letters",
      async () => ((await waitingDeadLetters()).length >= 6 ? true : undefined),
      60_000,
    );
    const alert = await waitForFiring("ChatbusDeadLettersGrowing", 60_000);
    expect(alert.labels.severity).toBe("warning");
    expect(alert.annotations.summary).toContain(subscription);
    expect(alert.annotations.runbook_url).toBe("docs/runbook.md#chatbusdeadlettersgrowing");
    // A business failure is the handler's answer, not a broken dependency.
    const breaker = await prometheus.query(`chatbus_breaker_state{subscription="${subscription}"}`);
    expect(breaker[0]?.value).toBe("0");
  });

  it("fires ChatbusBreakerOpen when the handler's dependency fails", async () => {
    mode = "system";
    await sendMessages(6, "failing");
    const alert = await waitForFiring("ChatbusBreakerOpen", 90_000);
    expect(alert.labels.severity).toBe("critical");
    expect(alert.annotations.summary).toContain(subscription);
    expect(alert.annotations.runbook_url).toBe("docs/runbook.md#chatbusbreakeropen");
  });

  it("resolves both after the fix and a replay (one first, then the rest)", async () => {
    mode = "fixed";
    await waitForResolved("ChatbusBreakerOpen", 90_000);

    const [first, ...rest] = await waitingDeadLetters();
    expect(first).toBeDefined();
    expect(rest.length).toBeGreaterThanOrEqual(5);
    await replayDeadLetter(db.pool, first as string, { by: "alerts-e2e" });
    await prometheus.waitFor(
      "the first replayed dead letter to be handled",
      async () => ((await getDeadLetter(db.pool, first as string))?.status === "replayed" ? true : undefined),
      60_000,
    );
    // The fix holds for the one: the alert is still firing for the others, then bulk.
    expect((await prometheus.alerts()).some((a) => mine(a, "ChatbusDeadLettersGrowing"))).toBe(true);
    await replayAllDeadLetters(db.pool, subscription, { by: "alerts-e2e" });
    await prometheus.waitFor(
      "no waiting dead letters",
      async () => ((await waitingDeadLetters()).length === 0 ? true : undefined),
      60_000,
    );
    await waitForResolved("ChatbusDeadLettersGrowing", 90_000);
    // Everything was handled in the end: the 6 held by the open breaker and the 6 replayed.
    await prometheus.waitFor(
      "12 events handled by the subscription",
      async () => {
        const [handled] = await prometheus.query(
          `sum(chatbus_events_handled_total{subscription="${subscription}"}) >= 12`,
        );
        return handled;
      },
      30_000,
    );
  });
});

async function login(username: string): Promise<string> {
  const response = await fetch(`${api}/v1/dev/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username }),
  });
  expect(response.status).toBe(200);
  return ((await response.json()) as { token: string }).token;
}

async function post(path: string, token: string, body: unknown): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${api}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: response.status, body: await response.json().catch(() => undefined) };
}

/** Opens bob's SSE stream; resolves once it has carried a chat.message.sent event. */
async function openStream(token: string, signal: AbortSignal): Promise<{ messageSeen: Promise<void> }> {
  const response = await fetch(`${api}/v1/me/events`, {
    headers: { authorization: `Bearer ${token}`, accept: "text/event-stream" },
    signal,
  });
  expect(response.status).toBe(200);
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  const messageSeen = (async () => {
    let text = "";
    while (!text.includes("event: chat.message.sent")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the SSE stream ended before a message arrived; it carried: ${text}`);
      text += decoder.decode(value, { stream: true });
    }
  })();
  messageSeen.catch(() => undefined); // awaited by the test; the stream's abort must not go unhandled
  return { messageSeen };
}

describe("the Grafana dashboard's queries", () => {
  it("parse and return series from the running stack", async () => {
    // Realtime delivery through the API: ana writes to bob, who listens on SSE.
    const ana = await login("ana");
    const bob = await login("bob");
    const created = await post("/v1/conversations", ana, { kind: "direct", members: ["bob"] });
    expect(created.status).toBe(202);
    const { conversationId } = created.body as { conversationId: string };
    const abort = new AbortController();
    try {
      const { messageSeen } = await openStream(bob, abort.signal);
      // Sending checks membership in the projection: retry until the conversation is materialised.
      await prometheus.waitFor(
        "the API to accept ana's message",
        async () => {
          const sent = await post(`/v1/conversations/${conversationId}/messages`, ana, {
            content: { type: "text", text: "hello bob" },
          });
          return sent.status === 202 ? true : undefined;
        },
        60_000,
      );
      await Promise.race([
        messageSeen,
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error("no message on the SSE stream in 60 s")), 60_000),
        ),
      ]);
      // A caller mistake, so that the producer's error series exists.
      await expect(
        bus.send("mon-invalid", {
          type: "chat.message.sent",
          senderId: "",
          content: { type: "text", text: "" },
        }),
      ).rejects.toBeInstanceOf(ValidationError);
      await prometheus.waitFor(
        "Prometheus to scrape the SSE delivery",
        async () => {
          const delivered = await prometheus.query("sum(chatbus_sse_events_delivered_total) > 0");
          return delivered.length > 0 ? true : undefined;
        },
        30_000,
      );
      await new Promise((resolve) => setTimeout(resolve, 2_500)); // one more scrape of everything

      const failures: string[] = [];
      for (const query of dashboardQueries()) {
        const expr = resolveGrafanaVariables(query.expr, "10m");
        try {
          const result = await prometheus.query(expr);
          if (result.length === 0)
            failures.push(`${query.panel} [${query.refId}] returns no series: ${expr}`);
        } catch (error) {
          if (!(error instanceof PrometheusQueryError)) throw error;
          failures.push(`${query.panel} [${query.refId}] does not run: ${error.message}`);
        }
      }
      expect(failures).toEqual([]);
    } finally {
      abort.abort();
    }
  });
});

describe("the exported metrics", () => {
  it("are the documented ones, with their type, labels and latency buckets", async () => {
    const documented = documentedMetricDetails();
    const metadata = await prometheus.metadata();
    const series = await prometheus.series('{__name__=~"chatbus_.+"}');
    const problems: string[] = [];
    const seen = new Set<string>();
    for (const labels of series) {
      const name = labels.__name__ ?? "";
      const family = documentedMetricFor(name, new Map([...documented].map(([n, d]) => [n, d.type])));
      if (!family) {
        problems.push(`${name} is exported but not documented in docs/metrics.md`);
        continue;
      }
      seen.add(family);
      const details = documented.get(family) as MetricDetails;
      const names = Object.keys(labels)
        .filter((l) => !["__name__", "job", "instance", "le"].includes(l))
        .sort();
      if (names.join() !== [...details.labels].sort().join()) {
        problems.push(`${family} has labels [${names}], documented [${details.labels}]`);
      }
    }
    for (const [name, details] of documented) {
      if (name === "up") continue;
      if (!seen.has(name)) problems.push(`${name} is documented but no process of the stack exports it`);
      const type = metadata[name]?.[0]?.type;
      if (type !== details.type) problems.push(`${name} is a ${type}, documented as a ${details.type}`);
      if (details.type === "histogram") {
        const buckets = new Set((await prometheus.series(`${name}_bucket`)).map((l) => l.le ?? ""));
        if ([...buckets].sort().join() !== [...latencyBuckets].sort().join()) {
          problems.push(`${name} has buckets [${[...buckets]}], not the latency buckets`);
        }
      }
    }
    expect([...new Set(problems)]).toEqual([]);
  });
});

describe("a runtime instance that goes away", () => {
  it("fires ChatbusInstanceDown once Prometheus cannot scrape it", async () => {
    const runtimeServer = servers[0] as Server;
    const { port } = runtimeServer.address() as AddressInfo;
    await new Promise((resolve) => {
      runtimeServer.close(resolve);
      runtimeServer.closeAllConnections();
    });
    const alert = await prometheus.waitFor(
      "ChatbusInstanceDown for the runtime",
      async () =>
        (await prometheus.alerts()).find(
          (a) =>
            a.labels.alertname === "ChatbusInstanceDown" &&
            a.labels.instance === `127.0.0.1:${port}` &&
            a.state === "firing",
        ),
      60_000,
    );
    expect(alert.labels.job).toBe("chatbus-runtime");
    expect(alert.labels.severity).toBe("critical");
    expect(alert.annotations.runbook_url).toBe("docs/runbook.md#chatbusinstancedown");
    // The API is still scraped: no alert for it.
    const api = (await prometheus.alerts()).filter(
      (a) => a.labels.alertname === "ChatbusInstanceDown" && a.labels.job === "chatbus-api",
    );
    expect(api).toEqual([]);
  });
});
