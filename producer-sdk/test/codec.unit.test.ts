import { describe, expect, it } from "vitest";
import { decodeRecord, encodeEvent, type RawRecord } from "../src/codec.ts";
import { eventTypes } from "../src/events.ts";
import { redPacket, validEvents } from "./samples.ts";

const uuidv7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function encoded(): RawRecord & { headers: Record<string, string> } {
  const { record } = encodeEvent("conv-9", validEvents["chat.message.sent"], { source: "/test" });
  return { key: Buffer.from(record.key), value: record.value, headers: { ...record.headers } };
}

/** The record as kafkajs delivers it: every header a Buffer. */
function asBuffers(record: ReturnType<typeof encoded>): RawRecord & { headers: Record<string, Buffer> } {
  return {
    ...record,
    headers: Object.fromEntries(Object.entries(record.headers).map(([k, v]) => [k, Buffer.from(v)])),
  };
}

describe("codec", () => {
  it("round-trips every event type through Kafka-shaped buffers", () => {
    for (const type of [...eventTypes, "red packet"] as const) {
      const input = type === "red packet" ? redPacket : validEvents[type];
      const time = new Date("2026-01-02T03:04:05.678Z");
      const { record, event } = encodeEvent("conv-9", input, { source: "/svc/a", time });
      const raw: RawRecord = {
        key: Buffer.from(record.key),
        value: Buffer.from(record.value),
        headers: Object.fromEntries(Object.entries(record.headers).map(([k, v]) => [k, Buffer.from(v)])),
      };
      const decoded = decodeRecord(raw);
      expect(decoded).toEqual({ ok: true, event });
      if (!decoded.ok) continue;
      const { type: _type, ...data } = input;
      expect(decoded.event.data).toEqual(data);
      expect(decoded.event.time).toEqual(time);
      expect(decoded.event.id).toMatch(uuidv7);
      expect(record.headers).toMatchObject({
        ce_specversion: "1.0",
        ce_type: input.type,
        ce_source: "/svc/a",
        ce_time: "2026-01-02T03:04:05.678Z",
        "content-type": "application/json",
      });
    }
  });

  it("gives every event a distinct, time-ordered UUIDv7", () => {
    const ids = Array.from(
      { length: 1000 },
      () => encodeEvent("c", validEvents["chat.member.left"], { source: "/t" }).event.id,
    );
    expect(new Set(ids).size).toBe(1000);
    for (const id of ids) expect(id).toMatch(uuidv7);
    const stamps = ids.map((id) => id.slice(0, 13));
    expect([...stamps].sort()).toEqual(stamps);
  });

  const failures: [string, (r: ReturnType<typeof encoded>) => void, string, RegExp][] = [
    [
      "no key",
      (r) => {
        r.key = null;
      },
      "CHATBUS_UNDECODABLE",
      /no key/,
    ],
    [
      "a key that is not an id",
      (r) => {
        r.key = Buffer.from("a b");
      },
      "CHATBUS_UNDECODABLE",
      /key/,
    ],
    [
      "a wrong spec version",
      (r) => {
        r.headers.ce_specversion = "0.3";
      },
      "CHATBUS_UNDECODABLE",
      /ce_specversion/,
    ],
    [
      "no ce_id",
      (r) => {
        delete r.headers.ce_id;
      },
      "CHATBUS_UNDECODABLE",
      /ce_id is missing/,
    ],
    [
      "no ce_source",
      (r) => {
        delete r.headers.ce_source;
      },
      "CHATBUS_UNDECODABLE",
      /ce_source/,
    ],
    [
      "a bad ce_time",
      (r) => {
        r.headers.ce_time = "yesterday";
      },
      "CHATBUS_UNDECODABLE",
      /ce_time/,
    ],
    [
      "an unknown type",
      (r) => {
        r.headers.ce_type = "chat.typing";
      },
      "CHATBUS_UNKNOWN_TYPE",
      /chat\.typing/,
    ],
    [
      "an unknown schema version",
      (r) => {
        r.headers.ce_dataschema = "urn:chatbus:chat.message.sent:v9";
      },
      "CHATBUS_UNKNOWN_VERSION",
      /v9/,
    ],
    [
      "another content type",
      (r) => {
        r.headers["content-type"] = "text/plain";
      },
      "CHATBUS_UNDECODABLE",
      /content-type/,
    ],
    [
      "no value",
      (r) => {
        r.value = null;
      },
      "CHATBUS_UNDECODABLE",
      /no value/,
    ],
    [
      "a value that is not JSON",
      (r) => {
        r.value = Buffer.from("{oops");
      },
      "CHATBUS_UNDECODABLE",
      /not JSON/,
    ],
    [
      "binary garbage",
      (r) => {
        r.value = Buffer.from([0xff, 0x00, 0xfe]);
      },
      "CHATBUS_UNDECODABLE",
      /not JSON/,
    ],
    // What a raw producer could write past the SDK: the projection cannot store these,
    // so the decoder must make them poison (dead-lettered at once), never a retried batch.
    [
      "a text holding U+0000 (escaped in JSON)",
      (r) => {
        r.value = Buffer.from('{"senderId":"ana","content":{"type":"text","text":"a\\u0000b"}}');
      },
      "CHATBUS_SCHEMA_VIOLATION",
      /`content\.text` must not contain U\+0000/,
    ],
    [
      "a lone surrogate in custom data",
      (r) => {
        r.value = Buffer.from(
          '{"senderId":"ana","content":{"type":"custom","customType":"x","data":{"note":"\\ud800"}}}',
        );
      },
      "CHATBUS_SCHEMA_VIOLATION",
      /`content\.data\.note` must not contain a lone UTF-16 surrogate/,
    ],
    [
      "a read receipt past 2^53-1",
      (r) => {
        r.headers.ce_type = "chat.receipt.read";
        r.headers.ce_dataschema = "urn:chatbus:chat.receipt.read:v1";
        r.value = Buffer.from('{"userId":"ana","upToSeq":10000000000000000000}');
      },
      "CHATBUS_SCHEMA_VIOLATION",
      /`upToSeq` must be 9007199254740991 or less/,
    ],
    [
      "a NUL in ce_source",
      (r) => {
        r.headers.ce_source = "/evil\u0000";
      },
      "CHATBUS_UNDECODABLE",
      /ce_source contains U\+0000/,
    ],
    [
      "a ce_id that is not a UUID",
      (r) => {
        r.headers.ce_id = "not-a-uuid";
      },
      "CHATBUS_UNDECODABLE",
      /ce_id must be a UUID/,
    ],
    [
      "data that breaks the schema",
      (r) => {
        r.value = Buffer.from(JSON.stringify({ senderId: "ana", content: { type: "text" } }));
      },
      "CHATBUS_SCHEMA_VIOLATION",
      /content\.text/,
    ],
  ];
  for (const [what, spoil, code, reason] of failures) {
    it(`rejects a record with ${what}, saying why`, () => {
      const record = encoded();
      expect(decodeRecord(record).ok).toBe(true);
      spoil(record);
      const result = decodeRecord(record);
      expect(result.ok).toBe(false);
      if (result.ok) return;
      expect(result.code).toBe(code);
      expect(result.reason).toMatch(reason);
      // The same record as kafkajs delivers it (every header a Buffer, compared as
      // bytes by the decoder) fails the same way, with the same words.
      expect(decodeRecord(asBuffers(record))).toEqual(result);
    });
  }

  it("treats an empty or null header as missing instead of throwing", () => {
    for (const name of ["ce_id", "ce_type", "ce_source", "ce_time"]) {
      for (const empty of ["", Buffer.alloc(0), null]) {
        const record = asBuffers(encoded());
        (record.headers as Record<string, unknown>)[name] = empty;
        expect(decodeRecord(record)).toEqual({
          ok: false,
          code: "CHATBUS_UNDECODABLE",
          reason: `header ${name} is missing`,
        });
      }
    }
    const record = asBuffers(encoded());
    (record.headers as Record<string, unknown>).ce_specversion = null;
    expect(decodeRecord(record)).toMatchObject({
      ok: false,
      reason: /ce_specversion must be "1.0"; got undefined/,
    });
  });

  it("does not take an Object.prototype member named in ce_type for an event type", () => {
    for (const type of ["toString", "constructor", "__proto__", "hasOwnProperty"]) {
      const record = encoded();
      record.headers.ce_type = type;
      expect(decodeRecord(record)).toMatchObject({ ok: false, code: "CHATBUS_UNKNOWN_TYPE" });
      expect(decodeRecord(asBuffers(record))).toMatchObject({ ok: false, code: "CHATBUS_UNKNOWN_TYPE" });
    }
  });

  it("reads ce_type byte for byte: a type of the same length is a different type", () => {
    // chat.message.sent and chat.receipt.read are both 17 bytes long.
    const record = asBuffers(encoded());
    record.headers.ce_type = Buffer.from("chat.receipt.read");
    record.headers.ce_dataschema = Buffer.from("urn:chatbus:chat.receipt.read:v1");
    expect(decodeRecord(record)).toMatchObject({ ok: false, code: "CHATBUS_SCHEMA_VIOLATION" });
    record.headers.ce_type = Buffer.from("chat.message.senT");
    expect(decodeRecord(record)).toMatchObject({ ok: false, code: "CHATBUS_UNKNOWN_TYPE" });
  });

  it("accepts a JSON content-type with parameters and a record without ce_dataschema (v1)", () => {
    for (const shape of [(r: ReturnType<typeof encoded>) => r, asBuffers]) {
      const withCharset = encoded();
      withCharset.headers["content-type"] = "application/json; charset=utf-8";
      expect(decodeRecord(shape(withCharset)).ok).toBe(true);
      const noSchema = encoded();
      delete noSchema.headers.ce_dataschema;
      expect(decodeRecord(shape(noSchema))).toMatchObject({ ok: true, event: { schemaVersion: 1 } });
    }
  });

  it("reads only the version from a ce_dataschema that is not the type's own, bytes or text", () => {
    const record = encoded();
    record.headers.ce_dataschema = "urn:chatbus:chat.receipt.read:v1";
    // Only the version is read from a URN that is not the type's own, as before.
    expect(decodeRecord(record).ok).toBe(true);
    record.headers.ce_dataschema = "urn:chatbus:chat.message.sent:v1 ";
    expect(decodeRecord(asBuffers(record))).toMatchObject({ ok: false, code: "CHATBUS_UNKNOWN_VERSION" });
  });

  it("accepts headers as arrays of buffers (as some clients deliver them)", () => {
    const record = encoded();
    const raw: RawRecord = {
      ...record,
      headers: Object.fromEntries(Object.entries(record.headers).map(([k, v]) => [k, [Buffer.from(v)]])),
    };
    expect(decodeRecord(raw).ok).toBe(true);
  });
});
