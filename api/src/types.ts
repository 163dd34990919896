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
  send(conversationId: string, event: ChatEventInput): Promise<SendReceipt>;
}

/** A conversation as the projection holds it (the fields the API relies on). */
export interface ConversationView {
  id: string;
  kind: "direct" | "group";
}

/** A member as the projection holds it (the fields the API relies on). */
export interface MemberView {
  userId: string;
  role?: string;
}

/** A message as the projection holds it (the fields the API relies on). */
export interface MessageView {
  conversationId: string;
  senderId: string;
}

/** The part of the materialiser's projection reader the API uses. */
export interface ProjectionView {
  conversation(conversationId: string): Promise<ConversationView | null | undefined>;
  isMember(conversationId: string, userId: string): Promise<boolean>;
  members(conversationId: string): Promise<MemberView[]>;
  messageByEventId(eventId: string): Promise<MessageView | null | undefined>;
}
