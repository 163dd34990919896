/** `deliveryOf`, the one computation behind the history route's and the chat page's delivery state. */
import { describe, expect, it } from "vitest";
import { deliveriesOf, deliveryOf } from "../src/delivery.ts";

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

describe("deliveriesOf (a history page at once)", () => {
  it("answers exactly as deliveryOf for each message, on random groups and pages", () => {
    // A small deterministic generator: the same cases on every run.
    let state = 42;
    const next = (n: number) => {
      state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
      return state % n;
    };
    for (let round = 0; round < 300; round++) {
      const users = 1 + next(12);
      // Positions around the page's seqs, ties included; now and then a user listed twice.
      const members = Array.from({ length: next(25) }, () =>
        member(`u${next(users)}`, next(30), next(2) === 0 ? 0 : next(30)),
      );
      const page = Array.from({ length: 1 + next(20) }, () => ({
        seq: 1 + next(30),
        senderId: `u${next(users + 2)}`,
      }));
      expect(deliveriesOf(page, members)).toEqual(page.map((message) => deliveryOf(message, members)));
    }
  });

  it("counts a 15,000-member group's positions right at the edges", () => {
    const members = Array.from({ length: 15_000 }, (_, i) => member(`u${i}`, i, i - 1));
    const [first, last] = deliveriesOf(
      [
        { seq: 1, senderId: "u0" },
        { seq: 14_999, senderId: "nobody" },
      ],
      members,
    );
    // Every other member has received seq 1 (u1 exactly), all but u1 have read it.
    expect(first).toEqual({ status: "delivered", deliveredTo: 14_999, readBy: 14_998, recipients: 14_999 });
    expect(last).toEqual({ status: "sent", deliveredTo: 1, readBy: 0, recipients: 15_000 });
  });
});
