/**
 * chatbus_events_handled_total is counted in plain numbers on the hot path and added
 * to prom-client in bulk (metrics.ts): every read must still see every handled event.
 */
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { metricsByType, runtimeMetrics } from "../src/runtime/metrics.ts";

const handledOf = async (registry: Registry, subscription: string, type: string) => {
  const metric = await registry.getSingleMetric("chatbus_events_handled_total")!.get();
  return metric.values.find((v) => v.labels.subscription === subscription && v.labels.type === type)?.value;
};

describe("handled-event counts", () => {
  it("are added before every read, for every runtime on the registry, and on close", async () => {
    const registry = new Registry();
    const a = metricsByType(runtimeMetrics(registry), "sub-a");
    const b = metricsByType(runtimeMetrics(registry), "sub-b");
    a.get("chat.message.sent").handledPending += 3;
    b.get("chat.message.sent").handledPending += 2;
    expect(await handledOf(registry, "sub-a", "chat.message.sent")).toBe(3);
    expect(await handledOf(registry, "sub-b", "chat.message.sent")).toBe(2);
    expect(await registry.metrics()).toContain(
      'chatbus_events_handled_total{subscription="sub-a",type="chat.message.sent"} 3',
    );
    a.get("chat.message.sent").handledPending++;
    a.get("chat.receipt.read").handledPending++;
    expect(await registry.metrics()).toContain(
      'chatbus_events_handled_total{subscription="sub-a",type="chat.message.sent"} 4',
    );
    expect(await handledOf(registry, "sub-a", "chat.receipt.read")).toBe(1);
    // Closed: what was pending is added at once, and a read no longer asks it.
    b.get("chat.message.sent").handledPending += 5;
    b.close();
    expect(b.get("chat.message.sent").handledPending).toBe(0);
    expect(await handledOf(registry, "sub-b", "chat.message.sent")).toBe(7);
    a.close();
  });
});
