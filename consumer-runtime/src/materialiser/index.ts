/** The conversation materialiser: projection schema readers, live apply, rebuild. */
export type { EventsNotification } from "./events-channel.ts";
export { decodeEventCursor, encodeEventCursor, eventsChannel } from "./events-channel.ts";
export type { ProjectionReader } from "./projection-reader.ts";
export { createProjectionReader } from "./projection-reader.ts";
export type {
  ConversationView,
  EventCursor,
  HistoryOptions,
  InboxEntry,
  LoggedEvent,
  MemberView,
  MessageView,
} from "./types.ts";
