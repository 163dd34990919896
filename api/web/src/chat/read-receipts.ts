/** Read receipts: what the open conversation shows is read, once the page is visible. */
import { call, conversationPath } from "./api.ts";
import { me, state } from "./state.ts";

let readTimer: number | undefined;

/** Sends a read receipt for what the open conversation shows, when the page is visible. */
export function markRead(): void {
  window.clearTimeout(readTimer);
  readTimer = window.setTimeout(() => {
    const id = state.openId;
    if (!id || document.visibilityState !== "visible") return;
    const self = me();
    const mine = state.members.find((m) => m.userId === self);
    const latest = Math.max(
      0,
      ...[...state.messages.values()].filter((m) => m.senderId !== self).map((m) => m.seq),
    );
    if (latest === 0 || latest <= state.lastReadSent || latest <= (mine?.lastReadSeq ?? 0)) return;
    state.lastReadSent = latest;
    call(`${conversationPath(id)}/read`, { method: "POST", body: { seq: latest } }).catch(() => {
      state.lastReadSent = 0;
    });
  }, 300);
}

/** Marks read when the user comes back to the tab. */
export function installReadReceipts(): void {
  document.addEventListener("visibilitychange", markRead);
}
