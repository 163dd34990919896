/**
 * The open conversation: its header (title, members with presence), loading its
 * details and newest history page, and live events that arrive meanwhile (queued,
 * then applied once the history is in).
 */
import { byId, h, replaceChildren } from "../element.ts";
import type { StreamedEvent } from "../live-events.ts";
import { call, conversationPath } from "./api.ts";
import { applyToOpen } from "./apply-event.ts";
import { focusInbox, renderInbox } from "./inbox.ts";
import { mayHaveOlder, renderMessages, scrollToBottom } from "./message-list.ts";
import { displayName } from "./names.ts";
import { presenceDot } from "./presence.ts";
import { markRead } from "./read-receipts.ts";
import { me, pageSize, state } from "./state.ts";
import type { ConversationResponse, HistoryResponse } from "./wire.ts";

const layout = byId("layout");
const conversationPane = byId("conversation");
const conversationTitle = byId("conversation-title");
const conversationMembers = byId("conversation-members");
const addMemberButton = byId<HTMLButtonElement>("add-member");
const composerInput = byId<HTMLTextAreaElement>("composer-input");
const composerError = byId("composer-error");

/** The back button (narrow screens) closes the conversation. */
export function installConversation(): void {
  byId("back").addEventListener("click", () => {
    state.openId = null;
    showConversation(false);
    renderInbox();
    focusInbox();
  });
}

export function showConversation(open: boolean): void {
  layout.dataset.view = open ? "conversation" : "inbox";
  conversationPane.hidden = !open;
  byId("no-conversation").hidden = open;
}

export async function openConversation(id: string): Promise<void> {
  resetOpen(id);
  showConversation(true);
  renderHeader();
  renderMessages();
  renderInbox();
  try {
    const [details, page] = await Promise.all([
      call<ConversationResponse>(conversationPath(id)),
      call<HistoryResponse>(`${conversationPath(id)}/messages?limit=${pageSize}`),
    ]);
    if (state.openId !== id) return;
    state.members = details.members;
    if (details.conversation) {
      state.kind = details.conversation.kind;
      state.title = displayName({ id, kind: state.kind, title: details.conversation.title });
    }
    for (const message of page.messages) state.messages.set(message.seq, message);
    state.hasOlder = mayHaveOlder(page);
    const queued = state.queued ?? [];
    state.queued = null;
    for (const event of queued) applyQueued(event);
    renderHeader();
    renderMessages();
    scrollToBottom();
    markRead();
    composerInput.focus();
  } catch (error) {
    state.queued = null;
    composerError.textContent = (error as Error).message;
  }
}

/** Forgets the previous conversation; events for `id` queue until its history is in. */
function resetOpen(id: string): void {
  state.openId = id;
  state.messages = new Map();
  state.pending = [];
  state.members = [];
  state.hasOlder = false;
  state.queued = [];
  state.lastReadSent = 0;
  const item = state.inbox.find((c) => c.id === id);
  state.kind = item?.kind ?? (id.startsWith("dm:") ? "direct" : "group");
  state.title = item ? displayName(item) : id;
}

function applyQueued(event: StreamedEvent): void {
  if (applyToOpen(event) === "refresh-members") void refreshMembers(event.conversationId);
}

export function renderHeader(): void {
  conversationTitle.textContent = state.title;
  addMemberButton.hidden = state.kind !== "group";
  const self = me();
  replaceChildren(
    conversationMembers,
    ...state.members
      .filter((m) => m.userId !== self)
      .map((m) => h("span", { class: "member" }, presenceDot(m.userId), m.userId)),
  );
}

export async function refreshMembers(id: string): Promise<void> {
  const details = await call<ConversationResponse>(conversationPath(id)).catch(() => null);
  if (!details || state.openId !== id) return;
  state.members = details.members;
  renderHeader();
  renderMessages();
}
