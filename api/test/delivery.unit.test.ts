/** `deliveryOf`, the one computation behind the history route's and the chat page's delivery state. */
import { describe, expect, it } from "vitest";
import { deliveryOf } from "../src/delivery.ts";

const member = (userId: string, lastDeliveredSeq: number, lastReadSeq: number) => ({
  userId,
  lastDeliveredSeq,
  lastReadSeq,
});

describe("deliveryOf", () => {
  const message = { seq: 5, senderId: "ana" };

  it("is sent while any other member has not received it, and counts how far it got", () => {
    const members = [member("ana", 0, 0), member("ben", 5, 0), member("cy", 4, 0)];
    expect(deliveryOf(message, members)).toEqual({
      status: "sent",
      deliveredTo: 1,
      readBy: 0,
      recipients: 2,
    });
  });

  it("is delivered once every other member received it, read once every other member read it", () => {
    expect(deliveryOf(message, [member("ana", 0, 0), member("ben", 5, 0)]).status).toBe("delivered");
    // A read position past the message counts as delivered too.
    expect(deliveryOf(message, [member("ben", 5, 0), member("cy", 0, 6)]).status).toBe("delivered");
    expect(deliveryOf(message, [member("ben", 5, 5), member("cy", 0, 6)])).toEqual({
      status: "read",
      deliveredTo: 2,
      readBy: 2,
      recipients: 2,
    });
  });

  it("stays sent with nobody else in the conversation (the sender's own position does not count)", () => {
    expect(deliveryOf(message, [member("ana", 9, 9)])).toEqual({
      status: "sent",
      deliveredTo: 0,
      readBy: 0,
      recipients: 0,
    });
  });
});
