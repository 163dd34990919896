/**
 * The optional alert webhook (`CHATBUS_ALERT_WEBHOOK`): a JSON POST when a breaker
 * opens or closes and when a subscription starts dead-lettering. Fire and forget:
 * never awaited by consumption, rate-limited per (subscription, kind), retried.
 */
import type { Logger } from "pino";

/** The JSON body posted. */
export interface Alert {
  kind: "breaker_opened" | "breaker_closed" | "dead_lettering_started" | "consumer_restarted";
  subscription: string;
  instanceId: string;
  message: string;
  at: string;
  details?: Record<string, unknown>;
}

export interface AlertSender {
  send(alert: Omit<Alert, "at">): void;
  /** Resolves when every send in progress has finished (shutdown, tests). */
  flush(): Promise<void>;
}

export interface AlertOptions {
  url: string | undefined;
  logger: Logger;
  /** At most one alert per (subscription, kind) in this window (ms). */
  minIntervalMs?: number;
  /** Attempts per alert. */
  attempts?: number;
  /** Delay between attempts (ms), doubled each time. */
  retryDelayMs?: number;
}

/** An alert sender; a no-op when `url` is unset. */
export function createAlertSender(options: AlertOptions): AlertSender {
  const minIntervalMs = options.minIntervalMs ?? 60_000; // 1 min
  const attempts = options.attempts ?? 3;
  const retryDelayMs = options.retryDelayMs ?? 1000; // 1 s, then 2 s
  const lastSent = new Map<string, number>();
  const inProgress = new Set<Promise<void>>();
  const { url, logger } = options;

  async function post(alert: Alert): Promise<void> {
    for (let attempt = 1; attempt <= attempts; attempt++) {
      try {
        const response = await fetch(url!, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(alert),
          signal: AbortSignal.timeout(5000),
        });
        if (response.ok) return;
        throw new Error(`HTTP ${response.status}`);
      } catch (error) {
        if (attempt === attempts) {
          logger.warn(
            { alert: alert.kind, err: error },
            `the alert webhook did not accept the alert after ${attempts} attempts`,
          );
          return;
        }
        await new Promise((r) => setTimeout(r, retryDelayMs * 2 ** (attempt - 1)));
      }
    }
  }

  return {
    send(partial) {
      if (!url) return;
      const key = `${partial.subscription}\u0000${partial.kind}`;
      const now = Date.now();
      if (now - (lastSent.get(key) ?? Number.NEGATIVE_INFINITY) < minIntervalMs) return;
      lastSent.set(key, now);
      const job = post({ ...partial, at: new Date(now).toISOString() });
      inProgress.add(job);
      void job.finally(() => inProgress.delete(job));
    },
    async flush() {
      await Promise.all(inProgress);
    },
  };
}
