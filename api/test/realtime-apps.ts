/**
 * More API instances on a harness's projection, topic and bus: each has its own hub
 * (LISTEN connection, stream index, presence process id), as a separate API process
 * has, and may use other realtime settings.
 */
import { createProjectionReader, eventsChannel } from "@chatbus/consumer-runtime/materialiser";
import pino from "pino";
import { Registry } from "prom-client";
import type { ApiApp } from "../src/app.ts";
import { buildApp } from "../src/build-app.ts";
import { type ApiConfig, configDefaults, validateConfig } from "../src/config.ts";
import { type Harness, operatorKey, serviceKey } from "./harness.ts";

/** An extra API instance and its base URL. */
export interface ApiOn {
  app: ApiApp;
  url: string;
}

/** Starts another API instance on `harness`'s stack; `sse` overrides its realtime settings. */
export async function startApiOn(
  harness: Harness,
  overrides: Omit<Partial<ApiConfig>, "sse"> & { sse?: Partial<ApiConfig["sse"]> } = {},
): Promise<ApiOn> {
  const config = validateConfig({
    ...configDefaults,
    nodeEnv: "test",
    devLogin: true, // tests log in through POST /v1/dev/login
    jwtSecret: "int-test-secret-0123456789abcdef",
    operatorKey,
    serviceKeys: [serviceKey],
    topic: harness.topic,
    databaseUrl: harness.schema.url,
    ...overrides,
    sse: { ...configDefaults.sse, deliveredFlushMs: 200, presenceGraceMs: 500, ...overrides.sse },
  });
  const app = await buildApp({
    config,
    logger: pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" }),
    registry: new Registry(),
    bus: harness.bus,
    projection: createProjectionReader(harness.schema.pool),
    pool: harness.schema.pool,
    readiness: {},
    realtime: {
      pool: harness.schema.pool,
      databaseUrl: harness.schema.url,
      channel: eventsChannel(harness.schema.schema),
    },
  });
  const url = await app.listen({ port: 0, host: "127.0.0.1" });
  return { app, url };
}
