/**
 * Which failures of a batch are the data's fault and which are the infrastructure's.
 *
 * - `data`: the database refused what one event carries (SQLSTATE class 22 data
 *   exception, 23 integrity constraint violation, 54 program limit exceeded). Retrying
 *   cannot help; the batch is bisected down to the record(s) at fault, which become
 *   dead letters of class `data` and the partition moves on.
 * - `conflict`: serialization failure (40001), deadlock (40P01) or another writer of the
 *   partition moved the stored offset: retried in place, not a breaker failure.
 * - `gap`: the batch starts above the stored offset: the consumer seeks back.
 * - `system`: everything else, in particular connection refused or lost, timeouts and
 *   classes 08, 53, 57, 58. The batch is retried with back-off, the partition held and
 *   the breaker open. Unknown errors are treated as system failures: retrying something
 *   that might heal is safer than dead-lettering on a guess.
 */
import { OffsetGapError, OffsetMovedError } from "./apply-batch.ts";

/** How the materialiser reacts to a failed batch. */
export type FailureKind = "data" | "conflict" | "gap" | "system";

/** A classified failure with the database's SQLSTATE (null when there is none). */
export interface ClassifiedFailure {
  kind: FailureKind;
  sqlState: string | null;
  /** The database's (or driver's) message, with its detail when there is one. */
  message: string;
}

/** SQLSTATE classes whose errors are caused by the data of an event. */
const dataClasses = new Set(["22", "23", "54"]);
/** Serialization failure and deadlock: a retry in place succeeds. */
const conflictStates = new Set(["40001", "40P01"]);

function sqlStateOf(error: unknown): string | null {
  if (typeof error !== "object" || error === null) return null;
  const code = (error as { code?: unknown }).code;
  // A SQLSTATE is five characters of digits and upper-case letters; Node's error codes
  // (ECONNREFUSED, ETIMEDOUT…) are not.
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) ? code : null;
}

/** Classifies an error thrown by `applyBatch`. */
export function classifyFailure(error: unknown): ClassifiedFailure {
  const base = error instanceof Error ? error.message : String(error);
  const detail =
    typeof error === "object" && error !== null && typeof (error as { detail?: unknown }).detail === "string"
      ? ` (${(error as { detail: string }).detail})`
      : "";
  const message = `${base}${detail}`;
  if (error instanceof OffsetGapError) return { kind: "gap", sqlState: null, message };
  if (error instanceof OffsetMovedError) return { kind: "conflict", sqlState: null, message };
  const sqlState = sqlStateOf(error);
  if (sqlState === null) return { kind: "system", sqlState, message };
  if (conflictStates.has(sqlState)) return { kind: "conflict", sqlState, message };
  if (dataClasses.has(sqlState.slice(0, 2))) return { kind: "data", sqlState, message };
  return { kind: "system", sqlState, message };
}
