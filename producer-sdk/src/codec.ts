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

/** A header's first value as the client gave it: bytes, text, or nothing (null counts as absent). */
function headerValue(headers: RawRecord["headers"], name: string): Buffer | string | undefined {
  const raw = headers?.[name];
  const value = Array.isArray(raw) ? raw[0] : raw;
  return value ?? undefined;
}

/**
 * A header value the decoder expects often, kept both as text and as UTF-8 bytes, so
 * that a Buffer from Kafka is compared byte for byte instead of being decoded into a
 * string first (kafkajs hands every header over as a Buffer).
 */
interface KnownText {
  text: string;
  bytes: Buffer;
}

const known = (text: string): KnownText => ({ text, bytes: Buffer.from(text) });

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  // A plain loop: these are short (≤ 40 bytes), where Buffer#equals's native call costs more.
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function isText(value: Buffer | string, expected: KnownText): boolean {
  return typeof value === "string" ? value === expected.text : sameBytes(value, expected.bytes);
}

/** Each event type with its current `ce_dataschema`, for the byte comparisons above. */
const knownTypes = (Object.keys(schemaVersions) as ChatEventType[]).map((type) => ({
  type: known(type),
  schema: known(dataSchemaUri(type, schemaVersions[type])),
}));
const knownSpecVersion = known(CLOUDEVENTS_SPEC_VERSION);
const knownContentType = known(CONTENT_TYPE);

/** The event type a `ce_type` header names, when it is one this consumer knows. */
function knownType(value: Buffer | string): (typeof knownTypes)[number] | undefined {
  for (const entry of knownTypes) if (isText(value, entry.type)) return entry;
  return undefined;
}

/** `ce_dataschema`'s version: the current one on the fast path, else parsed from the URN (absent means v1). */
function schemaVersion(value: Buffer | string | undefined, entry: (typeof knownTypes)[number]): number {
  if (value === undefined) return 1;
  if (isText(value, entry.schema)) return schemaVersions[entry.type.text as ChatEventType];
  return Number(/^urn:chatbus:[a-z.]+:v(\d+)$/.exec(value.toString())?.[1] ?? Number.NaN);
}

/** A present header's text, or undefined when it is missing or empty (both mean "missing"). */
function presentText(value: Buffer | string | undefined): string | undefined {
  if (value === undefined || value.length === 0) return undefined;
  return value.toString();
}

/** `ce_id` as chatbus writes it (a UUIDv7); any UUID version is accepted. */
const uuidText = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const fail = (code: DecodeFailureCode, reason: string): DecodeResult => ({ ok: false, code, reason });

/**
 * Decodes a record back into a typed event, or says precisely why it cannot:
 * undecodable bytes, an unknown type or schema version, or a schema violation.
 * Never throws.
 *
 * This runs once per consumed record, so the common case is kept cheap: fixed header
 * values are compared as bytes, the value is parsed once, and the slower paths (regex,
 * string conversions for messages) run only for records that are about to fail.
 */
export function decodeRecord(record: RawRecord): DecodeResult {
  const key = record.key?.toString();
  if (!key) return fail("CHATBUS_UNDECODABLE", "the record has no key (conversation id)");
  const idError = firstError(conversationIdCheck, key, "key");
  if (idError)
    return fail("CHATBUS_UNDECODABLE", `the record key is not a conversation id: ${idError.message}`);
  const headers = record.headers;
  const specVersion = headerValue(headers, "ce_specversion");
  if (specVersion === undefined || !isText(specVersion, knownSpecVersion)) {
    return fail(
      "CHATBUS_UNDECODABLE",
      `header ce_specversion must be "${CLOUDEVENTS_SPEC_VERSION}"; got ${JSON.stringify(specVersion?.toString())}`,
    );
  }
  const id = presentText(headerValue(headers, "ce_id"));
  if (id === undefined) return fail("CHATBUS_UNDECODABLE", "header ce_id is missing");
  const typeValue = headerValue(headers, "ce_type");
  if (typeValue === undefined || typeValue.length === 0)
    return fail("CHATBUS_UNDECODABLE", "header ce_type is missing");
  const source = presentText(headerValue(headers, "ce_source"));
  if (source === undefined) return fail("CHATBUS_UNDECODABLE", "header ce_source is missing");
  const timeText = presentText(headerValue(headers, "ce_time"));
  if (timeText === undefined) return fail("CHATBUS_UNDECODABLE", "header ce_time is missing");
  // Stored as text by consumers: PostgreSQL refuses U+0000 (a raw producer could send
  // it). ce_type is compared as bytes against the known types, so a NUL there is an
  // unknown type.
  for (const [name, value] of [
    ["ce_id", id],
    ["ce_source", source],
    ["ce_time", timeText],
  ] as const) {
    if (value.includes("\u0000")) return fail("CHATBUS_UNDECODABLE", `header ${name} contains U+0000 (NUL)`);
  }
  if (!uuidText.test(id)) {
    return fail("CHATBUS_UNDECODABLE", `header ce_id must be a UUID; got ${JSON.stringify(id.slice(0, 60))}`);
  }
  const time = new Date(timeText);
  if (Number.isNaN(time.getTime()))
    return fail("CHATBUS_UNDECODABLE", `header ce_time is not an RFC 3339 time: ${JSON.stringify(timeText)}`);
  const entry = knownType(typeValue);
  if (!entry)
    return fail("CHATBUS_UNKNOWN_TYPE", `unknown event type ${JSON.stringify(typeValue.toString())}`);
  const eventType = entry.type.text as ChatEventType;
  const schema = headerValue(headers, "ce_dataschema");
  const version = schemaVersion(schema, entry);
  if (version !== schemaVersions[eventType]) {
    return fail(
      "CHATBUS_UNKNOWN_VERSION",
      `${eventType} schema ${JSON.stringify(schema?.toString())} is not a version this consumer knows (v${schemaVersions[eventType]})`,
    );
  }
  const contentType = headerValue(headers, "content-type");
  if (contentType !== undefined && !isText(contentType, knownContentType)) {
    const text = contentType.toString();
    if (!text.startsWith(CONTENT_TYPE))
      return fail("CHATBUS_UNDECODABLE", `content-type must be ${CONTENT_TYPE}; got ${JSON.stringify(text)}`);
  }
  return decodeData(record, {
    id,
    type: eventType,
    source,
    time,
    conversationId: key,
    schemaVersion: version,
    // Filled in by decodeData; set here so that every event object has one shape.
    data: undefined,
  } as unknown as ChatEvent);
}

/** The second half of decodeRecord: the value as JSON, checked against the type's schema. */
function decodeData(record: RawRecord, envelope: ChatEvent): DecodeResult {
  if (record.value === null || record.value === undefined)
    return fail("CHATBUS_UNDECODABLE", "the record has no value");
  let data: unknown;
  try {
    data = JSON.parse(record.value.toString());
  } catch (error) {
    return fail("CHATBUS_UNDECODABLE", `the value is not JSON: ${(error as Error).message}`);
  }
  try {
    validateEventData(envelope.type, data);
  } catch (error) {
    return fail("CHATBUS_SCHEMA_VIOLATION", (error as Error).message);
  }
  (envelope as { data: unknown }).data = data;
  return { ok: true, event: envelope as ChatEvent };
}
