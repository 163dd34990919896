/**
 * `@chatbus/consumer-runtime/materialiser`: the conversation materialiser (live apply
 * into PostgreSQL, rebuild, verify) and the projection reader the API serves from.
 * The batch apply itself (`applyBatch`, `OffsetMovedError`) stays internal.
 */

export type { EventsNotification } from "../materialiser/events-channel.ts";
export { decodeEventCursor, encodeEventCursor, eventsChannel } from "../materialiser/events-channel.ts";
export type { Materialiser, MaterialiserOptions, MaterialiserState } from "../materialiser/materialiser.ts";
export { startMaterialiser } from "../materialiser/materialiser.ts";
export { MaterialiserSettings, materialiserDefaults } from "../materialiser/options.ts";
export type {
  HistoryMessage,
  HistoryPage,
  MemberPosition,
  OffsetRange,
  ProjectionReader,
} from "../materialiser/projection-reader.ts";
export { createProjectionReader } from "../materialiser/projection-reader.ts";
export type { RebuildOptions, RebuildProgress, RebuildResult } from "../materialiser/rebuild.ts";
export { RebuildError, rebuildProjection } from "../materialiser/rebuild.ts";
export type {
  ConversationView,
  EventCursor,
  HistoryOptions,
  InboxEntry,
  LoggedEvent,
  MemberView,
  MessageView,
} from "../materialiser/types.ts";
export type { TableComparison, VerifyReport } from "../materialiser/verify.ts";
export { projectionTables, verifyProjections } from "../materialiser/verify.ts";
