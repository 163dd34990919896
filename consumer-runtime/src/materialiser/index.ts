/** The conversation materialiser: projection schema readers, live apply, rebuild. */

export type { ApplyContext, BatchRecord, BatchResult } from "./apply-batch.ts";
export { applyBatch, OffsetMovedError } from "./apply-batch.ts";
export type { EventsNotification } from "./events-channel.ts";
export { decodeEventCursor, encodeEventCursor, eventsChannel } from "./events-channel.ts";
export type { Materialiser, MaterialiserOptions, MaterialiserState } from "./materialiser.ts";
export { startMaterialiser } from "./materialiser.ts";
export { MaterialiserSettings, materialiserDefaults } from "./options.ts";
export type { HistoryPage, MemberPosition, ProjectionReader } from "./projection-reader.ts";
export { createProjectionReader } from "./projection-reader.ts";
export type { RebuildOptions, RebuildProgress, RebuildResult } from "./rebuild.ts";
export { RebuildError, rebuildProjection } from "./rebuild.ts";
export type {
  ConversationView,
  EventCursor,
  HistoryOptions,
  InboxEntry,
  LoggedEvent,
  MemberView,
  MessageView,
} from "./types.ts";
export type { TableComparison, VerifyReport } from "./verify.ts";
export { projectionTables, verifyProjections } from "./verify.ts";
