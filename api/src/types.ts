/**
 * What the API needs from its collaborators, as narrow structural types: the
 * producer SDK's bus and the materialiser's projection reader satisfy them, and the
 * API never reaches into their internals.
 */
import type { ChatEventInput } from "@chatbus/producer-sdk";

/** Where an accepted event landed in Kafka. */
export interface SendReceipt {
  eventId: string;
  partition: number;
  offset: string;
}

/** The part of `createChatBus()`'s result the API uses. */
export interface EventSender {
  /** `kind` picks the conversation's rate limit (direct or group). */
  send(
    conversationId: string,
    event: ChatEventInput,
    options?: { kind?: "direct" | "group" },
  ): Promise<SendReceipt>;
}
