/** Live events of the user's conversations: refresh the inbox, update the open conversation. */
import type { StreamedEvent } from "../live-events.ts";
import { applyToOpen } from "./apply-event.ts";
import { refreshMembers, renderHeader } from "./conversation.ts";
import { refreshInboxSoon } from "./inbox.ts";
import { isNearBottom, renderMessages, scrollToBottom } from "./message-list.ts";
import { markRead } from "./read-receipts.ts";
import { state } from "./state.ts";

export function onEvent(event: StreamedEvent): void {
  refreshInboxSoon();
  if (event.conversationId !== state.openId) return;
  if (state.queued) {
    state.queued.push(event);
    return;
  }
  const stick = isNearBottom();
  if (applyToOpen(event) === "refresh-members") void refreshMembers(event.conversationId);
  renderHeader();
  renderMessages();
  if (stick) scrollToBottom();
  if (event.type === "chat.message.sent") markRead();
}
