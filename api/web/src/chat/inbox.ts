/** The inbox: the user's conversations with unread counts and last messages. */
import { byId, h, replaceChildren, shortTime } from "../element.ts";
import { call } from "./api.ts";
import { directPeer, displayName, preview } from "./names.ts";
import { presenceDot } from "./presence.ts";
import { me, state } from "./state.ts";
import type { InboxItem, InboxResponse } from "./wire.ts";

const inboxList = byId<HTMLUListElement>("conversation-list");
const inboxEmpty = byId("inbox-empty");

/** Opens a conversation; set by `installInbox` (the conversation module imports this one). */
let open: (id: string) => void = () => {};
let inboxTimer: number | undefined;

/** Sets what clicking a conversation does. */
export function installInbox(openConversation: (id: string) => void): void {
  open = openConversation;
}

/** Refreshes the inbox soon (events come in bursts). */
export function refreshInboxSoon(): void {
  window.clearTimeout(inboxTimer);
  inboxTimer = window.setTimeout(() => void refreshInbox(), 200);
}

export async function refreshInbox(): Promise<void> {
  if (!state.session) return;
  try {
    const { conversations } = await call<InboxResponse>("/v1/me/conversations");
    state.inbox = conversations;
    renderInbox();
    if (state.openWhenReady && conversations.some((c) => c.id === state.openWhenReady)) {
      const id = state.openWhenReady;
      state.openWhenReady = null;
      open(id);
    }
  } catch {
    // Shown by the connection state; the next event or resume refreshes again.
  }
}

/** Focuses the first conversation of the list (after closing one on a narrow screen). */
export function focusInbox(): void {
  inboxList.querySelector<HTMLButtonElement>("button")?.focus();
}

export function renderInbox(): void {
  inboxEmpty.hidden = state.inbox.length > 0;
  replaceChildren(inboxList, ...state.inbox.map(inboxEntry));
}

function inboxEntry(item: InboxItem): HTMLElement {
  const peer = item.kind === "direct" ? directPeer(item.id) : null;
  const unread = item.id === state.openId ? 0 : item.unreadCount;
  const last = item.lastMessage;
  return h(
    "li",
    {},
    h(
      "button",
      {
        type: "button",
        class: "conversation-item",
        "data-conversation": item.id,
        "aria-current": item.id === state.openId ? "true" : undefined,
        onclick: () => open(item.id),
      },
      h(
        "span",
        { class: "conversation-line" },
        peer ? presenceDot(peer) : h("span", { class: "group-icon", "aria-hidden": "true" }, "#"),
        h("span", { class: "conversation-name" }, displayName(item)),
        last ? h("time", { datetime: last.sentAt }, shortTime(last.sentAt)) : null,
      ),
      h(
        "span",
        { class: "conversation-line" },
        h(
          "span",
          { class: "conversation-preview" },
          last
            ? `${last.senderId === me() ? "You" : last.senderId}: ${preview(last.content)}`
            : "No messages yet",
        ),
        unread > 0
          ? h(
              "span",
              { class: "unread", "data-testid": "unread", "aria-label": `${unread} unread` },
              unread > 99 ? "99+" : String(unread),
            )
          : null,
      ),
    ),
  );
}
