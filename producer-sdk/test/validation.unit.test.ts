import type { TSchema } from "@sinclair/typebox";
import { describe, expect, it } from "vitest";
import { encodeEvent } from "../src/codec.ts";
import { ValidationError } from "../src/errors.ts";
import { type ChatEventType, eventDataSchemas, eventTypes } from "../src/events.ts";
import { redPacket, validEvents } from "./samples.ts";

function errorOf(action: () => unknown): ValidationError {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(ValidationError);
    return error as ValidationError;
  }
  throw new Error("expected a ValidationError, but nothing was thrown");
}

const encode = (conversationId: string, event: unknown) =>
  encodeEvent(conversationId, event as never, { source: "/test" });

/** A value of the wrong JSON type for a schema. */
function wrongTypeFor(schema: TSchema): unknown {
  if (schema.type === "string" || schema.anyOf?.every((s: TSchema) => "const" in s)) return 12345;
  if (schema.type === "array") return "not-an-array";
  return "not-an-object-or-number";
}

describe("event validation", () => {
  it("accepts one valid event of every type, and a red packet", () => {
    for (const type of eventTypes) expect(() => encode("conv-1", validEvents[type])).not.toThrow();
    expect(() => encode("conv-1", redPacket)).not.toThrow();
  });

  for (const type of eventTypes) {
    const schema = eventDataSchemas[type as ChatEventType] as TSchema & {
      required?: string[];
      properties: Record<string, TSchema>;
    };
    it(`${type}: names every missing required field`, () => {
      expect(schema.required?.length).toBeGreaterThan(0);
      for (const field of schema.required ?? []) {
        const event: Record<string, unknown> = { ...validEvents[type] };
        delete event[field];
        const error = errorOf(() => encode("conv-1", event));
        expect(error.field).toBe(field);
        expect(error.rule).toBe("required");
        expect(error.message).toContain(`\`${field}\``);
        expect(error.code).toBe("CHATBUS_VALIDATION");
      }
    });
    it(`${type}: names every field of the wrong type`, () => {
      for (const [field, fieldSchema] of Object.entries(schema.properties)) {
        const event = { ...validEvents[type], [field]: wrongTypeFor(fieldSchema) };
        const error = errorOf(() => encode("conv-1", event));
        expect(error.field, field).toBe(field);
        expect(error.message).toContain(`\`${field}\``);
      }
    });
  }

  it("names the field inside a text content union (content.text)", () => {
    const error = errorOf(() =>
      encode("conv-1", { type: "chat.message.sent", senderId: "ana", content: { type: "text" } }),
    );
    expect(error.field).toBe("content.text");
    expect(error.rule).toBe("required");
    expect(error.message).toBe("`content.text` is required but missing.");
  });

  it("names the field inside a custom content union (content.customType)", () => {
    const error = errorOf(() =>
      encode("conv-1", { type: "chat.message.sent", senderId: "ana", content: { type: "custom", data: {} } }),
    );
    expect(error.field).toBe("content.customType");
  });

  it("says which content types exist when the content type is unknown", () => {
    const error = errorOf(() =>
      encode("conv-1", { type: "chat.message.sent", senderId: "ana", content: { type: "video" } }),
    );
    expect(error.field).toBe("content.type");
    expect(error.message).toBe('`content.type` must be "text" or "custom"; got "video".');
  });

  it("lists the allowed priorities", () => {
    const error = errorOf(() =>
      encode("conv-1", { ...validEvents["chat.message.sent"], priority: "urgent" }),
    );
    expect(error.field).toBe("priority");
    expect(error.message).toBe('`priority` must be one of "high", "normal", "low"; got "urgent".');
  });

  it("rejects unknown fields, naming them", () => {
    const error = errorOf(() => encode("conv-1", { ...validEvents["chat.member.left"], reason: "bye" }));
    expect(error.field).toBe("reason");
    expect(error.rule).toBe("additionalProperties");
  });

  it("rejects empty text and a non-integer sequence number", () => {
    expect(
      errorOf(() =>
        encode("conv-1", { type: "chat.message.sent", senderId: "ana", content: { type: "text", text: "" } }),
      ).message,
    ).toBe('`content.text` must not be empty; got "".');
    expect(errorOf(() => encode("conv-1", { ...validEvents["chat.receipt.read"], upToSeq: 1.5 })).field).toBe(
      "upToSeq",
    );
  });

  it("rejects a bad message id format", () => {
    const error = errorOf(() =>
      encode("conv-1", { ...validEvents["chat.message.recalled"], messageId: "z".repeat(36) }),
    );
    expect(error.field).toBe("messageId");
    expect(error.rule).toBe("format");
  });

  it("rejects an unknown type, a non-object event and a bad conversation id", () => {
    expect(errorOf(() => encode("conv-1", { type: "chat.typing" })).field).toBe("type");
    expect(errorOf(() => encode("conv-1", { senderId: "ana" })).field).toBe("type");
    expect(errorOf(() => encode("conv-1", null)).field).toBe("(event)");
    expect(errorOf(() => encode("", validEvents["chat.member.left"])).field).toBe("conversationId");
    expect(errorOf(() => encode('a"b', validEvents["chat.member.left"])).field).toBe("conversationId");
    expect(errorOf(() => encode(42 as never, validEvents["chat.member.left"])).field).toBe("conversationId");
  });

  it("prefixes fields when asked (sendMany items)", () => {
    const error = errorOf(() =>
      encodeEvent(
        "conv-1",
        { type: "chat.message.sent", senderId: "ana", content: { type: "text" } } as never,
        {
          source: "/test",
          fieldPrefix: "items[3]",
        },
      ),
    );
    expect(error.field).toBe("items[3].content.text");
  });

  // The hostile values of the security review (H1): each one PostgreSQL refuses, so
  // each must be refused before Kafka, naming the field.
  const hostile: [string, unknown, string, string][] = [
    ["NUL in a text", { ...sent, content: { type: "text", text: "a\u0000b" } }, "content.text", "nul"],
    [
      "a lone high surrogate",
      { ...sent, content: { type: "text", text: "\ud800" } },
      "content.text",
      "surrogate",
    ],
    [
      "a lone low surrogate",
      { ...sent, content: { type: "text", text: "x\udc00y" } },
      "content.text",
      "surrogate",
    ],
    [
      "NUL deep in custom data",
      { ...sent, content: { type: "custom", customType: "x", data: { a: [{ b: "\u0000" }] } } },
      "content.data.a.0.b",
      "nul",
    ],
    [
      "NUL in a custom data key",
      { ...sent, content: { type: "custom", customType: "x", data: { "k\u0000": 1 } } },
      "content.data.k\\u0000",
      "nul",
    ],
    [
      "an unsafe integer in custom data",
      { ...sent, content: { type: "custom", customType: "x", data: { n: 1e300 } } },
      "content.data.n",
      "unsafeInteger",
    ],
    [
      "NUL in a custom description",
      { ...sent, content: { type: "custom", customType: "x", data: {}, description: "\u0000" } },
      "content.description",
      "nul",
    ],
    [
      "NUL in a title",
      {
        type: "chat.conversation.created",
        kind: "group",
        title: "a\u0000b",
        createdBy: "ana",
        members: ["ana"],
      },
      "title",
      "nul",
    ],
    [
      "a receipt seq of 1e19",
      { type: "chat.receipt.read", userId: "ana", upToSeq: 1e19 },
      "upToSeq",
      "maximum",
    ],
    [
      "a receipt seq of 1e300",
      { type: "chat.receipt.delivered", userId: "ana", upToSeq: 1e300 },
      "upToSeq",
      "maximum",
    ],
  ];
  for (const [name, event, field, rule] of hostile) {
    it(`refuses ${name}, naming \`${field}\``, () => {
      const error = errorOf(() => encode("conv-1", event));
      expect(error.field).toBe(field);
      expect(error.rule).toBe(rule);
      expect(error.message).toContain(`\`${field}\``);
    });
  }

  it("accepts the largest safe sequence number and paired surrogates (emoji)", () => {
    expect(() =>
      encode("conv-1", { type: "chat.receipt.read", userId: "ana", upToSeq: Number.MAX_SAFE_INTEGER }),
    ).not.toThrow();
    expect(() =>
      encode("conv-1", { ...sent, content: { type: "text", text: "hi 😀 \ud83d\ude00" } }),
    ).not.toThrow();
  });
});

const sent = { type: "chat.message.sent", senderId: "ana" } as const;
