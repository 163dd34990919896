/**
 * The API's Prometheus metrics, registered on the registry the caller passes in.
 * Labels never carry conversation or user ids (unbounded cardinality).
 */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/** Latency buckets shared by every chatbus histogram, in seconds. */
export const latencyBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The API's metric handles. */
export interface ApiMetrics {
  httpDuration: Histogram<"method" | "route" | "status_code">;
  sseStreams: Gauge;
  sseDelivered: Counter;
  sseDeliveryLatency: Histogram;
  sseDisconnects: Counter<"reason">;
  sseCatchUps: Counter;
  deliveredReceipts: Counter;
  deliveredReceiptsSkipped: Counter;
}

/** Creates the API's metrics on `registry` (call once per registry). */
export function createApiMetrics(registry: Registry): ApiMetrics {
  const registers = [registry];
  const sseDisconnects = new Counter({
    name: "chatbus_sse_disconnects_total",
    help: "SSE streams closed by the server, by reason (slow_client: read nothing while behind, shutdown, error, token_expired, replaced).",
    labelNames: ["reason"],
    registers,
  });
  // Every reason at 0 from the start, so that rate() and increase() see the first disconnect.
  for (const reason of ["slow_client", "shutdown", "error", "token_expired", "replaced"])
    sseDisconnects.inc({ reason }, 0);
  return {
    httpDuration: new Histogram({
      name: "chatbus_http_request_duration_seconds",
      help: "HTTP request duration by method, route template and status code.",
      labelNames: ["method", "route", "status_code"],
      buckets: latencyBuckets,
      registers,
    }),
    sseStreams: new Gauge({
      name: "chatbus_sse_streams",
      help: "Open Server-Sent Events streams on this process.",
      registers,
    }),
    sseDelivered: new Counter({
      name: "chatbus_sse_events_delivered_total",
      help: "Events written to SSE streams (one per stream and event).",
      registers,
    }),
    sseDeliveryLatency: new Histogram({
      name: "chatbus_sse_delivery_latency_seconds",
      help: "Time from an event being materialised to it being written to an SSE stream.",
      buckets: latencyBuckets,
      registers,
    }),
    sseDisconnects,
    sseCatchUps: new Counter({
      name: "chatbus_sse_catch_ups_total",
      help: "Times a live SSE stream's client fell more than sse.maxBufferedBytes behind and the stream was written from the event log until it caught up.",
      registers,
    }),
    deliveredReceipts: new Counter({
      name: "chatbus_delivered_receipts_sent_total",
      help: "chat.receipt.delivered events sent for SSE deliveries (batched per user and conversation).",
      registers,
    }),
    deliveredReceiptsSkipped: new Counter({
      name: "chatbus_delivered_receipts_skipped_total",
      help: "Delivered receipts not sent because the conversation has more members than sse.deliveredReceiptsMaxMembers.",
      registers,
    }),
  };
}
