/** Who is online: the dots next to names, updated in place when presence changes. */
import { h } from "../element.ts";
import type { PresenceChange } from "../live-events.ts";
import { me, state } from "./state.ts";

export function presenceDot(userId: string): HTMLElement {
  const online = state.online.has(userId);
  return h("span", {
    class: `presence ${online ? "online" : "offline"}`,
    "data-user": userId,
    role: "img",
    "aria-label": `${userId} is ${online ? "online" : "offline"}`,
    title: online ? "online" : "offline",
  });
}

export function onPresence(change: PresenceChange): void {
  if (change.status === "online") state.online.add(change.userId);
  else state.online.delete(change.userId);
  for (const dot of document.querySelectorAll<HTMLElement>(".presence")) {
    if (dot.dataset.user !== change.userId) continue;
    const online = change.status === "online";
    dot.className = `presence ${online ? "online" : "offline"}`;
    dot.setAttribute("aria-label", `${change.userId} is ${change.status}`);
    dot.title = change.status;
  }
}

/**
 * Presence arrives on transitions only, so a contact who was already online when a
 * conversation with them began has sent no presence yet. A fresh delivered receipt
 * is written by their open stream: it shows they are online (until an offline event).
 */
export function noteRecentlyOnline(userId: string, time: string): void {
  if (userId === me() || state.online.has(userId)) return;
  if (Date.now() - new Date(time).getTime() > 10_000) return;
  onPresence({ userId, status: "online", at: time });
}
