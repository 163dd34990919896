/**
 * What the chat page knows: the session, the inbox and the open conversation. One
 * object shared by the view modules; each module changes only its own part.
 */
import type { LiveEvents, StreamedEvent } from "../live-events.ts";
import type { Content, InboxItem, Member, Message, Session } from "./wire.ts";

/** History page size. */
export const pageSize = 30;

/** A message of mine on its way: shown at the bottom until its event arrives. */
export interface Pending {
  clientMsgId: string;
  content: Content;
  state: "sending" | "sent" | "failed";
  error?: string;
}

export const state = {
  session: null as Session | null,
  inbox: [] as InboxItem[],
  openId: null as string | null,
  /** Conversation to open as soon as it appears in the inbox (just created). */
  openWhenReady: null as string | null,
  messages: new Map<number, Message>(),
  members: [] as Member[],
  kind: "group" as "direct" | "group",
  title: "",
  pending: [] as Pending[],
  hasOlder: false,
  loadingOlder: false,
  /** Events of the open conversation that arrive while its history loads. */
  queued: null as StreamedEvent[] | null,
  online: new Set<string>(),
  live: null as LiveEvents | null,
  lastReadSent: 0,
};

/** The user token of the session ("" when logged out). */
export function token(): string {
  return state.session?.token ?? "";
}

/** The user id of the session. */
export function me(): string | undefined {
  return state.session?.userId;
}
