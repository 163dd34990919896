/**
 * The LISTEN/NOTIFY channel on which the materialiser announces each commit, and the
 * SSE event-id form of a per-partition cursor.
 */
import type { EventCursor } from "./types.ts";

/**
 * The channel of a projection schema: `chatbus_events` for `public`,
 * `chatbus_events_<schema>` otherwise. The payload of each notification is
 * `{"partition":P,"from":"O1","to":"O2"}` (offsets inclusive) after the commit that
 * applied them.
 */
export function eventsChannel(schema: string): string {
  return schema === "public" ? "chatbus_events" : `chatbus_events_${schema}`;
}

/** What a notification on `eventsChannel(schema)` carries. */
export interface EventsNotification {
  partition: number;
  from: string;
  to: string;
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
