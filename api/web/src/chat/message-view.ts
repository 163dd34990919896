/**
 * One message as an element: its content (text, the red packet card, or "recalled"),
 * time, edited mark, and for one's own messages the edit and recall buttons and the
 * delivery badge. Pure views: the actions come in as callbacks.
 */
import { h, shortTime } from "../element.ts";
import type { Pending } from "./state.ts";
import type { Content, Message } from "./wire.ts";

/** What the buttons of a message do (the composer module implements them). */
export interface MessageActions {
  edit: (message: Message) => void;
  recall: (message: Message) => void;
  retry: (pending: Pending) => void;
}

type BadgeState = "sending" | "sent" | "delivered" | "read" | "failed";

const deliveryText: Record<BadgeState, string> = {
  sending: "Sending…",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
  failed: "Not sent",
};
const deliveryIcon: Record<BadgeState, string> = {
  sending: "◷",
  sent: "✓",
  delivered: "✓✓",
  read: "✓✓",
  failed: "!",
};

function deliveryBadge(status: BadgeState): HTMLElement {
  return h(
    "span",
    { class: "delivery", "data-state": status, "data-testid": "delivery", title: deliveryText[status] },
    h("span", { "aria-hidden": "true" }, deliveryIcon[status]),
    h("span", { class: "visually-hidden" }, deliveryText[status]),
  );
}

/** The red envelope, drawn (emoji fonts are not everywhere). */
function redPacketIcon(): SVGSVGElement {
  const template = document.createElement("template");
  template.innerHTML = redPacketSvg;
  return template.content.firstElementChild as SVGSVGElement;
}

const redPacketSvg =
  '<svg class="red-packet-icon" viewBox="0 0 32 32" width="40" height="40" aria-hidden="true" focusable="false">' +
  '<rect x="5" y="2" width="22" height="28" rx="3" fill="#e5322d" stroke="#ffd36b" stroke-width="1.5"/>' +
  '<path d="M5 10 Q16 19 27 10" fill="none" stroke="#ffd36b" stroke-width="1.5"/>' +
  '<circle cx="16" cy="15" r="4" fill="#ffd36b"/></svg>';

function renderContent(content: Content | null, recalled: boolean): HTMLElement {
  if (recalled || content === null) {
    return h("p", { class: "body recalled" }, "This message was recalled.");
  }
  if (content.type === "text") return h("p", { class: "body" }, content.text);
  if (content.customType === "red_packet") {
    const data = (content.data ?? {}) as { amount?: unknown; currency?: unknown; greeting?: unknown };
    const amount = typeof data.amount === "number" ? data.amount : null;
    const currency = typeof data.currency === "string" ? data.currency : "";
    return h(
      "div",
      { class: "body red-packet", "data-testid": "red-packet", role: "group", "aria-label": "Red packet" },
      redPacketIcon(),
      h(
        "span",
        { class: "red-packet-text" },
        h("strong", {}, typeof data.greeting === "string" ? data.greeting : "Red packet"),
        amount === null ? null : h("span", {}, `${amount.toLocaleString()} ${currency}`.trim()),
        h("small", {}, "Red packet"),
      ),
    );
  }
  return h(
    "p",
    { class: "body custom" },
    content.description ?? `[${content.customType}: this page cannot show it]`,
  );
}

/** A message of the conversation; `delivery` is its state when it is mine (else ignored). */
export function messageItem(
  message: Message,
  mine: boolean,
  delivery: "sent" | "delivered" | "read",
  actions: MessageActions,
): HTMLElement {
  const recalled = message.recalledAt !== null;
  return h(
    "li",
    {
      class: `message ${mine ? "mine" : "theirs"}`,
      "data-seq": message.seq,
      "data-testid": "message",
      "data-message-id": message.id,
    },
    h(
      "div",
      { class: "meta" },
      mine ? null : h("span", { class: "sender" }, message.senderId),
      h("time", { datetime: message.sentAt }, shortTime(message.sentAt)),
      message.editedAt && !recalled
        ? h("span", { class: "edited", "data-testid": "edited" }, "edited")
        : null,
    ),
    renderContent(message.content, recalled),
    mine ? ownFooter(message, recalled, delivery, actions) : null,
  );
}

function ownFooter(
  message: Message,
  recalled: boolean,
  delivery: "sent" | "delivered" | "read",
  actions: MessageActions,
): HTMLElement {
  return h(
    "div",
    { class: "message-footer" },
    !recalled && message.content?.type === "text"
      ? h(
          "button",
          { type: "button", class: "link", onclick: () => actions.edit(message) },
          "Edit",
          h("span", { class: "visually-hidden" }, ` message ${message.seq}`),
        )
      : null,
    recalled
      ? null
      : h(
          "button",
          { type: "button", class: "link", onclick: () => actions.recall(message) },
          "Recall",
          h("span", { class: "visually-hidden" }, ` message ${message.seq}`),
        ),
    deliveryBadge(delivery),
  );
}

/** A message of mine that the API has not confirmed yet (or that failed). */
export function pendingItem(pending: Pending, actions: MessageActions): HTMLElement {
  return h(
    "li",
    { class: "message mine pending", "data-testid": "pending-message" },
    renderContent(pending.content, false),
    h(
      "div",
      { class: "message-footer" },
      pending.state === "failed" ? h("span", { class: "form-error" }, pending.error ?? "Not sent.") : null,
      pending.state === "failed"
        ? h("button", { type: "button", class: "link", onclick: () => actions.retry(pending) }, "Retry")
        : null,
      deliveryBadge(pending.state === "sent" ? "sent" : pending.state),
    ),
  );
}
