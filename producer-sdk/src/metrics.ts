/** The producer's Prometheus metrics, registered on the registry the caller passes in. */
import { Counter, Histogram, type Registry } from "prom-client";

/** Latency buckets shared by every chatbus histogram, in seconds. */
export const latencyBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** What the bus records; a no-op without a registry. */
export interface ProducerMetrics {
  produced(type: string): void;
  failed(code: string): void;
  sendDuration(seconds: number): void;
}

const noop: ProducerMetrics = { produced() {}, failed() {}, sendDuration() {} };

/** Reuses a metric already on the registry (two buses, one registry) instead of throwing. */
function existing<T>(registry: Registry, name: string): T | undefined {
  return registry.getSingleMetric(name) as T | undefined;
}

/** Registers (or reuses) the producer metrics on `registry`. */
export function createProducerMetrics(registry: Registry | undefined): ProducerMetrics {
  if (!registry) return noop;
  const produced =
    existing<Counter<"type">>(registry, "chatbus_events_produced_total") ??
    new Counter({
      name: "chatbus_events_produced_total",
      help: "Events acknowledged by Kafka, by event type.",
      labelNames: ["type"],
      registers: [registry],
    });
  const errors =
    existing<Counter<"code">>(registry, "chatbus_producer_errors_total") ??
    new Counter({
      name: "chatbus_producer_errors_total",
      help: "Sends that failed, by error code (CHATBUS_VALIDATION, CHATBUS_RATE_LIMITED, CHATBUS_BROKER_UNAVAILABLE, ...).",
      labelNames: ["code"],
      registers: [registry],
    });
  const duration =
    existing<Histogram>(registry, "chatbus_send_duration_seconds") ??
    new Histogram({
      name: "chatbus_send_duration_seconds",
      help: "Time from send() to Kafka's acknowledgement (acks=all), in seconds.",
      buckets: latencyBuckets,
      registers: [registry],
    });
  return {
    produced: (type) => produced.inc({ type }),
    failed: (code) => errors.inc({ code }),
    sendDuration: (seconds) => duration.observe(seconds),
  };
}
