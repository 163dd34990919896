/**
 * Integration harness: a real topic and schema, the real producer SDK bus, the real
 * materialiser and the API listening on a free port; plus a small SSE client and
 * polling helpers. Every piece is real; nothing is mocked.
 */

import {
  createProjectionReader,
  eventsChannel,
  type Materialiser,
  startMaterialiser,
} from "@chatbus/consumer-runtime/materialiser";
import { type ChatBus, createChatBus } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import pino from "pino";
import { Registry } from "prom-client";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import type { ApiApp, ApiDeps } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { type ApiConfig, configDefaults, validateConfig } from "../src/config.ts";

export const operatorKey = "int-operator-key-0123456789";
export const serviceKey = "int-service-key-0123456789";

export interface Harness {
  app: ApiApp;
  /** The API's settings, e.g. to start a second API process's app on the same stack. */
  config: ApiConfig;
  url: string;
  topic: string;
  schema: TestSchema;
  bus: ChatBus;
  materialiser: Materialiser;
  login(user: string): Promise<string>;
  /** Sum of the topic's end offsets: grows by one per record stored. */
  endOffsets(): Promise<number>;
  close(): Promise<void>;
}

/** Starts everything; `sse` overrides the realtime settings (e.g. a short flush). */
export async function startHarness(
  prefix: string,
  overrides: Omit<Partial<ApiConfig>, "sse"> & { sse?: Partial<ApiConfig["sse"]> } = {},
  partitions = 4,
  /** Extra app dependencies, e.g. `readinessDetails`. */
  extra: Pick<ApiDeps, "readinessDetails"> = {},
): Promise<Harness> {
  const [topic, schema] = await Promise.all([createTestTopic(prefix, partitions), createTestSchema(prefix)]);
  const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });
  const bus = await createChatBus({
    brokers: kafkaBrokers(),
    topic,
    partitions,
    ensureTopic: false,
    clientId: uniqueName("api-test"),
    source: "/chatbus/api-test",
    logger,
    registry: new Registry(),
  });
  const materialiser = await startMaterialiser({
    pool: schema.pool,
    brokers: kafkaBrokers(),
    topic,
    groupId: uniqueName(`${prefix}-mat`),
    sessionTimeoutMs: 6000,
    logger,
  });
  const config = validateConfig({
    ...configDefaults,
    nodeEnv: "test",
    jwtSecret: "int-test-secret-0123456789abcdef",
    operatorKey,
    serviceKeys: [serviceKey],
    topic,
    kafkaBrokers: kafkaBrokers(),
    databaseUrl: schema.url,
    devLogin: true, // tests log in through POST /v1/dev/login
    ...overrides,
    sse: { ...configDefaults.sse, deliveredFlushMs: 200, presenceGraceMs: 500, ...overrides.sse },
  });
  const app = await buildApp({
    config,
    logger,
    registry: new Registry(),
    bus,
    projection: createProjectionReader(schema.pool),
    pool: schema.pool,
    readiness: {},
    ...extra,
    realtime: { pool: schema.pool, databaseUrl: schema.url, channel: eventsChannel(schema.schema) },
  });
  const url = await app.listen({ port: 0, host: "127.0.0.1" });
  const admin = new Kafka({ brokers: kafkaBrokers(), logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  return {
    app,
    config,
    url,
    topic,
    schema,
    bus,
    materialiser,
    async login(user) {
      const res = await app.inject({ method: "POST", url: "/v1/dev/login", payload: { username: user } });
      return res.json().token as string;
    },
    async endOffsets() {
      const offsets = await admin.fetchTopicOffsets(topic);
      return offsets.reduce((n, o) => n + Number(o.high), 0);
    },
    async close() {
      await app.close();
      await materialiser.stop();
      await bus.close();
      await admin.disconnect();
      await schema.cleanup();
    },
  };
}

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** One parsed SSE event. */
export interface SseMessage {
  id: string | undefined;
  event: string;
  data: Record<string, unknown>;
}

/** Parses SSE text; returns complete events and the unparsed rest. */
export function parseSse(text: string): { events: SseMessage[]; rest: string } {
  const events: SseMessage[] = [];
  const blocks = text.split("\n\n");
  const rest = blocks.pop() ?? "";
  for (const block of blocks) {
    let id: string | undefined;
    let event = "message";
    const data: string[] = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":") || line === "") continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (data.length > 0) events.push({ id, event, data: JSON.parse(data.join("\n")) });
  }
  return { events, rest };
}

/** A fetch-based SSE client that keeps every event it receives. */
export interface SseClient {
  events: SseMessage[];
  /** The id of the last event that had one (what EventSource would send as Last-Event-ID). */
  lastId(): string | undefined;
  status: number;
  headers: Headers;
  /** True once the server ended the stream (or it was closed). */
  readonly ended: boolean;
  close(): void;
}

export async function openSse(url: string, token: string, lastEventId?: string): Promise<SseClient> {
  const controller = new AbortController();
  const res = await fetch(`${url}/v1/me/events?access_token=${encodeURIComponent(token)}`, {
    headers: lastEventId === undefined ? {} : { "last-event-id": lastEventId },
    signal: controller.signal,
  });
  const events: SseMessage[] = [];
  let ended = false;
  if (res.body) {
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    void (async () => {
      let buffer = "";
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) {
            ended = true;
            return;
          }
          buffer += value;
          const parsed = parseSse(buffer);
          buffer = parsed.rest;
          events.push(...parsed.events);
        }
      } catch {
        ended = true; // aborted
      }
    })();
  }
  return {
    events,
    status: res.status,
    headers: res.headers,
    get ended() {
      return ended;
    },
    lastId: () => [...events].reverse().find((e) => e.id !== undefined)?.id,
    close: () => controller.abort(),
  };
}
