/**
 * The chat page (`/`): dev login, the inbox with unread counts, a conversation with
 * its history (scrolling up loads older pages), a composer, delivery states of one's
 * own messages, custom messages (the red packet card), edits, recalls, presence, and
 * live updates over SSE that resume after a dropped connection.
 */
import "./base.css";
import "./chat.css";
import { confirmDialog, formDialog } from "./dialogs.ts";
import { byId, h, replaceChildren, shortTime } from "./element.ts";
import { ApiRequestError, apiRequest } from "./http.ts";
import { LiveEvents, type LiveState, type PresenceChange, type StreamedEvent } from "./live-events.ts";

type Content =
  | { type: "text"; text: string }
  | { type: "custom"; customType: string; data: unknown; description?: string };

interface InboxItem {
  id: string;
  kind: "direct" | "group";
  title: string | null;
  lastSeq: number;
  lastActivityAt: string;
  unreadCount: number;
  lastReadSeq: number;
  lastMessage: { id: string; seq: number; senderId: string; content: Content | null; sentAt: string } | null;
}

interface Message {
  id: string;
  seq: number;
  senderId: string;
  content: Content | null;
  sentAt: string;
  editedAt: string | null;
  recalledAt: string | null;
  clientMsgId?: string | null;
}

interface Member {
  userId: string;
  role: string;
  lastDeliveredSeq: number;
  lastReadSeq: number;
}

/** A message of mine on its way: shown at the bottom until its event arrives. */
interface Pending {
  clientMsgId: string;
  content: Content;
  state: "sending" | "sent" | "failed";
  error?: string;
}

interface Session {
  token: string;
  userId: string;
  expiresAt: string;
}

const pageSize = 30;
const sessionKey = "chatbus.session";

const state = {
  session: null as Session | null,
  inbox: [] as InboxItem[],
  openId: null as string | null,
  /** Conversation to open as soon as it appears in the inbox (just created). */
  openWhenReady: null as string | null,
  messages: new Map<number, Message>(),
  members: [] as Member[],
  kind: "group" as "direct" | "group",
  title: "",
  pending: [] as Pending[],
  hasOlder: false,
  loadingOlder: false,
  /** Events of the open conversation that arrive while its history loads. */
  queued: null as StreamedEvent[] | null,
  online: new Set<string>(),
  live: null as LiveEvents | null,
  lastReadSent: 0,
};

// ---- elements ---------------------------------------------------------------

const loginView = byId("login-view");
const loginForm = byId<HTMLFormElement>("login-form");
const loginError = byId("login-error");
const chatView = byId("chat-view");
const meLabel = byId("me");
const connection = byId("connection");
const inboxList = byId<HTMLUListElement>("conversation-list");
const inboxEmpty = byId("inbox-empty");
const conversationPane = byId("conversation");
const conversationTitle = byId("conversation-title");
const conversationMembers = byId("conversation-members");
const addMemberButton = byId<HTMLButtonElement>("add-member");
const messageList = byId<HTMLOListElement>("message-list");
const messageScroller = byId("messages");
const olderButton = byId<HTMLButtonElement>("load-older");
const composer = byId<HTMLFormElement>("composer");
const composerInput = byId<HTMLTextAreaElement>("composer-input");
const composerError = byId("composer-error");
const layout = byId("layout");

// ---- helpers ----------------------------------------------------------------

function token(): string {
  return state.session?.token ?? "";
}

function call<T>(path: string, options: Parameters<typeof apiRequest>[1] = {}): Promise<T> {
  return apiRequest<T>(path, { ...options, token: token() }).catch((error: unknown) => {
    if (error instanceof ApiRequestError && error.status === 401) logout("Your session ended; log in again.");
    throw error;
  });
}

/** A client message id (not crypto.randomUUID: that needs a secure context). */
function newClientMsgId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `web-${Date.now().toString(36)}-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function conversationPath(id: string): string {
  return `/v1/conversations/${encodeURIComponent(id)}`;
}

/** The other user of a direct conversation (its id is `dm:<a>:<b>`). */
function directPeer(id: string): string | null {
  const me = state.session?.userId;
  const match = /^dm:([^:]+):([^:]+)$/.exec(id);
  if (!match || !me) return null;
  return match[1] === me ? match[2]! : match[1]!;
}

function displayName(item: { id: string; kind: string; title: string | null }): string {
  if (item.kind === "direct") return directPeer(item.id) ?? item.title ?? item.id;
  return item.title ?? item.id;
}

function preview(content: Content | null, recalled = false): string {
  if (recalled || content === null) return "Message recalled";
  if (content.type === "text") return content.text;
  if (content.customType === "red_packet") return "Red packet";
  return content.description ?? `[${content.customType}]`;
}

function presenceDot(userId: string): HTMLElement {
  const online = state.online.has(userId);
  return h("span", {
    class: `presence ${online ? "online" : "offline"}`,
    "data-user": userId,
    role: "img",
    "aria-label": `${userId} is ${online ? "online" : "offline"}`,
    title: online ? "online" : "offline",
  });
}

// ---- login ------------------------------------------------------------------

function loadSession(): Session | null {
  try {
    const raw = sessionStorage.getItem(sessionKey);
    if (!raw) return null;
    const session = JSON.parse(raw) as Session;
    return new Date(session.expiresAt).getTime() > Date.now() + 10_000 ? session : null;
  } catch {
    return null;
  }
}

loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const username = String(new FormData(loginForm).get("username") ?? "").trim();
  loginError.textContent = "";
  apiRequest<Session>("/v1/dev/login", { method: "POST", body: { username } }).then(
    (session) => {
      sessionStorage.setItem(sessionKey, JSON.stringify(session));
      start(session);
    },
    (error: ApiRequestError) => {
      loginError.textContent =
        error.status === 404
          ? "Development login is off on this server (production mode)."
          : error.field === "username"
            ? "A username is letters, digits and . _ : @ - (starting with a letter or digit), up to 128 characters."
            : error.message;
    },
  );
});

byId("logout").addEventListener("click", () => logout());

function logout(message?: string): void {
  state.live?.stop();
  state.live = null;
  state.session = null;
  sessionStorage.removeItem(sessionKey);
  chatView.hidden = true;
  loginView.hidden = false;
  loginError.textContent = message ?? "";
  byId<HTMLInputElement>("username").focus();
}

function start(session: Session): void {
  state.session = session;
  loginView.hidden = true;
  chatView.hidden = false;
  meLabel.textContent = session.userId;
  state.inbox = [];
  state.openId = null;
  state.online.clear();
  showConversation(false);
  void refreshInbox();
  state.live = new LiveEvents({
    token,
    onEvent,
    onPresence,
    onReset: () => {
      void refreshInbox();
      if (state.openId) void openConversation(state.openId);
    },
    onResumed: () => void refreshInbox(),
    onState: showLiveState,
    canReconnect: async () => {
      try {
        await apiRequest("/v1/me/conversations?limit=1", { token: token() });
        return true;
      } catch (error) {
        if (error instanceof ApiRequestError && error.status === 401) {
          logout("Your session ended; log in again.");
          return false;
        }
        throw error;
      }
    },
  });
  state.live.start();
}

function showLiveState(live: LiveState): void {
  connection.dataset.state = live;
  connection.textContent = live === "live" ? "Live" : live === "connecting" ? "Connecting…" : "Reconnecting…";
}

// ---- inbox ------------------------------------------------------------------

let inboxTimer: number | undefined;

/** Refreshes the inbox soon (events come in bursts). */
function refreshInboxSoon(): void {
  window.clearTimeout(inboxTimer);
  inboxTimer = window.setTimeout(() => void refreshInbox(), 200);
}

async function refreshInbox(): Promise<void> {
  if (!state.session) return;
  try {
    const { conversations } = await call<{ conversations: InboxItem[] }>("/v1/me/conversations");
    state.inbox = conversations;
    renderInbox();
    if (state.openWhenReady && conversations.some((c) => c.id === state.openWhenReady)) {
      const id = state.openWhenReady;
      state.openWhenReady = null;
      void openConversation(id);
    }
  } catch {
    // Shown by the connection state; the next event or resume refreshes again.
  }
}

function renderInbox(): void {
  inboxEmpty.hidden = state.inbox.length > 0;
  replaceChildren(
    inboxList,
    ...state.inbox.map((item) => {
      const peer = item.kind === "direct" ? directPeer(item.id) : null;
      const unread = item.id === state.openId ? 0 : item.unreadCount;
      const last = item.lastMessage;
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: "conversation-item",
            "data-conversation": item.id,
            "aria-current": item.id === state.openId ? "true" : undefined,
            onclick: () => void openConversation(item.id),
          },
          h(
            "span",
            { class: "conversation-line" },
            peer ? presenceDot(peer) : h("span", { class: "group-icon", "aria-hidden": "true" }, "#"),
            h("span", { class: "conversation-name" }, displayName(item)),
            last ? h("time", { datetime: last.sentAt }, shortTime(last.sentAt)) : null,
          ),
          h(
            "span",
            { class: "conversation-line" },
            h(
              "span",
              { class: "conversation-preview" },
              last
                ? `${last.senderId === state.session?.userId ? "You" : last.senderId}: ${preview(last.content)}`
                : "No messages yet",
            ),
            unread > 0
              ? h(
                  "span",
                  { class: "unread", "data-testid": "unread", "aria-label": `${unread} unread` },
                  unread > 99 ? "99+" : String(unread),
                )
              : null,
          ),
        ),
      );
    }),
  );
}

// ---- conversation -------------------------------------------------------------

function showConversation(open: boolean): void {
  layout.dataset.view = open ? "conversation" : "inbox";
  conversationPane.hidden = !open;
  byId("no-conversation").hidden = open;
}

byId("back").addEventListener("click", () => {
  state.openId = null;
  showConversation(false);
  renderInbox();
  inboxList.querySelector<HTMLButtonElement>("button")?.focus();
});

interface HistoryPage {
  messages: Message[];
  prevBefore: number | null;
}

async function openConversation(id: string): Promise<void> {
  state.openId = id;
  state.messages = new Map();
  state.pending = [];
  state.members = [];
  state.hasOlder = false;
  state.queued = [];
  state.lastReadSent = 0;
  const item = state.inbox.find((c) => c.id === id);
  state.kind = item?.kind ?? (id.startsWith("dm:") ? "direct" : "group");
  state.title = item ? displayName(item) : id;
  showConversation(true);
  renderHeader();
  renderMessages();
  renderInbox();
  try {
    const [details, page] = await Promise.all([
      call<{ conversation: { kind: "direct" | "group"; title: string | null } | null; members: Member[] }>(
        conversationPath(id),
      ),
      call<HistoryPage>(`${conversationPath(id)}/messages?limit=${pageSize}`),
    ]);
    if (state.openId !== id) return;
    state.members = details.members;
    if (details.conversation) {
      state.kind = details.conversation.kind;
      state.title = displayName({ id, kind: state.kind, title: details.conversation.title });
    }
    for (const message of page.messages) state.messages.set(message.seq, message);
    state.hasOlder = page.messages.length === pageSize && (page.messages[0]?.seq ?? 0) > 1;
    const queued = state.queued ?? [];
    state.queued = null;
    for (const event of queued) applyToOpen(event);
    renderHeader();
    renderMessages();
    scrollToBottom();
    markRead();
    composerInput.focus();
  } catch (error) {
    state.queued = null;
    composerError.textContent = (error as Error).message;
  }
}

function renderHeader(): void {
  conversationTitle.textContent = state.title;
  addMemberButton.hidden = state.kind !== "group";
  const me = state.session?.userId;
  replaceChildren(
    conversationMembers,
    ...state.members
      .filter((m) => m.userId !== me)
      .map((m) => h("span", { class: "member" }, presenceDot(m.userId), m.userId)),
  );
}

async function loadOlder(): Promise<void> {
  const id = state.openId;
  if (!id || state.loadingOlder || !state.hasOlder) return;
  const oldest = Math.min(...state.messages.keys());
  state.loadingOlder = true;
  olderButton.textContent = "Loading…";
  try {
    const page = await call<HistoryPage>(
      `${conversationPath(id)}/messages?before=${oldest}&limit=${pageSize}`,
    );
    if (state.openId !== id) return;
    const before = messageScroller.scrollHeight - messageScroller.scrollTop;
    for (const message of page.messages)
      if (!state.messages.has(message.seq)) state.messages.set(message.seq, message);
    state.hasOlder = page.messages.length === pageSize && (page.messages[0]?.seq ?? 0) > 1;
    renderMessages();
    // Keep the message the reader was looking at in place.
    messageScroller.scrollTop = messageScroller.scrollHeight - before;
  } catch (error) {
    composerError.textContent = (error as Error).message;
  } finally {
    state.loadingOlder = false;
    olderButton.textContent = "Load older messages";
  }
}

olderButton.addEventListener("click", () => void loadOlder());
messageScroller.addEventListener("scroll", () => {
  if (messageScroller.scrollTop < 60) void loadOlder();
});

function isNearBottom(): boolean {
  return messageScroller.scrollHeight - messageScroller.scrollTop - messageScroller.clientHeight < 80;
}

function scrollToBottom(): void {
  messageScroller.scrollTop = messageScroller.scrollHeight;
}

/** Sent, delivered or read, across the other members (as the API computes it). */
function deliveryOf(message: Message): "sent" | "delivered" | "read" {
  const others = state.members.filter((m) => m.userId !== message.senderId);
  if (others.length === 0) return "sent";
  if (others.every((m) => m.lastReadSeq >= message.seq)) return "read";
  if (others.every((m) => Math.max(m.lastDeliveredSeq, m.lastReadSeq) >= message.seq)) return "delivered";
  return "sent";
}

const deliveryText = {
  sending: "Sending…",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
  failed: "Not sent",
};
const deliveryIcon = { sending: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };

function deliveryBadge(status: keyof typeof deliveryText): HTMLElement {
  return h(
    "span",
    { class: "delivery", "data-state": status, "data-testid": "delivery", title: deliveryText[status] },
    h("span", { "aria-hidden": "true" }, deliveryIcon[status]),
    h("span", { class: "visually-hidden" }, deliveryText[status]),
  );
}

/** The red envelope, drawn (emoji fonts are not everywhere). */
function redPacketIcon(): SVGSVGElement {
  const template = document.createElement("template");
  template.innerHTML = redPacketSvg;
  return template.content.firstElementChild as SVGSVGElement;
}

const redPacketSvg =
  '<svg class="red-packet-icon" viewBox="0 0 32 32" width="40" height="40" aria-hidden="true" focusable="false">' +
  '<rect x="5" y="2" width="22" height="28" rx="3" fill="#e5322d" stroke="#ffd36b" stroke-width="1.5"/>' +
  '<path d="M5 10 Q16 19 27 10" fill="none" stroke="#ffd36b" stroke-width="1.5"/>' +
  '<circle cx="16" cy="15" r="4" fill="#ffd36b"/></svg>';

function renderContent(content: Content | null, recalled: boolean): HTMLElement {
  if (recalled || content === null) {
    return h("p", { class: "body recalled" }, "This message was recalled.");
  }
  if (content.type === "text") return h("p", { class: "body" }, content.text);
  if (content.customType === "red_packet") {
    const data = (content.data ?? {}) as { amount?: unknown; currency?: unknown; greeting?: unknown };
    const amount = typeof data.amount === "number" ? data.amount : null;
    const currency = typeof data.currency === "string" ? data.currency : "";
    return h(
      "div",
      { class: "body red-packet", "data-testid": "red-packet", role: "group", "aria-label": "Red packet" },
      redPacketIcon(),
      h(
        "span",
        { class: "red-packet-text" },
        h("strong", {}, typeof data.greeting === "string" ? data.greeting : "Red packet"),
        amount === null ? null : h("span", {}, `${amount.toLocaleString()} ${currency}`.trim()),
        h("small", {}, "Red packet"),
      ),
    );
  }
  return h(
    "p",
    { class: "body custom" },
    content.description ?? `[${content.customType}: this page cannot show it]`,
  );
}

function messageItem(message: Message): HTMLElement {
  const mine = message.senderId === state.session?.userId;
  const recalled = message.recalledAt !== null;
  return h(
    "li",
    {
      class: `message ${mine ? "mine" : "theirs"}`,
      "data-seq": message.seq,
      "data-testid": "message",
      "data-message-id": message.id,
    },
    h(
      "div",
      { class: "meta" },
      mine ? null : h("span", { class: "sender" }, message.senderId),
      h("time", { datetime: message.sentAt }, shortTime(message.sentAt)),
      message.editedAt && !recalled
        ? h("span", { class: "edited", "data-testid": "edited" }, "edited")
        : null,
    ),
    renderContent(message.content, recalled),
    mine
      ? h(
          "div",
          { class: "message-footer" },
          !recalled && message.content?.type === "text"
            ? h(
                "button",
                { type: "button", class: "link", onclick: () => void editMessage(message) },
                "Edit",
                h("span", { class: "visually-hidden" }, ` message ${message.seq}`),
              )
            : null,
          recalled
            ? null
            : h(
                "button",
                { type: "button", class: "link", onclick: () => void recallMessage(message) },
                "Recall",
                h("span", { class: "visually-hidden" }, ` message ${message.seq}`),
              ),
          deliveryBadge(deliveryOf(message)),
        )
      : null,
  );
}

function pendingItem(pending: Pending): HTMLElement {
  return h(
    "li",
    { class: "message mine pending", "data-testid": "pending-message" },
    renderContent(pending.content, false),
    h(
      "div",
      { class: "message-footer" },
      pending.state === "failed" ? h("span", { class: "form-error" }, pending.error ?? "Not sent.") : null,
      pending.state === "failed"
        ? h("button", { type: "button", class: "link", onclick: () => void retrySend(pending) }, "Retry")
        : null,
      deliveryBadge(pending.state === "sent" ? "sent" : pending.state),
    ),
  );
}

/** Rendered items by key, with what they showed: unchanged items keep their element. */
let rendered = new Map<string, { shown: string; element: HTMLElement }>();

function keyed(key: string, shown: string, render: () => HTMLElement): HTMLElement {
  const previous = rendered.get(key);
  return previous && previous.shown === shown ? previous.element : render();
}

/**
 * Updates the message list in place: only new or changed messages become new
 * elements, so the live region announces just those and focus stays where it was.
 */
function renderMessages(): void {
  const ordered = [...state.messages.values()].sort((a, b) => a.seq - b.seq);
  olderButton.hidden = !state.hasOlder;
  const next = new Map<string, { shown: string; element: HTMLElement }>();
  const elements: HTMLElement[] = [];
  for (const message of ordered) {
    const key = `m:${message.seq}`;
    const shown = JSON.stringify([message, deliveryOf(message), state.session?.userId]);
    const element = keyed(key, shown, () => messageItem(message));
    next.set(key, { shown, element });
    elements.push(element);
  }
  for (const pending of state.pending) {
    const key = `p:${pending.clientMsgId}`;
    const shown = JSON.stringify(pending);
    const element = keyed(key, shown, () => pendingItem(pending));
    next.set(key, { shown, element });
    elements.push(element);
  }
  rendered = next;
  elements.forEach((element, index) => {
    const current = messageList.children[index];
    if (current !== element) messageList.insertBefore(element, current ?? null);
  });
  while (messageList.children.length > elements.length) messageList.lastElementChild?.remove();
  byId("conversation-empty").hidden = ordered.length + state.pending.length > 0 || state.queued !== null;
}

// ---- live events ------------------------------------------------------------

function onEvent(event: StreamedEvent): void {
  refreshInboxSoon();
  if (event.conversationId !== state.openId) return;
  if (state.queued) {
    state.queued.push(event);
    return;
  }
  const stick = isNearBottom();
  applyToOpen(event);
  renderHeader();
  renderMessages();
  if (stick) scrollToBottom();
  if (event.type === "chat.message.sent") markRead();
}

/** Applies one event of the open conversation to its state (idempotent). */
function applyToOpen(event: StreamedEvent): void {
  const data = event.data;
  switch (event.type) {
    case "chat.message.sent": {
      if (event.seq === null) return;
      const clientMsgId = typeof data.clientMsgId === "string" ? data.clientMsgId : null;
      if (clientMsgId) state.pending = state.pending.filter((p) => p.clientMsgId !== clientMsgId);
      if (state.messages.has(event.seq)) return;
      state.messages.set(event.seq, {
        id: event.eventId,
        seq: event.seq,
        senderId: String(data.senderId),
        content: data.content as Content,
        sentAt: event.time,
        editedAt: null,
        recalledAt: null,
        clientMsgId,
      });
      return;
    }
    case "chat.message.edited":
    case "chat.message.recalled": {
      for (const message of state.messages.values()) {
        if (message.id !== data.messageId) continue;
        if (event.type === "chat.message.edited") {
          message.content = data.content as Content;
          message.editedAt = event.time;
        } else {
          message.recalledAt = event.time;
        }
      }
      return;
    }
    case "chat.receipt.delivered":
    case "chat.receipt.read": {
      noteRecentlyOnline(String(data.userId), event.time);
      const member = state.members.find((m) => m.userId === data.userId);
      const upTo = Number(data.upToSeq);
      if (!member) return;
      if (event.type === "chat.receipt.read") member.lastReadSeq = Math.max(member.lastReadSeq, upTo);
      else member.lastDeliveredSeq = Math.max(member.lastDeliveredSeq, upTo);
      return;
    }
    case "chat.member.joined":
    case "chat.member.left":
    case "chat.conversation.created":
      void refreshMembers(event.conversationId);
      return;
  }
}

async function refreshMembers(id: string): Promise<void> {
  const details = await call<{ members: Member[] }>(conversationPath(id)).catch(() => null);
  if (!details || state.openId !== id) return;
  state.members = details.members;
  renderHeader();
  renderMessages();
}

/**
 * Presence arrives on transitions only, so a contact who was already online when a
 * conversation with them began has sent no presence yet. A fresh delivered receipt
 * is written by their open stream: it shows they are online (until an offline event).
 */
function noteRecentlyOnline(userId: string, time: string): void {
  if (userId === state.session?.userId || state.online.has(userId)) return;
  if (Date.now() - new Date(time).getTime() > 10_000) return;
  onPresence({ userId, status: "online", at: time });
}

function onPresence(change: PresenceChange): void {
  if (change.status === "online") state.online.add(change.userId);
  else state.online.delete(change.userId);
  for (const dot of document.querySelectorAll<HTMLElement>(".presence")) {
    if (dot.dataset.user !== change.userId) continue;
    const online = change.status === "online";
    dot.className = `presence ${online ? "online" : "offline"}`;
    dot.setAttribute("aria-label", `${change.userId} is ${change.status}`);
    dot.title = change.status;
  }
}

// ---- reading and writing ----------------------------------------------------------

let readTimer: number | undefined;

/** Sends a read receipt for what the open conversation shows, when the page is visible. */
function markRead(): void {
  window.clearTimeout(readTimer);
  readTimer = window.setTimeout(() => {
    const id = state.openId;
    if (!id || document.visibilityState !== "visible") return;
    const me = state.session?.userId;
    const mine = state.members.find((m) => m.userId === me);
    const latest = Math.max(
      0,
      ...[...state.messages.values()].filter((m) => m.senderId !== me).map((m) => m.seq),
    );
    if (latest === 0 || latest <= state.lastReadSent || latest <= (mine?.lastReadSeq ?? 0)) return;
    state.lastReadSent = latest;
    call(`${conversationPath(id)}/read`, { method: "POST", body: { seq: latest } }).catch(() => {
      state.lastReadSent = 0;
    });
  }, 300);
}

document.addEventListener("visibilitychange", markRead);

async function send(content: Content): Promise<void> {
  const id = state.openId;
  if (!id) return;
  const pending: Pending = { clientMsgId: newClientMsgId(), content, state: "sending" };
  state.pending.push(pending);
  renderMessages();
  scrollToBottom();
  await deliver(id, pending);
}

async function deliver(id: string, pending: Pending): Promise<void> {
  try {
    await call(`${conversationPath(id)}/messages`, {
      method: "POST",
      body: { content: pending.content, clientMsgId: pending.clientMsgId },
    });
    pending.state = "sent";
  } catch (error) {
    pending.state = "failed";
    pending.error =
      error instanceof ApiRequestError && error.status === 429
        ? "Too many messages right now; retry in a moment."
        : (error as Error).message;
  }
  if (state.openId === id && state.pending.includes(pending)) renderMessages();
}

function retrySend(pending: Pending): Promise<void> {
  const id = state.openId;
  if (!id) return Promise.resolve();
  pending.state = "sending";
  renderMessages();
  // The same clientMsgId: if the first try did reach Kafka, this is still one message.
  return deliver(id, pending);
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = composerInput.value.trim();
  composerError.textContent = "";
  if (!text) return;
  composerInput.value = "";
  void send({ type: "text", text });
});

composerInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    composer.requestSubmit();
  }
});

byId("send-red-packet").addEventListener("click", () => {
  void formDialog({
    title: "Send a red packet",
    fields: [
      { name: "amount", label: "Amount", type: "number", value: "88", required: true, min: 1 },
      { name: "currency", label: "Currency", value: "CNY", required: true, maxLength: 3 },
      { name: "greeting", label: "Greeting", value: "恭喜发财", required: true, maxLength: 60 },
    ],
    submitLabel: "Send red packet",
    submit: async (values) => {
      const amount = Number(values.amount);
      if (!Number.isFinite(amount) || amount <= 0) throw new Error("The amount must be a positive number.");
      void send({
        type: "custom",
        customType: "red_packet",
        data: { amount, currency: values.currency ?? "CNY", greeting: values.greeting ?? "" },
        description: "[Red packet]",
      });
    },
  });
});

function editMessage(message: Message): Promise<boolean> {
  const id = state.openId;
  const current = message.content?.type === "text" ? message.content.text : "";
  return formDialog({
    title: "Edit message",
    fields: [{ name: "text", label: "Message", type: "textarea", value: current, required: true }],
    submitLabel: "Save",
    submit: async (values) => {
      if (!id) return;
      await call(`${conversationPath(id)}/messages/${message.id}`, {
        method: "PATCH",
        body: { content: { type: "text", text: values.text ?? "" } },
      });
    },
  });
}

function recallMessage(message: Message): Promise<boolean> {
  const id = state.openId;
  return confirmDialog({
    title: "Recall message?",
    message: "Everyone in the conversation will see that it was recalled instead of its content.",
    confirmLabel: "Recall",
    danger: true,
    action: async () => {
      if (!id) return;
      await call(`${conversationPath(id)}/messages/${message.id}`, { method: "DELETE" });
    },
  });
}

function splitUsers(value: string | undefined): string[] {
  return (value ?? "")
    .split(/[\s,]+/)
    .map((u) => u.trim())
    .filter(Boolean);
}

byId("new-conversation").addEventListener("click", () => {
  void formDialog({
    title: "New conversation",
    fields: [
      {
        name: "kind",
        label: "Kind",
        type: "select",
        value: "direct",
        options: [
          { value: "direct", label: "Direct (two people)" },
          { value: "group", label: "Group" },
        ],
      },
      {
        name: "members",
        label: "With",
        required: true,
        placeholder: "bo, cy",
        hint: "User names, separated by commas. A direct conversation has one.",
      },
      { name: "title", label: "Title", placeholder: "Weekend plans", maxLength: 200 },
    ],
    onChange: (values, form) => {
      const title = form.querySelector<HTMLElement>('[data-field="title"]');
      if (title) title.hidden = values.kind !== "group";
    },
    submitLabel: "Create",
    submit: async (values) => {
      const members = splitUsers(values.members).filter((u) => u !== state.session?.userId);
      if (members.length === 0) throw new Error("Name at least one other user.");
      if (values.kind === "direct" && members.length !== 1) {
        throw new Error("A direct conversation is with exactly one other user; choose Group for more.");
      }
      const created = await call<{ conversationId: string }>("/v1/conversations", {
        method: "POST",
        body: {
          kind: values.kind,
          members,
          ...(values.kind === "group" && values.title ? { title: values.title } : {}),
        },
      });
      if (state.inbox.some((c) => c.id === created.conversationId)) {
        void openConversation(created.conversationId);
      } else {
        state.openWhenReady = created.conversationId; // opens once materialised
        refreshInboxSoon();
      }
    },
  });
});

addMemberButton.addEventListener("click", () => {
  const id = state.openId;
  if (!id) return;
  void formDialog({
    title: "Add people",
    fields: [
      {
        name: "users",
        label: "User names",
        required: true,
        placeholder: "dee, eli",
        hint: "Separated by commas.",
      },
    ],
    submitLabel: "Add",
    submit: async (values) => {
      const users = splitUsers(values.users);
      if (users.length === 0) throw new Error("Name at least one user.");
      for (const userId of users) {
        await call(`${conversationPath(id)}/members`, { method: "POST", body: { userId } });
      }
    },
  });
});

// ---- boot -------------------------------------------------------------------

const saved = loadSession();
if (saved) start(saved);
else byId<HTMLInputElement>("username").focus();
