/**
 * The test Prometheus harness against a real Prometheus: it scrapes a prom-client
 * registry served over HTTP, evaluates the real alert rules with shortened
 * durations, answers queries and reports query errors.
 */
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Gauge, Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { alertsFile } from "./monitoring-files.ts";
import {
  PrometheusQueryError,
  type PrometheusServer,
  shortenRuleDurations,
  startPrometheus,
} from "./prometheus-server.ts";

const registry = new Registry();
const breaker = new Gauge({
  name: "chatbus_breaker_state",
  help: "breaker state",
  labelNames: ["subscription"],
  registers: [registry],
});
let http: Server;
let prometheus: PrometheusServer;

beforeAll(async () => {
  breaker.set({ subscription: "harness" }, 0);
  http = createServer(async (_request, response) => {
    response.setHeader("content-type", registry.contentType);
    response.end(await registry.metrics());
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const { port } = http.address() as AddressInfo;
  prometheus = await startPrometheus({
    // 19090 is the e2e test's; the int and e2e tiers may run at the same time.
    port: 19091,
    targets: [{ job: "chatbus-runtime", target: `127.0.0.1:${port}` }],
    rules: shortenRuleDurations(readFileSync(alertsFile, "utf8"), 2),
  });
});

afterAll(async () => {
  await prometheus?.stop();
  await new Promise((resolve) => http?.close(resolve));
});

describe("shortenRuleDurations", () => {
  it("rewrites minutes in for: and range selectors only", () => {
    const rules = "        expr: rate(x[5m]) > 0 and y[30s]\n        for: 10m\n        for: 15s\n";
    expect(shortenRuleDurations(rules, 2)).toBe(
      "        expr: rate(x[10s]) > 0 and y[30s]\n        for: 20s\n        for: 15s\n",
    );
  });
});

describe("test Prometheus", () => {
  it("scrapes the target", async () => {
    const samples = await prometheus.waitFor(
      "the first scrape",
      async () => {
        const result = await prometheus.query('chatbus_breaker_state{subscription="harness"}');
        return result.length > 0 ? result : undefined;
      },
      30_000,
    );
    expect(samples[0]?.metric.job).toBe("chatbus-runtime");
    expect(samples[0]?.value).toBe("0");
    const targets = await prometheus.targets();
    expect(targets.map((t) => t.health)).toEqual(["up"]);
  });

  it("reports a query that does not parse", async () => {
    const error = await prometheus.query("sum by (subscription (x)").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PrometheusQueryError);
    expect((error as PrometheusQueryError).errorType).toBe("bad_data");
  });

  it("fires ChatbusBreakerOpen from the real rules, and resolves it", async () => {
    breaker.set({ subscription: "harness" }, 2);
    const firing = await prometheus.waitFor(
      "ChatbusBreakerOpen to fire",
      async () =>
        (await prometheus.alerts()).find(
          (a) => a.labels.alertname === "ChatbusBreakerOpen" && a.state === "firing",
        ),
      30_000,
    );
    expect(firing.labels.subscription).toBe("harness");
    expect(firing.annotations.runbook_url).toBe("docs/runbook.md#chatbusbreakeropen");

    breaker.set({ subscription: "harness" }, 0);
    await prometheus.waitFor(
      "ChatbusBreakerOpen to resolve",
      async () =>
        (await prometheus.alerts()).some((a) => a.labels.alertname === "ChatbusBreakerOpen")
          ? undefined
          : true,
      30_000,
    );
  });
});
