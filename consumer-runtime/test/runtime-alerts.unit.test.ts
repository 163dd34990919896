/** The alert webhook sender: JSON POST, retried on failure, rate-limited per (subscription, kind). */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { createAlertSender } from "../src/runtime/alerts.ts";

let server: Server | undefined;
afterEach(() => server?.close());

async function webhook(
  failFirst: number,
): Promise<{ url: string; bodies: Record<string, unknown>[]; hits: () => number }> {
  const bodies: Record<string, unknown>[] = [];
  let hits = 0;
  server = createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => {
      body += chunk;
    });
    request.on("end", () => {
      hits++;
      if (hits <= failFirst) {
        response.writeHead(503).end();
        return;
      }
      bodies.push(JSON.parse(body));
      response.end("ok");
    });
  });
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, bodies, hits: () => hits };
}

describe("alert webhook", () => {
  it("retries a refused post and rate-limits repeats of one kind", async () => {
    const hook = await webhook(1);
    const alerts = createAlertSender({ url: hook.url, logger: pino({ level: "silent" }), retryDelayMs: 10 });
    const alert = { kind: "breaker_opened" as const, subscription: "s", instanceId: "i", message: "opened" };
    alerts.send(alert);
    alerts.send(alert); // within the window: dropped
    alerts.send({ ...alert, kind: "breaker_closed", message: "closed" });
    await alerts.flush();
    expect(hook.bodies.map((b) => b.kind).sort()).toEqual(["breaker_closed", "breaker_opened"]);
    expect(hook.hits()).toBe(3);
    expect(hook.bodies[0]).toMatchObject({ subscription: "s", instanceId: "i" });
    expect(typeof hook.bodies[0]!.at).toBe("string");
  });

  it("does nothing without a URL and never throws when the webhook is down", async () => {
    createAlertSender({ url: undefined, logger: pino({ level: "silent" }) }).send({
      kind: "breaker_opened",
      subscription: "s",
      instanceId: "i",
      message: "m",
    });
    const down = createAlertSender({
      url: "http://127.0.0.1:9/unreachable",
      logger: pino({ level: "silent" }),
      retryDelayMs: 1,
    });
    down.send({ kind: "breaker_opened", subscription: "s", instanceId: "i", message: "m" });
    await expect(down.flush()).resolves.toBeUndefined();
  });
});
