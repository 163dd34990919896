/**
 * Given/when/then specifications of every rule of `evolve`, with no Kafka and no
 * PostgreSQL: given the loaded state (or events already folded), when a batch's events
 * are folded, then these rows change and these events are refused.
 */
import type { ChatEvent, ChatEventInput } from "@chatbus/producer-sdk";
import { describe, expect, it } from "vitest";
import { type Changes, evolve, ProjectionState, unreadOf } from "../src/materialiser/evolve.ts";

let counter = 0;
const base = Date.UTC(2026, 5, 1);
/** An event as the decoder returns it. */
function event(conversationId: string, input: ChatEventInput, id = `e${++counter}`): ChatEvent {
  const { type, ...data } = input;
  return {
    id,
    type,
    source: "/spec",
    time: new Date(base + counter * 1000),
    conversationId,
    schemaVersion: 1,
    data,
  } as ChatEvent;
}

/** A small world: given events folded, when more are folded, then what changed. */
function given(...events: ChatEvent[]) {
  const state = new ProjectionState();
  let offset = 0;
  const fold = (list: ChatEvent[], partition = 0): Changes =>
    evolve(
      state,
      list.map((e) => ({ partition, offset: String(offset++), event: e })),
    );
  fold(events);
  return {
    state,
    when: (...more: ChatEvent[]) => fold(more),
    whenIn: (partition: number, ...more: ChatEvent[]) => fold(more, partition),
  };
}

const created = (c: string, members = ["ana", "bob", "cy"], createdBy = members[0]!) =>
  event(c, { type: "chat.conversation.created", kind: "group", createdBy, members });
const sent = (c: string, senderId: string, text = "hi", extra: { clientMsgId?: string } = {}, id?: string) =>
  event(c, { type: "chat.message.sent", senderId, content: { type: "text", text }, ...extra }, id);
const read = (c: string, userId: string, upToSeq: number) =>
  event(c, { type: "chat.receipt.read", userId, upToSeq });
const delivered = (c: string, userId: string, upToSeq: number) =>
  event(c, { type: "chat.receipt.delivered", userId, upToSeq });
const codes = (changes: Changes) => changes.refusals.map((r) => r.code);

describe("sequence numbers", () => {
  it("given a conversation, when messages are sent, then they get 1..n in log order", () => {
    const world = given(created("c"));
    const changes = world.when(sent("c", "ana"), sent("c", "bob"), sent("c", "ana"));
    expect(changes.eventLog.map((l) => l.seq)).toEqual([1, 2, 3]);
    expect(world.state.conversations.get("c")!.lastSeq).toBe(3);
  });

  it("given messages before, when more are sent, then numbering continues", () => {
    const world = given(created("c"), sent("c", "ana"), sent("c", "ana"));
    expect(world.when(sent("c", "bob")).eventLog[0]!.seq).toBe(3);
  });

  it("when a refused or duplicate message comes, then it takes no seq", () => {
    const world = given(created("c"), sent("c", "ana", "x", { clientMsgId: "k1" }));
    const changes = world.when(
      sent("c", "eve"),
      sent("c", "ana", "again", { clientMsgId: "k1" }),
      sent("c", "bob"),
    );
    expect(changes.eventLog.map((l) => l.seq)).toEqual([2]);
  });
});

describe("clientMsgId dedup", () => {
  it("when the same sender repeats a clientMsgId, then the first wins and the repeat is a duplicate", () => {
    const world = given(created("c"));
    const first = sent("c", "ana", "one", { clientMsgId: "k" });
    const changes = world.when(first, sent("c", "ana", "retry", { clientMsgId: "k" }));
    expect(changes.duplicates).toHaveLength(1);
    expect(changes.duplicates[0]).toMatchObject({ reason: "client_msg_id", original: { eventId: first.id } });
    expect(changes.duplicatesBy.get(0)).toBe(1);
    expect(changes.refusals).toEqual([]);
  });

  it("when another sender uses the same clientMsgId, then it is a new message", () => {
    const world = given(created("c"), sent("c", "ana", "one", { clientMsgId: "k" }));
    expect(world.when(sent("c", "bob", "two", { clientMsgId: "k" })).eventLog[0]!.seq).toBe(2);
  });

  it("when the same event id comes again, then it is a duplicate and changes nothing", () => {
    const original = sent("c", "ana", "one", {}, "same-id");
    const world = given(created("c"), original);
    const changes = world.when(sent("c", "ana", "one", {}, "same-id"));
    expect(changes.eventLog).toEqual([]);
    expect(changes.duplicates[0]).toMatchObject({ reason: "event_id" });
  });
});

describe("edits and recalls", () => {
  it("when the sender edits, then the content changes and the edit is logged at the message's seq", () => {
    const message = sent("c", "ana", "before");
    const world = given(created("c"), message);
    const changes = world.when(
      event("c", {
        type: "chat.message.edited",
        messageId: message.id,
        editorId: "ana",
        content: { type: "text", text: "after" },
      }),
    );
    const g = world.state.messages.get(message.id)!;
    expect(g.content).toEqual({ type: "text", text: "after" });
    expect(g.editCount).toBe(1);
    expect(changes.eventLog[0]!.seq).toBe(1);
  });

  it("when someone else edits or recalls, then it is refused (only the sender)", () => {
    const message = sent("c", "ana");
    const world = given(created("c"), message);
    const changes = world.when(
      event("c", {
        type: "chat.message.edited",
        messageId: message.id,
        editorId: "bob",
        content: { type: "text", text: "x" },
      }),
      event("c", { type: "chat.message.recalled", messageId: message.id, recalledBy: "bob" }),
    );
    expect(codes(changes)).toEqual(["CHATBUS_NOT_THE_SENDER", "CHATBUS_NOT_THE_SENDER"]);
  });

  it("when a recalled message is edited, then it is refused; recalled again, then a benign no-op", () => {
    const message = sent("c", "ana");
    const recall = () =>
      event("c", { type: "chat.message.recalled", messageId: message.id, recalledBy: "ana" });
    const world = given(created("c"), message, recall());
    expect(world.state.messages.get(message.id)!.recalledBy).toBe("ana");
    const changes = world.when(
      recall(),
      event("c", {
        type: "chat.message.edited",
        messageId: message.id,
        editorId: "ana",
        content: { type: "text", text: "x" },
      }),
    );
    expect(codes(changes)).toEqual(["CHATBUS_MESSAGE_RECALLED"]);
    expect(changes.noopsBy.get(0)).toEqual({ already_recalled: 1 });
  });

  it("when an edit names a message of another conversation or none, then it is refused", () => {
    const elsewhere = sent("d", "ana");
    const world = given(created("c"), created("d"), elsewhere);
    const changes = world.when(
      event("c", { type: "chat.message.recalled", messageId: elsewhere.id, recalledBy: "ana" }),
      event("c", { type: "chat.message.recalled", messageId: "nope", recalledBy: "ana" }),
    );
    expect(codes(changes)).toEqual(["CHATBUS_MESSAGE_NOT_FOUND", "CHATBUS_MESSAGE_NOT_FOUND"]);
  });
});

describe("members and roles", () => {
  it("given a new conversation, then the creator is owner and the others members", () => {
    const world = given(created("c", ["ana", "bob"]));
    expect(world.state.member("c", "ana")!.role).toBe("owner");
    expect(world.state.member("c", "bob")!.role).toBe("member");
  });

  it("when a member is added twice, then the second is a benign no-op; after leaving they may rejoin", () => {
    const world = given(created("c", ["ana", "bob"]));
    const join = () =>
      event("c", { type: "chat.member.joined", userId: "dan", addedBy: "ana", role: "admin" });
    const changes = world.when(
      join(),
      join(),
      event("c", { type: "chat.member.left", userId: "dan" }),
      join(),
    );
    expect(codes(changes)).toEqual([]);
    expect(changes.noopsBy.get(0)).toEqual({ already_a_member: 1 });
    expect(changes.eventLog.map((l) => l.event.type)).toEqual([
      "chat.member.joined",
      "chat.member.left",
      "chat.member.joined",
    ]);
    expect(world.state.member("c", "dan")).toMatchObject({ role: "admin", leftAt: null });
  });

  it("when a direct conversation is created again with the same two people, then it is a benign no-op", () => {
    const direct = (members: string[]) =>
      event("d", { type: "chat.conversation.created", kind: "direct", createdBy: members[0]!, members });
    const world = given(direct(["ana", "bob"]));
    const changes = world.when(direct(["bob", "ana"]), direct(["ana", "eve"]));
    expect(changes.noopsBy.get(0)).toEqual({ direct_exists: 1 });
    expect(codes(changes)).toEqual(["CHATBUS_CONVERSATION_EXISTS"]);
  });

  const joined = (userId: string, addedBy: string | undefined, role?: "owner" | "admin" | "member") =>
    event("c", {
      type: "chat.member.joined",
      userId,
      ...(addedBy ? { addedBy } : {}),
      ...(role ? { role } : {}),
    });
  const left = (userId: string, removedBy?: string) =>
    event("c", { type: "chat.member.left", userId, ...(removedBy ? { removedBy } : {}) });

  it("when a non-owner grants a role or someone joins as admin on their own, then it is refused", () => {
    const world = given(created("c", ["ana", "bob"]), joined("adm", "ana", "admin"));
    const changes = world.when(
      joined("x", "bob", "admin"),
      joined("y", "adm", "owner"),
      joined("z", undefined, "admin"),
      joined("w", "eve"),
    );
    expect(codes(changes)).toEqual([
      "CHATBUS_ROLE_FORBIDDEN",
      "CHATBUS_ROLE_FORBIDDEN",
      "CHATBUS_ROLE_FORBIDDEN",
      "CHATBUS_ROLE_FORBIDDEN",
    ]);
    expect(changes.refusals[0]!.message).toContain('only an owner grants the role admin: "bob" is member');
  });

  it("when an owner grants roles and members or admins add plain members, then they are applied", () => {
    const world = given(created("c", ["ana", "bob"]));
    const changes = world.when(joined("adm", "ana", "admin"), joined("p1", "adm"), joined("p2", "bob"));
    expect(codes(changes)).toEqual([]);
    expect(world.state.member("c", "adm")!.role).toBe("admin");
  });

  it("when members remove others, then only owners and admins may, admins only plain members, nobody the owner", () => {
    const world = given(
      created("c", ["ana", "bob", "cy"]),
      joined("adm", "ana", "admin"),
      joined("adm2", "ana", "admin"),
    );
    const changes = world.when(left("cy", "bob"), left("adm2", "adm"), left("ana", "adm"), left("cy", "adm"));
    expect(codes(changes)).toEqual([
      "CHATBUS_ROLE_FORBIDDEN",
      "CHATBUS_ROLE_FORBIDDEN",
      "CHATBUS_ROLE_FORBIDDEN",
    ]);
    expect(changes.refusals[2]!.message).toContain("nobody but the owner removes the owner");
    expect(world.state.member("c", "cy")!.leftAt).not.toBeNull();
  });

  it("when the last owner leaves, then it is refused; with a second owner they may", () => {
    const world = given(created("c", ["ana", "bob"]));
    expect(codes(world.when(left("ana")))).toEqual(["CHATBUS_LAST_OWNER"]);
    const changes = world.when(joined("co", "ana", "owner"), left("ana"));
    expect(codes(changes)).toEqual([]);
    expect(world.state.member("c", "ana")!.leftAt).not.toBeNull();
  });

  it("when a non-member leaves, sends or sends receipts, then it is refused", () => {
    const world = given(created("c", ["ana", "bob"]));
    const changes = world.when(
      event("c", { type: "chat.member.left", userId: "eve" }),
      sent("c", "eve"),
      read("c", "eve", 1),
    );
    expect(codes(changes)).toEqual(["CHATBUS_NOT_A_MEMBER", "CHATBUS_NOT_A_MEMBER", "CHATBUS_NOT_A_MEMBER"]);
  });

  it("when a conversation is created twice or events come for an unknown one, then they are refused", () => {
    const world = given(created("c"));
    expect(codes(world.when(created("c"), sent("zz", "ana")))).toEqual([
      "CHATBUS_CONVERSATION_EXISTS",
      "CHATBUS_CONVERSATION_NOT_FOUND",
    ]);
  });

  it("when a conversation's event arrives in another partition, then it is refused (one conversation, one partition)", () => {
    const world = given(created("c"));
    const changes = world.whenIn(1, sent("c", "ana"), created("c"));
    expect(codes(changes)).toEqual(["CHATBUS_WRONG_PARTITION", "CHATBUS_WRONG_PARTITION"]);
    expect(changes.refusals[0]!.message).toContain("lives in partition 0");
  });
});

describe("recalls scrub the texts", () => {
  it("when a message is recalled, then its content is gone and edits earlier in the batch keep no text", () => {
    const message = sent("c", "ana", "secret");
    const world = given(created("c"), message);
    const changes = world.when(
      event("c", {
        type: "chat.message.edited",
        messageId: message.id,
        editorId: "ana",
        content: { type: "text", text: "secret edited" },
      }),
      event("c", { type: "chat.message.recalled", messageId: message.id, recalledBy: "ana" }),
    );
    expect(world.state.messages.get(message.id)!.content).toBeNull();
    expect(changes.eventLog.map((l) => [l.event.type, l.scrub])).toEqual([
      ["chat.message.edited", true],
      ["chat.message.recalled", false],
    ]);
    expect(changes.recalled.map((g) => g.eventId)).toEqual([message.id]);
  });

  it("when an edit is not followed by a recall, then its text is kept", () => {
    const message = sent("c", "ana");
    const world = given(created("c"), message);
    const changes = world.when(
      event("c", {
        type: "chat.message.edited",
        messageId: message.id,
        editorId: "ana",
        content: { type: "text", text: "ok" },
      }),
    );
    expect(changes.eventLog[0]!.scrub).toBe(false);
  });
});

describe("receipts", () => {
  it("when a receipt is beyond the last seq, then it is clamped; a read implies delivery", () => {
    const world = given(created("c", ["ana", "bob"]), sent("c", "ana"), sent("c", "ana"));
    const changes = world.when(read("c", "bob", 99));
    const bob = world.state.member("c", "bob")!;
    expect(bob.lastReadSeq).toBe(2);
    expect(bob.lastDeliveredSeq).toBe(2);
    expect(changes.receipts).toEqual([expect.objectContaining({ kind: "read", upToSeq: 2, userId: "bob" })]);
    // Logged with the position as sent.
    expect(changes.eventLog[0]!.seq).toBe(99);
  });

  it("when an older receipt comes after a newer one, then nothing moves back", () => {
    const world = given(
      created("c", ["ana", "bob"]),
      sent("c", "ana"),
      sent("c", "ana"),
      read("c", "bob", 2),
    );
    world.when(read("c", "bob", 1), delivered("c", "bob", 1));
    expect(world.state.member("c", "bob")).toMatchObject({ lastReadSeq: 2, lastDeliveredSeq: 2 });
  });
});

describe("unread counts (derived: unreadOf)", () => {
  const unread = (world: { state: ProjectionState }, c: string, userId: string) =>
    unreadOf(world.state.member(c, userId)!, world.state.conversations.get(c)!);
  const left = (c: string, userId: string) => event(c, { type: "chat.member.left", userId });
  const joined = (c: string, userId: string) => event(c, { type: "chat.member.joined", userId });

  it("when others send, then each member's unread grows, never the sender's", () => {
    const world = given(created("c", ["ana", "bob", "cy"]));
    world.when(sent("c", "ana"), sent("c", "ana"), sent("c", "bob"));
    expect(unread(world, "c", "ana")).toBe(1);
    expect(unread(world, "c", "bob")).toBe(2);
    expect(unread(world, "c", "cy")).toBe(3);
  });

  it("when a message is sent to a group, then only the sender's member row changes", () => {
    const world = given(created("c", ["ana", "bob", "cy", "dan"]));
    // As after a write and a fresh load: nothing is dirty yet.
    for (const m of world.state.members.values()) m.dirty = false;
    const changes = world.when(sent("c", "bob"));
    expect(changes.members.map((m) => m.userId)).toEqual(["bob"]);
    expect(world.state.member("c", "bob")!.ownAfterRead).toBe(1);
  });

  it("when a member reads up to a seq in the same batch, then unread counts only later messages of others", () => {
    const world = given(created("c", ["ana", "bob"]));
    world.when(sent("c", "ana"), sent("c", "ana"), read("c", "bob", 1), sent("c", "ana"), sent("c", "bob"));
    expect(unread(world, "c", "bob")).toBe(2);
    // Nothing stored before this batch, so SQL counts nothing extra.
    expect(world.state.member("c", "bob")!.dbUpTo).toBe(0);
  });

  it("when a member reads past their own messages, then those no longer count against their unread", () => {
    const world = given(created("c", ["ana", "bob"]));
    world.when(sent("c", "bob"), sent("c", "ana"), sent("c", "bob"), sent("c", "ana"));
    expect(unread(world, "c", "bob")).toBe(2);
    world.when(read("c", "bob", 2));
    expect(world.state.member("c", "bob")).toMatchObject({ lastReadSeq: 2, ownAfterRead: 1 });
    expect(unread(world, "c", "bob")).toBe(1);
    world.when(read("c", "bob", 4));
    expect(unread(world, "c", "bob")).toBe(0);
  });

  it("when a receipt reaches beyond the last message, then nothing is unread", () => {
    const world = given(created("c", ["ana", "bob"]), sent("c", "ana"), sent("c", "bob"));
    world.when(read("c", "bob", 99));
    expect(unread(world, "c", "bob")).toBe(0);
    expect(world.state.member("c", "bob")).toMatchObject({ lastReadSeq: 2, ownAfterRead: 0 });
  });

  it("when a message is recalled or edited, then unread does not change (a recalled message still counts)", () => {
    const world = given(created("c", ["ana", "bob"]));
    const message = sent("c", "ana");
    world.when(message, sent("c", "ana"));
    world.when(
      event("c", {
        type: "chat.message.edited",
        messageId: message.id,
        editorId: "ana",
        content: { type: "text", text: "x" },
      }),
      event("c", { type: "chat.message.recalled", messageId: message.id, recalledBy: "ana" }),
    );
    expect(unread(world, "c", "bob")).toBe(2);
    expect(unread(world, "c", "ana")).toBe(0);
  });

  it("given stored messages and own ones among them, when a read receipt comes, then SQL is asked to count the stored remainder", () => {
    const state = new ProjectionState();
    state.addConversation({
      id: "c",
      kind: "group",
      title: null,
      createdBy: "ana",
      createdAt: new Date(base),
      createdEventId: "x",
      lastSeq: 10,
      loadedLastSeq: 10,
      lastMessageAt: new Date(base),
      lastActivityAt: new Date(base),
      partition: 0,
      isNew: false,
      dirty: false,
    });
    for (const userId of ["ana", "bob", "cy"])
      state.addMember({
        conversationId: "c",
        userId,
        role: userId === "ana" ? "owner" : "member",
        joinedAt: new Date(base),
        joinedOffset: "0",
        joinedSeq: 0,
        leftAt: null,
        leftOffset: null,
        leftSeq: null,
        lastDeliveredSeq: 0,
        lastReadSeq: 0,
        ownAfterRead: userId === "bob" ? 3 : 0,
        isNew: false,
        dirty: false,
        readFrom: 0,
        dbUpTo: 0,
      });
    evolve(state, [
      { partition: 0, offset: "100", event: read("c", "bob", 4) },
      { partition: 0, offset: "101", event: read("c", "cy", 4) },
    ]);
    expect(state.member("c", "bob")).toMatchObject({
      lastReadSeq: 4,
      readFrom: 4,
      dbUpTo: 10,
      ownAfterRead: 0,
    });
    // cy sent nothing after their old position, so none after the new one: no count.
    expect(state.member("c", "cy")).toMatchObject({ lastReadSeq: 4, dbUpTo: 0, ownAfterRead: 0 });
  });

  it("when a member leaves, then their unread count is frozen; a rejoin starts from zero at the join", () => {
    const world = given(created("c", ["ana", "bob"]), sent("c", "ana"), sent("c", "bob"));
    world.when(left("c", "bob"), sent("c", "ana"));
    expect(world.state.member("c", "bob")).toMatchObject({ leftSeq: 2 });
    expect(unread(world, "c", "bob")).toBe(1);
    world.when(joined("c", "bob"));
    expect(unread(world, "c", "bob")).toBe(0);
    world.when(sent("c", "ana"), sent("c", "bob"));
    expect(world.state.member("c", "bob")).toMatchObject({ joinedSeq: 3, leftSeq: null, ownAfterRead: 1 });
    expect(unread(world, "c", "bob")).toBe(1);
  });

  it("when a member joins, then earlier messages are never unread, and a read position before the join counts from the join", () => {
    const world = given(
      created("c", ["ana", "bob"]),
      sent("c", "ana"),
      sent("c", "ana"),
      read("c", "bob", 1),
    );
    world.when(left("c", "bob"), sent("c", "ana"), joined("c", "bob"), joined("c", "dan"), sent("c", "ana"));
    expect(world.state.member("c", "bob")).toMatchObject({ lastReadSeq: 1, joinedSeq: 3 });
    expect(unread(world, "c", "bob")).toBe(1);
    expect(unread(world, "c", "dan")).toBe(1);
  });
});
