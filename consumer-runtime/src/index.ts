/** @chatbus/consumer-runtime: handler runtime, dead letters, and the conversation materialiser. */

export * from "./materialiser/index.ts";
