/**
 * The send path's first half without Kafka: encoding with the size check, the
 * partition, conversation kinds learnt for the rate limit, and sendMany's
 * all-or-nothing admission (refused → the tokens already taken are given back).
 */
import { describe, expect, it } from "vitest";
import { RateLimitedError, ValidationError } from "../src/errors.ts";
import { EventAdmission } from "../src/event-admission.ts";
import { resolveOptions } from "../src/options.ts";
import { createKeyPartitioner } from "../src/partitioner.ts";
import { validEvents } from "./samples.ts";

const message = validEvents["chat.message.sent"];
// 2 per second in a direct conversation, 5 in a group: refills far slower than a test runs.
const admission = () =>
  new EventAdmission(
    resolveOptions({ partitions: 12, rateLimit: { directPerSecond: 2, groupPerSecond: 5, burstSeconds: 1 } }),
  );

describe("EventAdmission", () => {
  it("encodes an event for its conversation's partition, with its id and size", () => {
    const prepared = admission().prepare("conv-1", message, undefined);
    expect(prepared.partition).toBe(createKeyPartitioner(12)("conv-1"));
    expect(prepared.type).toBe("chat.message.sent");
    expect(prepared.rateLimited).toBe(true);
    expect(prepared.eventId).toMatch(/^[0-9a-f-]{36}$/);
    expect(prepared.bytes).toBeGreaterThan(prepared.record.value.length);
  });

  it("refuses an event over maxBatchBytes before anything is sent, naming the item", () => {
    const small = new EventAdmission(resolveOptions({ maxBatchBytes: 1024 }));
    const big = { ...message, content: { type: "text" as const, text: "x".repeat(1500) } };
    expect(() => small.prepare("conv-1", big, undefined, "items[3]")).toThrow(
      expect.objectContaining({ name: "ValidationError", field: "items[3]", rule: "maxBytes" }),
    );
    expect(() => small.prepare("conv-1", big, undefined)).toThrow(ValidationError);
  });

  it("limits a conversation by the kind it learnt (hint or chat.conversation.created)", () => {
    const bus = admission();
    const take = (conversationId: string) =>
      bus.admit(bus.prepare(conversationId, message, undefined), message);
    // Unknown: the direct (stricter) limit.
    take("dm");
    take("dm");
    expect(() => take("dm")).toThrow(RateLimitedError);
    // A group, learnt from its created event: 5.
    bus.prepare("team", validEvents["chat.conversation.created"], undefined);
    for (let i = 0; i < 5; i++) take("team");
    expect(() => take("team")).toThrow(RateLimitedError);
    // Other event types are never limited.
    const receipt = validEvents["chat.receipt.read"];
    expect(() => bus.admit(bus.prepare("dm", receipt, undefined), receipt)).not.toThrow();
  });

  it("admits all of a batch or none: a refusal gives back the tokens the earlier ones took", () => {
    const bus = admission();
    const batch = [0, 1, 2].map(() => bus.prepare("dm", message, undefined));
    expect(() => bus.admitAll(batch, [message, message, message])).toThrow(RateLimitedError);
    // Both tokens are back: two messages still fit.
    expect(() => bus.admitAll(batch.slice(0, 2), [message, message])).not.toThrow();
    expect(() => bus.admitAll(batch.slice(0, 1), [message])).toThrow(RateLimitedError);
  });
});
