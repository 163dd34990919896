/**
 * The materialiser's decisions, without Kafka or PostgreSQL: `evolve` folds a batch's
 * events in log order into the loaded state of the conversations they touch and returns
 * what changed (rows to write) and what was refused (business dead letters, with their
 * reasons). One small function per event type in `handlers`, a
 * `Record<ChatEventType, …>`: a new event type does not compile until it is handled.
 *
 * The state objects are mutated in place and flagged `dirty`; the writer writes the dirty
 * ones. Unread counts are derived, not stored (see `unreadOf`): a message changes only
 * its sender's member row, so a group message costs the same whatever the group's size.
 * A member's own messages after a read receipt are partly counted by SQL (messages
 * already stored): see `MemberState.readFrom`/`dbUpTo`.
 */
import type { ChatEvent, ChatEventType } from "@chatbus/producer-sdk";

/** A conversation as loaded (or created by this batch). */
export interface ConversationState {
  id: string;
  kind: string;
  title: string | null;
  createdBy: string;
  createdAt: Date;
  createdEventId: string;
  lastSeq: number;
  /** last_seq as stored before this batch: messages above it are the batch's own. */
  loadedLastSeq: number;
  lastMessageAt: Date | null;
  lastActivityAt: Date;
  /** The Kafka partition that holds the conversation (one conversation, one partition). */
  partition: number;
  isNew: boolean;
  dirty: boolean;
}

/** A member row (current or former member). */
export interface MemberState {
  conversationId: string;
  userId: string;
  role: string;
  joinedAt: Date;
  joinedOffset: string;
  joinedSeq: number;
  leftAt: Date | null;
  leftOffset: string | null;
  /** The conversation's last seq when the member left (null while a member): unread stops there. */
  leftSeq: number | null;
  lastDeliveredSeq: number;
  lastReadSeq: number;
  /** The member's own messages with seq > greatest(lastReadSeq, joinedSeq); see `unreadOf`. */
  ownAfterRead: number;
  /** No row yet (first join of this user in this conversation). */
  isNew: boolean;
  dirty: boolean;
  /**
   * After a read receipt in this batch: the member's own messages already stored with
   * readFrom < seq <= dbUpTo are counted by SQL and added to `ownAfterRead` (which then
   * holds the batch's own messages after the receipt's position). dbUpTo 0: no count.
   */
  readFrom: number;
  dbUpTo: number;
}

/**
 * A member's unread count: messages of other senders with
 * seq > greatest(lastReadSeq, joinedSeq), up to the seq when they left. Seqs are 1..lastSeq
 * without gaps (every applied message takes the next one; nothing deletes a message,
 * a recall keeps its row), so the messages after the position number
 * `end - position`, of which `ownAfterRead` are the member's own. The readers compute
 * the same in SQL (projection-reader.ts). Exact only without a pending SQL count
 * (`dbUpTo` 0), i.e. after the batch is written and loaded again.
 */
export function unreadOf(m: MemberState, c: ConversationState): number {
  return (m.leftSeq ?? c.lastSeq) - Math.max(m.lastReadSeq, m.joinedSeq) - m.ownAfterRead;
}

/** A message row. */
export interface MessageState {
  conversationId: string;
  seq: number;
  eventId: string;
  senderId: string;
  clientMsgId: string | null;
  content: unknown;
  priority: string;
  sentAt: Date;
  editedAt: Date | null;
  editCount: number;
  recalledAt: Date | null;
  recalledBy: string | null;
  offset: string;
  isNew: boolean;
  dirty: boolean;
}

/** The latest receipt of a kind per member (upserted). */
export interface ReceiptRow {
  conversationId: string;
  userId: string;
  kind: string;
  upToSeq: number;
  eventId: string;
  at: Date;
}

/** A message that is a duplicate of one already applied. */
export interface DuplicateRow {
  partition: number;
  offset: string;
  event: ChatEvent<"chat.message.sent">;
  original: MessageState;
  reason: "event_id" | "client_msg_id";
}

/** An applied event, for `event_log` (seq: the message's, or the receipt's position). */
export interface LoggedRow {
  partition: number;
  offset: string;
  event: ChatEvent;
  seq: number | null;
  /** An edit of a message recalled by the end of the batch: its text is not stored. */
  scrub: boolean;
}

/** An event a business rule refused. */
export interface Refusal {
  partition: number;
  offset: string;
  event: ChatEvent;
  code: string;
  message: string;
}

/** An event in the batch, with its partition and offset. */
export interface PositionedEvent {
  partition: number;
  offset: string;
  event: ChatEvent;
}

const memberKey = (conversationId: string, userId: string) => `${conversationId}\u0000${userId}`;
const clientKey = (conversationId: string, senderId: string, clientMsgId: string) =>
  `${conversationId}\u0000${senderId}\u0000${clientMsgId}`;

/** The loaded state of a batch's conversations, indexed the ways the rules look it up. */
export class ProjectionState {
  readonly conversations = new Map<string, ConversationState>();
  /**
   * Only the member rows the batch's rules look at (projection-loader.ts: the users its
   * events name, a conversation's active owners when someone leaves, every member of a
   * direct conversation created again), plus the batch's joins: not a whole group.
   */
  readonly members = new Map<string, MemberState>();
  readonly membersOf = new Map<string, MemberState[]>();
  /** By event id: the batch's targets (edits, recalls) and its own new messages. */
  readonly messages = new Map<string, MessageState>();
  readonly byClientMsgId = new Map<string, MessageState>();
  readonly newMessagesOf = new Map<string, MessageState[]>();
  /** Event ids applied before (the same record produced twice lands at another offset). */
  readonly seen = new Set<string>();

  addConversation(c: ConversationState): void {
    this.conversations.set(c.id, c);
  }
  addMember(m: MemberState): void {
    const key = memberKey(m.conversationId, m.userId);
    const previous = this.members.get(key);
    this.members.set(key, m);
    const list = this.membersOf.get(m.conversationId) ?? [];
    this.membersOf.set(m.conversationId, previous ? list.map((x) => (x === previous ? m : x)) : [...list, m]);
  }
  member(conversationId: string, userId: string): MemberState | undefined {
    return this.members.get(memberKey(conversationId, userId));
  }
  addMessage(g: MessageState): void {
    this.messages.set(g.eventId, g);
    if (g.clientMsgId) this.byClientMsgId.set(clientKey(g.conversationId, g.senderId, g.clientMsgId), g);
    if (g.isNew) {
      const fresh = this.newMessagesOf.get(g.conversationId);
      if (fresh) fresh.push(g);
      else this.newMessagesOf.set(g.conversationId, [g]);
    }
  }
  byClientMessageId(conversationId: string, senderId: string, clientMsgId: string): MessageState | undefined {
    return this.byClientMsgId.get(clientKey(conversationId, senderId, clientMsgId));
  }
}

/** What `evolve` decided for a batch. */
export interface Changes {
  conversations: ConversationState[];
  members: MemberState[];
  messages: MessageState[];
  receipts: ReceiptRow[];
  duplicates: DuplicateRow[];
  eventLog: LoggedRow[];
  refusals: Refusal[];
  /** Events skipped as duplicates (same event id, or same clientMsgId), by partition. */
  duplicatesBy: Map<number, number>;
  /**
   * Benign repeats applied as no-ops, by partition and reason (`direct_exists`,
   * `already_a_member`, `already_recalled`).
   */
  noopsBy: Map<number, Record<string, number>>;
  /** Messages recalled by this batch: the texts of their earlier edits are scrubbed. */
  recalled: MessageState[];
}

/** A business rule the event broke; it is dead-lettered with this code and message. */
class RuleBroken {
  constructor(
    readonly code: string,
    readonly message: string,
  ) {}
}

/** A benign repeat (a direct conversation that exists, adding a member): a no-op, counted. */
class Benign {
  constructor(readonly reason: string) {}
}

/** What a handler sees: the state and the event with its position (partition, offset). */
interface Step<T extends ChatEventType> {
  state: ProjectionState;
  partition: number;
  offset: string;
  event: ChatEvent<T>;
  receipts: Map<string, ReceiptRow>;
  duplicates: DuplicateRow[];
}

/** Applies one event: returns its seq for event_log, or "duplicate" (not logged). Throws RuleBroken. */
type Handler<T extends ChatEventType> = (step: Step<T>) => number | null | "duplicate";

const wrongPartition = (step: Step<ChatEventType>, c: ConversationState) =>
  new RuleBroken(
    "CHATBUS_WRONG_PARTITION",
    `${step.event.type} for conversation "${c.id}" arrived in partition ${step.partition}, but the conversation lives in partition ${c.partition} (its first event was stored there): a conversation's events must all be in one partition (a changed partition count or a producer with a stale one?).`,
  );

function needConversation(step: Step<ChatEventType>): ConversationState {
  const { event } = step;
  const c = step.state.conversations.get(event.conversationId);
  if (!c)
    throw new RuleBroken(
      "CHATBUS_CONVERSATION_NOT_FOUND",
      `${event.type} for conversation "${event.conversationId}", which does not exist (no chat.conversation.created before it in the log).`,
    );
  if (c.partition !== step.partition) throw wrongPartition(step, c);
  return c;
}

function activeMember(state: ProjectionState, conversationId: string, userId: string) {
  const m = state.member(conversationId, userId);
  return m && m.leftAt === null ? m : undefined;
}

function needMember(step: Step<ChatEventType>, userId: string, action: string): MemberState {
  const m = activeMember(step.state, step.event.conversationId, userId);
  if (!m)
    throw new RuleBroken(
      "CHATBUS_NOT_A_MEMBER",
      `only members ${action}: "${userId}" is not a member of conversation "${step.event.conversationId}".`,
    );
  return m;
}

function needMessage(step: Step<ChatEventType>, messageId: string): MessageState {
  const g = step.state.messages.get(messageId);
  if (!g || g.conversationId !== step.event.conversationId)
    throw new RuleBroken(
      "CHATBUS_MESSAGE_NOT_FOUND",
      `${step.event.type} names message ${messageId}, which does not exist in conversation "${step.event.conversationId}".`,
    );
  return g;
}

function touch(c: ConversationState, at: Date): void {
  if (at > c.lastActivityAt) c.lastActivityAt = at;
  c.dirty = true;
}

/** Adds a member (or re-adds a former one: their receipts are kept, unread starts at 0). */
function join(step: Step<ChatEventType>, c: ConversationState, userId: string, role: string): void {
  const previous = step.state.member(c.id, userId);
  step.state.addMember({
    conversationId: c.id,
    userId,
    role,
    joinedAt: step.event.time,
    joinedOffset: step.offset,
    joinedSeq: c.lastSeq,
    leftAt: null,
    leftOffset: null,
    leftSeq: null,
    lastDeliveredSeq: previous?.lastDeliveredSeq ?? 0,
    lastReadSeq: previous?.lastReadSeq ?? 0,
    // Nothing after the join is anyone's yet.
    ownAfterRead: 0,
    isNew: previous ? previous.isNew : true,
    dirty: true,
    readFrom: 0,
    dbUpTo: 0,
  });
}

/** Edits and recalls: only the sender, never a recalled message. */
function changeMessage(
  step: Step<"chat.message.edited" | "chat.message.recalled">,
  actor: string,
  verb: string,
) {
  const c = needConversation(step);
  const g = needMessage(step, step.event.data.messageId);
  if (actor !== g.senderId)
    throw new RuleBroken(
      "CHATBUS_NOT_THE_SENDER",
      `only the sender ${verb} a message: "${actor}" is not the sender ("${g.senderId}") of message ${g.eventId}.`,
    );
  // Recalling a recalled message again changes nothing (a retry, a double click).
  if (g.recalledAt !== null && step.event.type === "chat.message.recalled")
    throw new Benign("already_recalled");
  if (g.recalledAt !== null)
    throw new RuleBroken(
      "CHATBUS_MESSAGE_RECALLED",
      `message ${g.eventId} was recalled; it can no longer be edited or recalled.`,
    );
  g.dirty = true;
  touch(c, step.event.time);
  return g;
}

/** Delivered and read receipts. */
function receipt(step: Step<"chat.receipt.delivered" | "chat.receipt.read">, kind: "read" | "delivered") {
  const { event, state } = step;
  const c = needConversation(step);
  const m = needMember(step, event.data.userId, "send receipts");
  // A receipt beyond the newest message means "everything so far".
  const upTo = Math.min(event.data.upToSeq, c.lastSeq);
  if (kind === "read" && upTo > m.lastReadSeq) {
    m.lastReadSeq = upTo;
    // Own messages after the new position, from scratch: stored ones by SQL, the
    // batch's here. None after the old position (known exactly: no count pending)
    // means none after the new one, and no count at all (the common case).
    const ownBefore = m.ownAfterRead > 0 || m.dbUpTo > 0;
    m.readFrom = Math.max(upTo, m.joinedSeq);
    m.dbUpTo = ownBefore && m.readFrom < c.loadedLastSeq ? c.loadedLastSeq : 0;
    const from = Math.max(m.readFrom, c.loadedLastSeq);
    m.ownAfterRead = (state.newMessagesOf.get(c.id) ?? []).filter(
      (g) => g.seq > from && g.senderId === m.userId,
    ).length;
  }
  // A read receipt implies delivery.
  m.lastDeliveredSeq = Math.max(m.lastDeliveredSeq, upTo, m.lastReadSeq);
  m.dirty = true;
  step.receipts.set(`${c.id}\u0000${m.userId}\u0000${kind}`, {
    conversationId: c.id,
    userId: m.userId,
    kind,
    upToSeq: kind === "read" ? m.lastReadSeq : m.lastDeliveredSeq,
    eventId: event.id,
    at: event.time,
  });
  touch(c, event.time);
  return event.data.upToSeq;
}

/** A second creation of a direct conversation with the same two people is a benign repeat. */
function isSameDirect(
  state: ProjectionState,
  c: ConversationState,
  event: ChatEvent<"chat.conversation.created">,
) {
  if (c.kind !== "direct" || event.data.kind !== "direct") return false;
  const current = (state.membersOf.get(c.id) ?? []).map((m) => m.userId).sort();
  const asked = [...event.data.members].sort();
  return current.length === asked.length && current.every((u, i) => u === asked[i]);
}

const forbidden = (message: string) => new RuleBroken("CHATBUS_ROLE_FORBIDDEN", message);

/**
 * Only owners grant roles (admin, owner); members add plain members. Without `addedBy`
 * the event is a join on the user's own behalf (a service decided), as before.
 */
function checkAdd(
  step: Step<ChatEventType>,
  c: ConversationState,
  userId: string,
  role: string,
  addedBy?: string,
) {
  if (addedBy === undefined || addedBy === userId) {
    if (role !== "member")
      throw forbidden(
        `"${userId}" cannot join conversation "${c.id}" as ${role} on their own; only an owner grants roles.`,
      );
    return;
  }
  const adder = activeMember(step.state, c.id, addedBy);
  if (!adder)
    throw forbidden(`"${addedBy}" is not a member of conversation "${c.id}" and cannot add "${userId}".`);
  if (role !== "member" && adder.role !== "owner")
    throw forbidden(
      `only an owner grants the role ${role}: "${addedBy}" is ${adder.role} in conversation "${c.id}".`,
    );
}

/**
 * Owners and admins remove others; admins only plain members; nobody but the owner
 * removes the owner; a conversation always keeps an owner.
 */
function checkRemove(step: Step<ChatEventType>, c: ConversationState, m: MemberState, removedBy?: string) {
  const self = removedBy === undefined || removedBy === m.userId;
  if (!self) {
    const remover = activeMember(step.state, c.id, removedBy);
    if (!remover || (remover.role !== "owner" && remover.role !== "admin"))
      throw forbidden(
        `only an owner or admin removes another member: "${removedBy}" is ${remover ? remover.role : "not a member"} in conversation "${c.id}".`,
      );
    if (m.role === "owner")
      throw forbidden(`nobody but the owner removes the owner: "${removedBy}" cannot remove "${m.userId}".`);
    if (remover.role === "admin" && m.role !== "member")
      throw forbidden(`an admin removes plain members only: "${m.userId}" is ${m.role}.`);
  }
  if (m.role === "owner") {
    const owners = (step.state.membersOf.get(c.id) ?? []).filter(
      (x) => x.leftAt === null && x.role === "owner",
    );
    if (owners.length <= 1)
      throw new RuleBroken(
        "CHATBUS_LAST_OWNER",
        `"${m.userId}" is the last owner of conversation "${c.id}"; a conversation always keeps an owner (make someone else owner first).`,
      );
  }
}

/** One function per event type: the compiler insists on every type. */
const handlers: { [T in ChatEventType]: Handler<T> } = {
  "chat.conversation.created": (step) => {
    const { event, state } = step;
    const existing = state.conversations.get(event.conversationId);
    if (existing && existing.partition !== step.partition) throw wrongPartition(step, existing);
    if (existing && isSameDirect(state, existing, event)) throw new Benign("direct_exists");
    if (existing)
      throw new RuleBroken(
        "CHATBUS_CONVERSATION_EXISTS",
        `conversation "${event.conversationId}" already exists; a second chat.conversation.created is ignored.`,
      );
    const c: ConversationState = {
      id: event.conversationId,
      kind: event.data.kind,
      title: event.data.title ?? null,
      createdBy: event.data.createdBy,
      createdAt: event.time,
      createdEventId: event.id,
      lastSeq: 0,
      loadedLastSeq: 0,
      lastMessageAt: null,
      lastActivityAt: event.time,
      partition: step.partition,
      isNew: true,
      dirty: true,
    };
    state.addConversation(c);
    for (const userId of event.data.members)
      join(step, c, userId, userId === event.data.createdBy ? "owner" : "member");
    return null;
  },
  "chat.member.joined": (step) => {
    const c = needConversation(step);
    const { userId, role, addedBy } = step.event.data;
    // Adding someone who is a member already changes nothing (a retry, a double click).
    if (activeMember(step.state, c.id, userId)) throw new Benign("already_a_member");
    checkAdd(step, c, userId, role ?? "member", addedBy);
    join(step, c, userId, role ?? "member");
    touch(c, step.event.time);
    return null;
  },
  "chat.member.left": (step) => {
    const c = needConversation(step);
    const m = needMember(step, step.event.data.userId, "leave");
    checkRemove(step, c, m, step.event.data.removedBy);
    m.leftAt = step.event.time;
    m.leftOffset = step.offset;
    // Unread is frozen here: later messages are not the former member's.
    m.leftSeq = c.lastSeq;
    m.dirty = true;
    touch(c, step.event.time);
    return null;
  },
  "chat.message.sent": (step) => {
    const { event, state } = step;
    const c = needConversation(step);
    const sender = needMember(step, event.data.senderId, "send");
    const cmid = event.data.clientMsgId;
    const original = cmid ? state.byClientMessageId(c.id, event.data.senderId, cmid) : undefined;
    if (original) {
      step.duplicates.push({
        partition: step.partition,
        offset: step.offset,
        event,
        original,
        reason: "client_msg_id",
      });
      return "duplicate";
    }
    c.lastSeq += 1;
    state.addMessage({
      conversationId: c.id,
      seq: c.lastSeq,
      eventId: event.id,
      senderId: event.data.senderId,
      clientMsgId: cmid ?? null,
      content: event.data.content,
      priority: event.data.priority ?? "normal",
      sentAt: event.time,
      editedAt: null,
      editCount: 0,
      recalledAt: null,
      recalledBy: null,
      offset: step.offset,
      isNew: true,
      dirty: true,
    });
    if (c.lastMessageAt === null || event.time > c.lastMessageAt) c.lastMessageAt = event.time;
    // Every other member's unread grows with lastSeq (derived, see unreadOf); only the
    // sender's row changes: their own message is not unread for them.
    sender.ownAfterRead += 1;
    sender.dirty = true;
    touch(c, event.time);
    return c.lastSeq;
  },
  "chat.message.edited": (step) => {
    const g = changeMessage(step, step.event.data.editorId, "edits");
    g.content = step.event.data.content;
    g.editedAt = step.event.time;
    g.editCount += 1;
    return g.seq;
  },
  "chat.message.recalled": (step) => {
    const g = changeMessage(step, step.event.data.recalledBy, "recalls");
    g.recalledAt = step.event.time;
    g.recalledBy = step.event.data.recalledBy;
    // After a recall the text never reaches anyone again: not even in the projection.
    g.content = null;
    return g.seq;
  },
  "chat.receipt.delivered": (step) => receipt(step, "delivered"),
  "chat.receipt.read": (step) => receipt(step, "read"),
};

/**
 * Folds `events` (each partition's in log order) into `state`. Events of different
 * partitions never touch the same conversation (one conversation, one partition: an
 * event in another partition than its conversation is refused), so a batch may hold
 * several partitions. Pure apart from mutating the state it is given: no I/O,
 * deterministic for the same state and events.
 */
export function evolve(state: ProjectionState, events: PositionedEvent[]): Changes {
  const receipts = new Map<string, ReceiptRow>();
  const duplicates: DuplicateRow[] = [];
  const eventLog: LoggedRow[] = [];
  const refusals: Refusal[] = [];
  const duplicatesBy = new Map<number, number>();
  const noopsBy = new Map<number, Record<string, number>>();
  const duplicate = (partition: number) =>
    duplicatesBy.set(partition, (duplicatesBy.get(partition) ?? 0) + 1);
  const recalled: MessageState[] = [];
  for (const { partition, offset, event } of events) {
    if (state.seen.has(event.id)) {
      duplicate(partition);
      // The same record produced twice: a message is recorded as a duplicate.
      const original = event.type === "chat.message.sent" ? state.messages.get(event.id) : undefined;
      if (original && event.type === "chat.message.sent")
        duplicates.push({ partition, offset, event, original, reason: "event_id" });
      continue;
    }
    try {
      const handler = handlers[event.type] as Handler<ChatEventType>;
      const seq = handler({ state, partition, offset, event, receipts, duplicates });
      if (seq === "duplicate") {
        duplicate(partition);
        continue;
      }
      eventLog.push({ partition, offset, event, seq, scrub: false });
      if (event.type === "chat.message.recalled") recalled.push(state.messages.get(event.data.messageId)!);
      state.seen.add(event.id);
    } catch (error) {
      if (error instanceof Benign) {
        const noops = noopsBy.get(partition) ?? {};
        noops[error.reason] = (noops[error.reason] ?? 0) + 1;
        noopsBy.set(partition, noops);
        continue;
      }
      if (!(error instanceof RuleBroken)) throw error;
      refusals.push({ partition, offset, event, code: error.code, message: error.message });
    }
  }
  // Edits of a message recalled later in the same batch do not store their text.
  for (const row of eventLog)
    if (row.event.type === "chat.message.edited")
      row.scrub = state.messages.get(row.event.data.messageId)?.recalledAt != null;
  return {
    conversations: [...state.conversations.values()].filter((c) => c.dirty),
    members: [...state.members.values()].filter((m) => m.dirty),
    messages: [...state.messages.values()].filter((g) => g.dirty),
    receipts: [...receipts.values()],
    duplicates,
    eventLog,
    refusals,
    duplicatesBy,
    noopsBy,
    recalled,
  };
}
