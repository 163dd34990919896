/** Dead letters as the library functions take and return them. Offsets and ids are decimal strings (int64). */

/** Why an event became a dead letter. */
/**
 * Why a record became a dead letter: `poison` (undecodable, unknown type, schema
 * violation), `business` (a BusinessError past its retries), `system` (only when a
 * subscription set a maximum), `data` (the database refused the event's data:
 * SQLSTATE classes 22, 23, 54, or the materialiser's own rules), `operator` (an
 * operator skipped a record the subscription kept retrying).
 */
export type FailureClass = "poison" | "business" | "system" | "data" | "operator";

/** `waiting` → (`replaying` → `replayed` | back to `waiting`) or `discarded`. */
export type DeadLetterStatus = "waiting" | "replaying" | "replayed" | "discarded";

/** What `recordDeadLetter` stores. */
export interface DeadLetterInput {
  subscription: string;
  topic: string;
  partition: number;
  offset: string;
  /** The record key (conversation id), as received; null when the record had none. */
  key: string | null;
  /** The record headers as strings. */
  headers: Record<string, string>;
  /** The raw value, byte for byte; null when the record had none. */
  value: Buffer | null;
  eventId?: string | null;
  eventType?: string | null;
  conversationId?: string | null;
  failureClass: FailureClass;
  /** A stable code, e.g. `CHATBUS_UNKNOWN_TYPE` or the BusinessError's code. */
  errorCode: string;
  errorMessage: string;
  errorStack?: string | null;
  /** How many times a handler ran on it (0 for poison). */
  attempts: number;
  firstFailedAt: Date;
  lastFailedAt: Date;
  /**
   * Indexes of the subscription's registrations that had already succeeded for the
   * event; a replay skips them unless asked for all handlers. Empty when omitted.
   */
  handlersSucceeded?: number[];
}

/** A stored dead letter. */
export interface DeadLetter {
  id: string;
  subscription: string;
  topic: string;
  partition: number;
  offset: string;
  key: string | null;
  headers: Record<string, string>;
  value: Buffer | null;
  eventId: string | null;
  eventType: string | null;
  conversationId: string | null;
  failureClass: FailureClass;
  errorCode: string;
  errorMessage: string;
  errorStack: string | null;
  attempts: number;
  firstFailedAt: Date;
  lastFailedAt: Date;
  status: DeadLetterStatus;
  statusChangedAt: Date | null;
  /** Who replayed or discarded it (operator name, `runtime` for automatic changes). */
  statusChangedBy: string | null;
  /** The reason given when discarding. */
  statusReason: string | null;
  replayCount: number;
  lastReplayError: string | null;
  createdAt: Date;
}

/** Filter and page of `listDeadLetters`; newest first. */
export interface DeadLetterFilter {
  subscription?: string;
  status?: DeadLetterStatus;
  /** Page size, 1..1000. */
  limit: number;
  /** `nextCursor` of the previous page. */
  cursor?: string | null;
}

export interface DeadLetterPage {
  items: DeadLetter[];
  /** Pass as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
}
