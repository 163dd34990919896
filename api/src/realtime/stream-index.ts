/**
 * The stream index: which open streams of this process follow which conversation,
 * and which belong to which user; routes each event to its streams. Membership
 * events move streams in and out of rooms as they pass, so a stream follows exactly
 * the conversations its user is a member of at its position in the log.
 */
import type { LoggedEvent } from "@chatbus/consumer-runtime/materialiser";
import type { SseStream } from "./stream.ts";

/** Membership carried by an event: who starts or stops following its conversation. */
export function membershipChange(event: LoggedEvent): { users: string[]; follow: boolean } | undefined {
  const data = event.payload as { userId?: string; members?: string[] };
  if (event.type === "chat.conversation.created") return { users: data.members ?? [], follow: true };
  if (event.type === "chat.member.joined" && data.userId) return { users: [data.userId], follow: true };
  if (event.type === "chat.member.left" && data.userId) return { users: [data.userId], follow: false };
  return undefined;
}

/** Open streams by conversation and by user. */
export class StreamIndex {
  readonly #byConversation = new Map<string, Set<SseStream>>();
  readonly #byUser = new Map<string, Set<SseStream>>();
  /** Rooms with more open streams than this get no presence and only their own receipts. */
  readonly #roomBroadcastMaxStreams: number;

  constructor(options: { roomBroadcastMaxStreams: number }) {
    this.#roomBroadcastMaxStreams = options.roomBroadcastMaxStreams;
  }

  /** Open streams on this process. */
  get streamCount(): number {
    let n = 0;
    for (const set of this.#byUser.values()) n += set.size;
    return n;
  }

  /** Every open stream (a copy: callers may close streams while iterating). */
  all(): SseStream[] {
    const out: SseStream[] = [];
    for (const set of this.#byUser.values()) out.push(...set);
    return out;
  }

  /** The user's open streams here, oldest first. */
  ofUser(userId: string): SseStream[] {
    return [...(this.#byUser.get(userId) ?? [])];
  }

  /** Users with at least one open stream here. */
  users(): string[] {
    return [...this.#byUser.keys()];
  }

  hasUser(userId: string): boolean {
    return this.#byUser.has(userId);
  }

  /** The open streams following a conversation, or undefined when the room is too big to broadcast to. */
  smallRoom(conversationId: string): Set<SseStream> | undefined {
    const streams = this.#byConversation.get(conversationId);
    return streams && streams.size <= this.#roomBroadcastMaxStreams ? streams : undefined;
  }

  /** Adds a stream to its user (it follows no conversation yet). */
  add(stream: SseStream): void {
    let users = this.#byUser.get(stream.userId);
    if (!users) {
      users = new Set();
      this.#byUser.set(stream.userId, users);
    }
    users.add(stream);
  }

  /** Removes a closed stream; true when it was its user's last one here. */
  remove(stream: SseStream): boolean {
    for (const conversationId of [...stream.conversations]) this.follow(stream, conversationId, false);
    const set = this.#byUser.get(stream.userId);
    set?.delete(stream);
    if (set?.size === 0) {
      this.#byUser.delete(stream.userId);
      return true;
    }
    return false;
  }

  /** Starts or stops routing a conversation's events to a stream. */
  follow(stream: SseStream, conversationId: string, follow: boolean): void {
    if (follow) {
      if (stream.closed) return;
      stream.conversations.add(conversationId);
      let set = this.#byConversation.get(conversationId);
      if (!set) {
        set = new Set();
        this.#byConversation.set(conversationId, set);
      }
      set.add(stream);
    } else {
      stream.conversations.delete(conversationId);
      const set = this.#byConversation.get(conversationId);
      set?.delete(stream);
      if (set?.size === 0) this.#byConversation.delete(conversationId);
    }
  }

  /**
   * In a big room (more open streams than `roomBroadcastMaxStreams`) a receipt goes
   * only to its own user's streams (their other devices): everyone's delivered
   * receipts to everyone would cost streams² writes per message. Senders there read
   * delivery counts from history instead.
   */
  quietReceipt(event: LoggedEvent): boolean {
    if (event.type !== "chat.receipt.delivered" && event.type !== "chat.receipt.read") return false;
    const room = this.#byConversation.get(event.conversationId);
    return (room?.size ?? 0) > this.#roomBroadcastMaxStreams;
  }

  /** Offers an event to every stream that should see it, updating rooms for membership events. */
  dispatch(event: LoggedEvent): void {
    if (this.quietReceipt(event)) {
      const owner = (event.payload as { userId?: string }).userId;
      for (const stream of this.#byUser.get(owner ?? "") ?? []) {
        if (stream.conversations.has(event.conversationId)) stream.offer(event);
      }
      return;
    }
    const targets = new Set(this.#byConversation.get(event.conversationId));
    const change = membershipChange(event);
    if (change) {
      for (const user of change.users) {
        for (const stream of this.#byUser.get(user) ?? []) {
          // A stream still catching up gets the event through its queue, and its
          // subscription moves when the event is delivered in order (see the hub).
          targets.add(stream);
          if (change.follow) this.follow(stream, event.conversationId, true);
        }
      }
    }
    for (const stream of targets) stream.offer(event);
    if (change && !change.follow) {
      for (const user of change.users) {
        for (const stream of this.#byUser.get(user) ?? []) this.follow(stream, event.conversationId, false);
      }
    }
  }
}
