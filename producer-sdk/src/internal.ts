/**
 * `@chatbus/producer-sdk/internal`: NOT part of the SDK's API. Plumbing that
 * `@chatbus/consumer-runtime` shares with the SDK so that it exists once (how
 * kafkajs logs through pino, waiting with a deadline, waiting for a new topic's
 * leaders). It is absent from the SDK's documentation and its root export, and may
 * change in any release without notice; do not import it from applications
 * (docs/decisions.md).
 */
export { kafkaLogCreator, within } from "./kafka-client.ts";
export { waitForPartitionLeaders } from "./topic.ts";
