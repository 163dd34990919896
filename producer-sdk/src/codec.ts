/**
 * The record format: CloudEvents Kafka protocol binding, binary mode. The record key
 * is the conversation id; `ce_*` headers carry the attributes; the value is the
 * event data as UTF-8 JSON. `ce_dataschema` names the type and schema version, e.g.
 * `urn:chatbus:chat.message.sent:v1`.
 */
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { ValidationError } from "./errors.ts";
import { uuidv7 } from "./event-id.ts";
import {
  type ChatEvent,
  type ChatEventInput,
  type ChatEventType,
  ConversationId,
  schemaVersions,
} from "./events.ts";
import { firstError, validateEventData } from "./validation.ts";

export const CLOUDEVENTS_SPEC_VERSION = "1.0";
export const CONTENT_TYPE = "application/json";

/** A Kafka record as chatbus writes it. */
export interface EncodedRecord {
  key: string;
  value: Buffer;
  headers: Record<string, string>;
}

/** A Kafka record as a client hands it over: any of its parts may be missing or garbage. */
export interface RawRecord {
  key: Buffer | string | null | undefined;
  value: Buffer | string | null | undefined;
  headers?: Record<string, Buffer | string | (Buffer | string)[] | undefined> | undefined;
}

/** Why a record could not be decoded; stable codes that dead letters carry. */
export type DecodeFailureCode =
  | "CHATBUS_UNDECODABLE"
  | "CHATBUS_UNKNOWN_TYPE"
  | "CHATBUS_UNKNOWN_VERSION"
  | "CHATBUS_SCHEMA_VIOLATION";

export type DecodeResult =
  | { ok: true; event: ChatEvent }
  | { ok: false; code: DecodeFailureCode; reason: string };

export interface EncodeOptions {
  /** `ce_source`, e.g. `/services/chat-api`. */
  source: string;
  /** Event id; a new UUIDv7 when omitted. */
  id?: string;
  /** Event time; now when omitted. */
  time?: Date;
  /** Put before field names in errors, e.g. `items[3]` when encoding one of many. */
  fieldPrefix?: string;
}

const conversationIdCheck = TypeCompiler.Compile(ConversationId);

/** Throws a ValidationError naming `conversationId` when it is not a valid id. */
export function validateConversationId(conversationId: unknown): asserts conversationId is string {
  const error = firstError(conversationIdCheck, conversationId, "conversationId");
  if (error) throw error;
}

export function dataSchemaUri(type: ChatEventType, version: number): string {
  return `urn:chatbus:${type}:v${version}`;
}

/**
 * Validates an event and turns it into a record. Throws ValidationError (naming the
 * field) before anything is built, so an invalid event can never reach Kafka.
 */
export function encodeEvent(
  conversationId: string,
  input: ChatEventInput,
  options: EncodeOptions,
): { record: EncodedRecord; event: ChatEvent } {
  const prefix = options.fieldPrefix ?? "";
  const idError = firstError(
    conversationIdCheck,
    conversationId,
    prefix ? `${prefix}.conversationId` : "conversationId",
  );
  if (idError) throw idError;
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    const field = prefix || "(event)";
    throw new ValidationError(
      field,
      "type",
      `\`${field}\` must be an event object with a \`type\` field; got ${JSON.stringify(input)?.slice(0, 60)}.`,
    );
  }
  const { type, ...data } = input as { type: unknown } & Record<string, unknown>;
  validateEventData(type as string, data, prefix);
  const eventType = type as ChatEventType;
  const id = options.id ?? uuidv7();
  const time = options.time ?? new Date();
  const version = schemaVersions[eventType];
  const record: EncodedRecord = {
    key: conversationId,
    value: Buffer.from(JSON.stringify(data)),
    headers: {
      ce_specversion: CLOUDEVENTS_SPEC_VERSION,
      ce_id: id,
      ce_type: eventType,
      ce_source: options.source,
      ce_time: time.toISOString(),
      ce_dataschema: dataSchemaUri(eventType, version),
      "content-type": CONTENT_TYPE,
    },
  };
  const event = {
    id,
    type: eventType,
    source: options.source,
    time,
    conversationId,
    schemaVersion: version,
    data,
  } as ChatEvent;
  return { record, event };
}

function header(headers: RawRecord["headers"], name: string): string | undefined {
  const raw = headers?.[name];
  const value = Array.isArray(raw) ? raw[0] : raw;
  return value === undefined ? undefined : value.toString();
}

/** `ce_id` as chatbus writes it (a UUIDv7); any UUID version is accepted. */
const uuidText = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const fail = (code: DecodeFailureCode, reason: string): DecodeResult => ({ ok: false, code, reason });

/**
 * Decodes a record back into a typed event, or says precisely why it cannot:
 * undecodable bytes, an unknown type or schema version, or a schema violation.
 * Never throws.
 */
export function decodeRecord(record: RawRecord): DecodeResult {
  const key = record.key?.toString();
  if (!key) return fail("CHATBUS_UNDECODABLE", "the record has no key (conversation id)");
  const idError = firstError(conversationIdCheck, key, "key");
  if (idError)
    return fail("CHATBUS_UNDECODABLE", `the record key is not a conversation id: ${idError.message}`);
  if (header(record.headers, "ce_specversion") !== CLOUDEVENTS_SPEC_VERSION) {
    return fail(
      "CHATBUS_UNDECODABLE",
      `header ce_specversion must be "${CLOUDEVENTS_SPEC_VERSION}"; got ${JSON.stringify(header(record.headers, "ce_specversion"))}`,
    );
  }
  const id = header(record.headers, "ce_id");
  const type = header(record.headers, "ce_type");
  const source = header(record.headers, "ce_source");
  const timeText = header(record.headers, "ce_time");
  for (const [name, value] of [
    ["ce_id", id],
    ["ce_type", type],
    ["ce_source", source],
    ["ce_time", timeText],
  ] as const) {
    if (!value) return fail("CHATBUS_UNDECODABLE", `header ${name} is missing`);
    // Stored as text by consumers: PostgreSQL refuses U+0000 (a raw producer could send it).
    if (value.includes("\u0000")) return fail("CHATBUS_UNDECODABLE", `header ${name} contains U+0000 (NUL)`);
  }
  if (!uuidText.test(id!)) {
    return fail(
      "CHATBUS_UNDECODABLE",
      `header ce_id must be a UUID; got ${JSON.stringify(id!.slice(0, 60))}`,
    );
  }
  const time = new Date(timeText!);
  if (Number.isNaN(time.getTime()))
    return fail("CHATBUS_UNDECODABLE", `header ce_time is not an RFC 3339 time: ${JSON.stringify(timeText)}`);
  if (!(type! in schemaVersions))
    return fail("CHATBUS_UNKNOWN_TYPE", `unknown event type ${JSON.stringify(type)}`);
  const eventType = type as ChatEventType;
  const schema = header(record.headers, "ce_dataschema");
  const version =
    schema === undefined ? 1 : Number(/^urn:chatbus:[a-z.]+:v(\d+)$/.exec(schema)?.[1] ?? Number.NaN);
  if (version !== schemaVersions[eventType]) {
    return fail(
      "CHATBUS_UNKNOWN_VERSION",
      `${eventType} schema ${JSON.stringify(schema)} is not a version this consumer knows (v${schemaVersions[eventType]})`,
    );
  }
  const contentType = header(record.headers, "content-type");
  if (contentType !== undefined && !contentType.startsWith(CONTENT_TYPE)) {
    return fail(
      "CHATBUS_UNDECODABLE",
      `content-type must be ${CONTENT_TYPE}; got ${JSON.stringify(contentType)}`,
    );
  }
  if (record.value === null || record.value === undefined)
    return fail("CHATBUS_UNDECODABLE", "the record has no value");
  let data: unknown;
  try {
    data = JSON.parse(record.value.toString());
  } catch (error) {
    return fail("CHATBUS_UNDECODABLE", `the value is not JSON: ${(error as Error).message}`);
  }
  try {
    validateEventData(eventType, data);
  } catch (error) {
    return fail("CHATBUS_SCHEMA_VIOLATION", (error as Error).message);
  }
  return {
    ok: true,
    event: {
      id: id!,
      type: eventType,
      source: source!,
      time,
      conversationId: key,
      schemaVersion: version,
      data,
    } as ChatEvent,
  };
}
