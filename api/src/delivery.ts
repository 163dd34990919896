/**
 * Delivery state of a message for its sender, computed from the other members' read
 * and delivered positions. Dependency-free on purpose: the history route
 * (`routes/reads.ts`) and the chat page (`web/src/chat/`) both import it, so the page
 * shows a live receipt exactly as the API would answer after a reload.
 */

/** Delivery state of a message for its sender, across the other current members. */
export type DeliveryStatus = "sent" | "delivered" | "read";

/** What `deliveryOf` needs of a message. */
export interface DeliveredMessage {
  seq: number;
  senderId: string;
}

/** What `deliveryOf` needs of a member. */
export interface DeliveryPosition {
  userId: string;
  lastDeliveredSeq: number;
  lastReadSeq: number;
}

/** The delivery state, with counts that say how far a group message got. */
export interface Delivery {
  status: DeliveryStatus;
  deliveredTo: number;
  readBy: number;
  recipients: number;
}

/**
 * `read` once every other member has read it, `delivered` once every other member's
 * client has received it, `sent` before that (Kafka has it).
 */
export function deliveryOf(message: DeliveredMessage, members: readonly DeliveryPosition[]): Delivery {
  const others = members.filter((m) => m.userId !== message.senderId);
  const readBy = others.filter((m) => m.lastReadSeq >= message.seq).length;
  const deliveredTo = others.filter((m) => Math.max(m.lastDeliveredSeq, m.lastReadSeq) >= message.seq).length;
  const status: DeliveryStatus =
    others.length > 0 && readBy === others.length
      ? "read"
      : others.length > 0 && deliveredTo === others.length
        ? "delivered"
        : "sent";
  return { status, deliveredTo, readBy, recipients: others.length };
}
