/** One valid event of every type, for tests. */
import type { ChatEventInput, ChatEventType } from "../src/events.ts";

export const validEvents: { [T in ChatEventType]: Extract<ChatEventInput, { type: T }> } = {
  "chat.conversation.created": {
    type: "chat.conversation.created",
    kind: "group",
    title: "Team",
    createdBy: "ana",
    members: ["ana", "bo"],
  },
  "chat.member.joined": { type: "chat.member.joined", userId: "cy", addedBy: "ana", role: "member" },
  "chat.member.left": { type: "chat.member.left", userId: "cy", removedBy: "ana" },
  "chat.message.sent": {
    type: "chat.message.sent",
    senderId: "ana",
    content: { type: "text", text: "hi" },
    priority: "normal",
    clientMsgId: "m-1",
  },
  "chat.message.edited": {
    type: "chat.message.edited",
    messageId: "0190f3c2-1111-7abc-8def-0123456789ab",
    editorId: "ana",
    content: { type: "text", text: "hello" },
  },
  "chat.message.recalled": {
    type: "chat.message.recalled",
    messageId: "0190f3c2-1111-7abc-8def-0123456789ab",
    recalledBy: "ana",
  },
  "chat.receipt.delivered": { type: "chat.receipt.delivered", userId: "bo", upToSeq: 3 },
  "chat.receipt.read": { type: "chat.receipt.read", userId: "bo", upToSeq: 2 },
};

/** A red packet: the worked example of custom content. */
export const redPacket: ChatEventInput = {
  type: "chat.message.sent",
  senderId: "ana",
  content: {
    type: "custom",
    customType: "red_packet",
    data: { amount: 888, currency: "CNY", greeting: "恭喜发财" },
    description: "[Red packet]",
  },
  priority: "high",
};
