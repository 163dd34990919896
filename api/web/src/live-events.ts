/**
 * The chat page's live connection: an `EventSource` on `/v1/me/events` that resumes
 * exactly where it stopped. The browser's own reconnect sends `Last-Event-ID`; when
 * the browser gives up (the stream failed outright, e.g. while offline), this opens a
 * new one with `?lastEventId=` after a back-off, so the server replays what was
 * missed, once and in order. When the browser reports going offline the stream is
 * dropped at once and reopened (from the same position) when it is back online.
 * `reset` means the position is gone: reload history.
 */

import type { ChatEventType, EventData, MessageContent } from "@chatbus/producer-sdk";

/**
 * The data of an event as the API streams it: what the sender sent, typed by the
 * SDK's event contract (a type-only import, nothing of the SDK is bundled). One
 * difference: a chat.message.sent carries the message's current content, null once
 * it was recalled.
 */
export type StreamedData<T extends ChatEventType> = T extends "chat.message.sent"
  ? Omit<EventData<T>, "content"> & { content: MessageContent | null }
  : EventData<T>;

/** A chat event as the API streams it (`eventPayload` in `api/src/realtime/stream.ts`). */
export type StreamedEvent = {
  [T in ChatEventType]: {
    type: T;
    eventId: string;
    conversationId: string;
    /** chat.message.sent: its seq; edits and recalls: the target's; receipts: upToSeq; else null. */
    seq: number | null;
    time: string;
    data: StreamedData<T>;
  };
}[ChatEventType];

/** Presence of a contact. */
export interface PresenceChange {
  userId: string;
  status: "online" | "offline";
  at: string;
}

/** Connection state shown to the user. */
export type LiveState = "connecting" | "live" | "reconnecting";

/** Callbacks of the live connection. */
export interface LiveEventsOptions {
  /** The user token (sent as `?access_token=`: EventSource cannot send headers). */
  token: () => string;
  onEvent: (event: StreamedEvent) => void;
  onPresence: (change: PresenceChange) => void;
  /** The stream could not resume: the page reloads what it shows. */
  onReset: () => void;
  /** Connected again after a drop: refresh what is not carried by events (inbox counts). */
  onResumed: () => void;
  onState: (state: LiveState) => void;
  /** Asked before reopening a failed stream: false stops (e.g. the token expired). */
  canReconnect: () => Promise<boolean>;
}

/** Every SSE event name of a chat event; `satisfies` fails the build when the contract gains one. */
const chatEventTypes = Object.keys({
  "chat.conversation.created": true,
  "chat.member.joined": true,
  "chat.member.left": true,
  "chat.message.sent": true,
  "chat.message.edited": true,
  "chat.message.recalled": true,
  "chat.receipt.delivered": true,
  "chat.receipt.read": true,
} satisfies Record<ChatEventType, true>);

const backoffMs = [500, 1000, 2000, 4000, 8000, 15000];

/** A resumable SSE connection. */
export class LiveEvents {
  readonly #options: LiveEventsOptions;
  #source: EventSource | null = null;
  #lastEventId: string | null = null;
  #failures = 0;
  #timer: number | undefined;
  #dropped = false;
  #stopped = false;

  constructor(options: LiveEventsOptions) {
    this.#options = options;
    window.addEventListener("online", this.#onOnline);
    window.addEventListener("offline", this.#onOffline);
  }

  /** The position of the last chat event received (the server's cursor). */
  get lastEventId(): string | null {
    return this.#lastEventId;
  }

  /** Opens the stream (from now, or from the last position when reopening). */
  start(): void {
    this.#stopped = false;
    this.#open();
  }

  /** Closes the stream for good (logout). */
  stop(): void {
    this.#stopped = true;
    window.clearTimeout(this.#timer);
    window.removeEventListener("online", this.#onOnline);
    window.removeEventListener("offline", this.#onOffline);
    this.#source?.close();
    this.#source = null;
  }

  #open(): void {
    if (this.#stopped) return;
    this.#options.onState(this.#dropped ? "reconnecting" : "connecting");
    const params = new URLSearchParams({ access_token: this.#options.token() });
    if (this.#lastEventId) params.set("lastEventId", this.#lastEventId);
    const source = new EventSource(`/v1/me/events?${params}`);
    this.#source = source;
    source.addEventListener("open", () => {
      this.#failures = 0;
      this.#options.onState("live");
      if (this.#dropped) {
        this.#dropped = false;
        this.#options.onResumed();
      }
    });
    source.addEventListener("error", () => {
      if (this.#source !== source) return;
      this.#dropped = true;
      this.#options.onState("reconnecting");
      // CONNECTING: the browser retries by itself with Last-Event-ID. CLOSED: it gave up.
      if (source.readyState === EventSource.CLOSED) this.#retryLater();
    });
    const onChat = (message: MessageEvent<string>) => {
      if (message.lastEventId) this.#lastEventId = message.lastEventId;
      this.#options.onEvent(JSON.parse(message.data) as StreamedEvent);
    };
    for (const type of chatEventTypes) source.addEventListener(type, onChat as EventListener);
    source.addEventListener("presence", ((message: MessageEvent<string>) => {
      this.#options.onPresence(JSON.parse(message.data) as PresenceChange);
    }) as EventListener);
    source.addEventListener("reset", ((message: MessageEvent<string>) => {
      if (message.lastEventId) this.#lastEventId = message.lastEventId;
      this.#options.onReset();
    }) as EventListener);
  }

  #retryLater(): void {
    this.#source?.close();
    this.#source = null;
    window.clearTimeout(this.#timer);
    const delay = backoffMs[Math.min(this.#failures, backoffMs.length - 1)]!;
    this.#failures++;
    this.#timer = window.setTimeout(() => {
      void this.#options.canReconnect().then(
        (ok) => (ok ? this.#open() : this.stop()),
        () => this.#retryLater(),
      );
    }, delay);
  }

  /** The browser lost its network: a half-open stream would only time out, so drop it now. */
  #onOffline = (): void => {
    if (this.#stopped) return;
    this.#source?.close();
    this.#source = null;
    window.clearTimeout(this.#timer);
    this.#dropped = true;
    this.#options.onState("reconnecting");
  };

  #onOnline = (): void => {
    if (this.#stopped || this.#source) return;
    this.#failures = 0;
    window.clearTimeout(this.#timer);
    this.#open();
  };
}
