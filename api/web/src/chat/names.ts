/** How conversations and messages are named in lists: peers, titles, previews. */
import { me } from "./state.ts";
import type { Content } from "./wire.ts";

/** The other user of a direct conversation (its id is `dm:<a>:<b>`). */
export function directPeer(id: string): string | null {
  const self = me();
  const match = /^dm:([^:]+):([^:]+)$/.exec(id);
  if (!match || !self) return null;
  return match[1] === self ? match[2]! : match[1]!;
}

export function displayName(item: { id: string; kind: string; title: string | null }): string {
  if (item.kind === "direct") return directPeer(item.id) ?? item.title ?? item.id;
  return item.title ?? item.id;
}

export function preview(content: Content | null, recalled = false): string {
  if (recalled || content === null) return "Message recalled";
  if (content.type === "text") return content.text;
  if (content.customType === "red_packet") return "Red packet";
  return content.description ?? `[${content.customType}]`;
}
