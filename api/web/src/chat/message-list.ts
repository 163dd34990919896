/**
 * The open conversation's message list: rendered in place (unchanged messages keep
 * their element), scrolled, and extended upwards with older pages.
 */
import { deliveryOf } from "../../../src/delivery.ts";
import { byId } from "../element.ts";
import { call, conversationPath } from "./api.ts";
import { type MessageActions, messageItem, pendingItem } from "./message-view.ts";
import { me, pageSize, state } from "./state.ts";
import type { HistoryResponse, Message } from "./wire.ts";

const messageList = byId<HTMLOListElement>("message-list");
const messageScroller = byId("messages");
const olderButton = byId<HTMLButtonElement>("load-older");
const composerError = byId("composer-error");

let actions: MessageActions = { edit: () => {}, recall: () => {}, retry: () => {} };

/** Rendered items by key, with what they showed: unchanged items keep their element. */
let rendered = new Map<string, { shown: string; element: HTMLElement }>();

/** Sets the message buttons' actions and loads older pages on scrolling up. */
export function installMessageList(messageActions: MessageActions): void {
  actions = messageActions;
  olderButton.addEventListener("click", () => void loadOlder());
  messageScroller.addEventListener("scroll", () => {
    if (messageScroller.scrollTop < 60) void loadOlder();
  });
}

/** Sent, delivered or read, across the other members (as the API computes it). */
function deliveryStatus(message: Message): "sent" | "delivered" | "read" {
  return deliveryOf(message, state.members).status;
}

function keyed(key: string, shown: string, render: () => HTMLElement): HTMLElement {
  const previous = rendered.get(key);
  return previous && previous.shown === shown ? previous.element : render();
}

/**
 * Updates the message list in place: only new or changed messages become new
 * elements, so the live region announces just those and focus stays where it was.
 */
export function renderMessages(): void {
  const ordered = [...state.messages.values()].sort((a, b) => a.seq - b.seq);
  olderButton.hidden = !state.hasOlder;
  const next = new Map<string, { shown: string; element: HTMLElement }>();
  const elements: HTMLElement[] = [];
  for (const message of ordered) {
    const key = `m:${message.seq}`;
    const delivery = deliveryStatus(message);
    const shown = JSON.stringify([message, delivery, me()]);
    const element = keyed(key, shown, () =>
      messageItem(message, message.senderId === me(), delivery, actions),
    );
    next.set(key, { shown, element });
    elements.push(element);
  }
  for (const pending of state.pending) {
    const key = `p:${pending.clientMsgId}`;
    const shown = JSON.stringify(pending);
    const element = keyed(key, shown, () => pendingItem(pending, actions));
    next.set(key, { shown, element });
    elements.push(element);
  }
  rendered = next;
  elements.forEach((element, index) => {
    const current = messageList.children[index];
    if (current !== element) messageList.insertBefore(element, current ?? null);
  });
  while (messageList.children.length > elements.length) messageList.lastElementChild?.remove();
  byId("conversation-empty").hidden = ordered.length + state.pending.length > 0 || state.queued !== null;
}

export function isNearBottom(): boolean {
  return messageScroller.scrollHeight - messageScroller.scrollTop - messageScroller.clientHeight < 80;
}

export function scrollToBottom(): void {
  messageScroller.scrollTop = messageScroller.scrollHeight;
}

/** Whether a history page that came back full may have older messages before it. */
export function mayHaveOlder(page: HistoryResponse): boolean {
  return page.messages.length === pageSize && (page.messages[0]?.seq ?? 0) > 1;
}

async function loadOlder(): Promise<void> {
  const id = state.openId;
  if (!id || state.loadingOlder || !state.hasOlder) return;
  const oldest = Math.min(...state.messages.keys());
  state.loadingOlder = true;
  olderButton.textContent = "Loading…";
  try {
    const page = await call<HistoryResponse>(
      `${conversationPath(id)}/messages?before=${oldest}&limit=${pageSize}`,
    );
    if (state.openId !== id) return;
    const before = messageScroller.scrollHeight - messageScroller.scrollTop;
    for (const message of page.messages)
      if (!state.messages.has(message.seq)) state.messages.set(message.seq, message);
    state.hasOlder = mayHaveOlder(page);
    renderMessages();
    // Keep the message the reader was looking at in place.
    messageScroller.scrollTop = messageScroller.scrollHeight - before;
  } catch (error) {
    composerError.textContent = (error as Error).message;
  } finally {
    state.loadingOlder = false;
    olderButton.textContent = "Load older messages";
  }
}
