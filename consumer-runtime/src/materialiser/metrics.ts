/**
 * The runtime's metrics, labelled subscription="materialiser". The runtime may have
 * registered the same names in the same registry already: those are reused, so the
 * two never clash.
 */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

const latencyBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The metric handles the materialiser updates. */
export interface MaterialiserMetrics {
  consumed: Counter<"subscription" | "type">;
  handled: Counter<"subscription" | "type">;
  failed: Counter<"subscription" | "failure_class">;
  retried: Counter<"subscription" | "failure_class">;
  deadLettered: Counter<"subscription" | "failure_class">;
  breakerState: Gauge<"subscription">;
  breakerTransitions: Counter<"subscription" | "to">;
  handlerDuration: Histogram<"subscription" | "type">;
  lag: Gauge<"subscription" | "partition">;
  endToEnd: Histogram<"subscription">;
  restarts: Counter<"subscription">;
  inFlight: Gauge<"subscription">;
}

function counter<L extends string>(registry: Registry, name: string, help: string, labelNames: L[]) {
  return (
    (registry.getSingleMetric(name) as Counter<L> | undefined) ??
    new Counter<L>({ name, help, labelNames, registers: [registry] })
  );
}
function gauge<L extends string>(registry: Registry, name: string, help: string, labelNames: L[]) {
  return (
    (registry.getSingleMetric(name) as Gauge<L> | undefined) ??
    new Gauge<L>({ name, help, labelNames, registers: [registry] })
  );
}
function histogram<L extends string>(registry: Registry, name: string, help: string, labelNames: L[]) {
  return (
    (registry.getSingleMetric(name) as Histogram<L> | undefined) ??
    new Histogram<L>({ name, help, labelNames, buckets: latencyBuckets, registers: [registry] })
  );
}

/** Gets or creates the shared runtime metrics in `registry`. */
export function materialiserMetrics(registry: Registry): MaterialiserMetrics {
  return {
    consumed: counter(registry, "chatbus_events_consumed_total", "Events consumed.", [
      "subscription",
      "type",
    ]),
    handled: counter(registry, "chatbus_events_handled_total", "Events handled successfully.", [
      "subscription",
      "type",
    ]),
    failed: counter(registry, "chatbus_events_failed_total", "Failed handling attempts.", [
      "subscription",
      "failure_class",
    ]),
    retried: counter(registry, "chatbus_events_retried_total", "Retries of failed handling.", [
      "subscription",
      "failure_class",
    ]),
    deadLettered: counter(registry, "chatbus_events_dead_lettered_total", "Events dead-lettered.", [
      "subscription",
      "failure_class",
    ]),
    breakerState: gauge(
      registry,
      "chatbus_breaker_state",
      "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
      ["subscription"],
    ),
    breakerTransitions: counter(registry, "chatbus_breaker_transitions_total", "Breaker state changes.", [
      "subscription",
      "to",
    ]),
    handlerDuration: histogram(registry, "chatbus_handler_duration_seconds", "Handler duration.", [
      "subscription",
      "type",
    ]),
    lag: gauge(registry, "chatbus_consumer_lag", "Records behind the high watermark.", [
      "subscription",
      "partition",
    ]),
    endToEnd: histogram(
      registry,
      "chatbus_end_to_end_latency_seconds",
      "From ce_time to handled or materialised.",
      ["subscription"],
    ),
    restarts: counter(registry, "chatbus_consumer_restarts_total", "Consumer restarts after a crash.", [
      "subscription",
    ]),
    inFlight: gauge(registry, "chatbus_events_in_flight", "Events being handled.", ["subscription"]),
  };
}
