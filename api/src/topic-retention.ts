/** The chat topic's retention as `/readyz` reports it under `details.topicRetention`. */
import { retentionWarning } from "@chatbus/producer-sdk";

/** What `/readyz` says about the chat topic's retention. */
export interface RetentionDetail {
  topic: string;
  /** `retention.ms` as the broker reports it; -1 is forever, null unknown. */
  retentionMs: number | null;
  /** True when the topic never deletes records, as the event log must not. */
  keepsForever: boolean;
  /** The same line the API logs at start when records expire, else null. */
  warning: string | null;
}

/** Builds the detail from the topic's `retention.ms`. */
export function retentionDetail(topic: string, retentionMs: number | null): RetentionDetail {
  return {
    topic,
    retentionMs,
    keepsForever: retentionMs !== null && retentionMs < 0,
    warning: retentionWarning(topic, retentionMs),
  };
}
