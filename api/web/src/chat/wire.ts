/**
 * The API's answers as the chat page uses them. Every shape comes from the API's
 * response schemas (`api/src/routes/schemas.ts`) as a type-only import, so a change
 * on the server breaks this page's type-check instead of the browser.
 */
import type { MessageContent } from "@chatbus/producer-sdk";
import type {
  ConversationResponse,
  HistoryResponse,
  InboxItemResponse,
  InboxResponse,
  MemberResponse,
  MessageResponse,
} from "../../../src/routes/schemas.ts";

export type { ConversationResponse, HistoryResponse, InboxResponse };

/** A message's content: text or a custom message (e.g. the red packet). */
export type Content = MessageContent;

/** One conversation of the inbox. */
export type InboxItem = InboxItemResponse;

/**
 * A message as the page keeps it: from history, or built from its live
 * chat.message.sent (which has no delivery counts: the page computes the state).
 */
export type Message = Pick<
  MessageResponse,
  "id" | "seq" | "senderId" | "content" | "sentAt" | "editedAt" | "recalledAt" | "clientMsgId"
>;

/** A member with the positions the delivery state is computed from. */
export type Member = Pick<MemberResponse, "userId" | "role" | "lastDeliveredSeq" | "lastReadSeq">;

/**
 * `POST /v1/dev/login`'s answer. Its schema is written inline in
 * `routes/dev-login.ts` (not exported), so this one shape is still typed here.
 */
export interface Session {
  token: string;
  userId: string;
  expiresAt: string;
}
