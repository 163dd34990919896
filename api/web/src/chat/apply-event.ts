/**
 * Applies a live event to the open conversation's state (idempotent: an event seen
 * twice, e.g. once from history and once live, changes nothing the second time).
 * State only: the caller renders.
 */
import type { StreamedEvent } from "../live-events.ts";
import { noteRecentlyOnline } from "./presence.ts";
import { state } from "./state.ts";

/** What the caller must do after applying: membership events need the member list again. */
export type Applied = "done" | "refresh-members";

export function applyToOpen(event: StreamedEvent): Applied {
  switch (event.type) {
    case "chat.message.sent": {
      if (event.seq === null) return "done";
      const { data } = event;
      const clientMsgId = data.clientMsgId ?? null;
      if (clientMsgId) state.pending = state.pending.filter((p) => p.clientMsgId !== clientMsgId);
      if (state.messages.has(event.seq)) return "done";
      state.messages.set(event.seq, {
        id: event.eventId,
        seq: event.seq,
        senderId: data.senderId,
        content: data.content,
        sentAt: event.time,
        editedAt: null,
        recalledAt: null,
        clientMsgId,
      });
      return "done";
    }
    case "chat.message.edited":
      for (const message of state.messages.values()) {
        if (message.id !== event.data.messageId) continue;
        message.content = event.data.content;
        message.editedAt = event.time;
      }
      return "done";
    case "chat.message.recalled":
      for (const message of state.messages.values()) {
        if (message.id === event.data.messageId) message.recalledAt = event.time;
      }
      return "done";
    case "chat.receipt.delivered":
    case "chat.receipt.read": {
      const { userId, upToSeq } = event.data;
      noteRecentlyOnline(userId, event.time);
      const member = state.members.find((m) => m.userId === userId);
      if (!member) return "done";
      if (event.type === "chat.receipt.read") member.lastReadSeq = Math.max(member.lastReadSeq, upToSeq);
      else member.lastDeliveredSeq = Math.max(member.lastDeliveredSeq, upToSeq);
      return "done";
    }
    case "chat.member.joined":
    case "chat.member.left":
    case "chat.conversation.created":
      return "refresh-members";
  }
}
