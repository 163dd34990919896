/**
 * The LISTEN/NOTIFY channel on which the materialiser announces each commit, and the
 * SSE event-id form of a per-partition cursor.
 */
import type { EventCursor } from "./types.ts";

/**
 * The channel of a projection schema: `chatbus_events` for `public`,
 * `chatbus_events_<schema>` otherwise. The payload of each notification is
 * `{"partition":P,"from":"O1","to":"O2","members":["c1",…]}` (offsets inclusive) after
 * the commit that applied them; see `EventsNotification`.
 */
export function eventsChannel(schema: string): string {
  return schema === "public" ? "chatbus_events" : `chatbus_events_${schema}`;
}

/** What a notification on `eventsChannel(schema)` carries. */
export interface EventsNotification {
  partition: number;
  from: string;
  to: string;
  /**
   * The conversations whose membership the batch changed (created, joined, left):
   * the API's membership cache drops exactly these. Absent when the list would not
   * fit the payload, and from materialisers older than the field: a reader must then
   * take every membership as changed.
   */
  members?: string[];
}

/**
 * Bytes of conversation ids a notification lists at most: PostgreSQL refuses payloads
 * of 8000 bytes or more (and the whole statement with them), so a batch that changes
 * more memberships than fit says "all" by leaving `members` out.
 */
const maxListedBytes = 6000;

/** The payload of the notification for a committed batch (see `EventsNotification`). */
export function eventsNotification(
  partition: number,
  from: string,
  to: string,
  membersChanged: Iterable<string>,
): string {
  const members = [...new Set(membersChanged)];
  let bytes = 0;
  for (const id of members) bytes += Buffer.byteLength(JSON.stringify(id)) + 1;
  const n: EventsNotification =
    bytes <= maxListedBytes ? { partition, from, to, members } : { partition, from, to };
  return JSON.stringify(n);
}

/** Encodes a cursor as an SSE id: `p:offset` pairs sorted by partition, joined by `.`, e.g. `0:41.3:7`. */
export function encodeEventCursor(cursor: EventCursor): string {
  return Object.keys(cursor)
    .map(Number)
    .sort((a, b) => a - b)
    .map((p) => `${p}:${cursor[p]}`)
    .join(".");
}

/** Decodes an SSE id made by `encodeEventCursor`; null when it is not one (the client then gets a reset). */
export function decodeEventCursor(text: string): EventCursor | null {
  if (text === "") return {};
  const cursor: EventCursor = {};
  for (const pair of text.split(".")) {
    const match = /^(\d{1,5}):(\d{1,19})$/.exec(pair);
    if (!match) return null;
    cursor[Number(match[1])] = match[2]!;
  }
  return cursor;
}
