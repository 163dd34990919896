import { FormatRegistry, type TSchema } from "@sinclair/typebox";
import { type TypeCheck, TypeCompiler } from "@sinclair/typebox/compiler";
import { type ValueError, ValueErrorType } from "@sinclair/typebox/errors";
import { Value } from "@sinclair/typebox/value";
import { ValidationError } from "./errors.ts";
import { type ChatEventType, eventDataSchemas } from "./events.ts";

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// TypeBox checks `format` only through its registry; without this every `uuid` fails.
if (!FormatRegistry.Has("uuid")) FormatRegistry.Set("uuid", (value) => uuidPattern.test(value));

/** Compiled once at load: validation must stay cheap next to a Kafka round trip. */
const compiled = Object.fromEntries(
  Object.entries(eventDataSchemas).map(([type, schema]) => [type, TypeCompiler.Compile(schema)]),
) as { [T in ChatEventType]: TypeCheck<(typeof eventDataSchemas)[T]> };

const typeErrors = new Map<ValueErrorType, string>([
  [ValueErrorType.String, "a string"],
  [ValueErrorType.Integer, "an integer"],
  [ValueErrorType.Number, "a number"],
  [ValueErrorType.Boolean, "a boolean"],
  [ValueErrorType.Object, "an object"],
  [ValueErrorType.Array, "an array"],
  [ValueErrorType.Null, "null"],
]);

const ruleNames: Partial<Record<ValueErrorType, string>> = {
  [ValueErrorType.ObjectRequiredProperty]: "required",
  [ValueErrorType.ObjectAdditionalProperties]: "additionalProperties",
  [ValueErrorType.StringMinLength]: "minLength",
  [ValueErrorType.StringMaxLength]: "maxLength",
  [ValueErrorType.StringPattern]: "pattern",
  [ValueErrorType.StringFormat]: "format",
  [ValueErrorType.StringFormatUnknown]: "format",
  [ValueErrorType.ArrayMinItems]: "minItems",
  [ValueErrorType.ArrayMaxItems]: "maxItems",
  [ValueErrorType.ArrayUniqueItems]: "uniqueItems",
  [ValueErrorType.IntegerMinimum]: "minimum",
  [ValueErrorType.NumberMinimum]: "minimum",
  [ValueErrorType.IntegerMaximum]: "maximum",
  [ValueErrorType.NumberMaximum]: "maximum",
  [ValueErrorType.Union]: "oneOf",
  [ValueErrorType.Literal]: "const",
};

/** `/content/text` → `content.text`, with an optional prefix such as `items[3]`. */
function dotted(path: string, prefix: string): string {
  const parts = path
    .split("/")
    .filter(Boolean)
    .map((p) => p.replaceAll("~1", "/").replaceAll("~0", "~"));
  return [prefix, ...parts].filter(Boolean).join(".");
}

function show(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** The literal a union variant requires for its `type` property, if it has one. */
function typeLiteral(variant: TSchema): unknown {
  const property = (variant as { properties?: Record<string, TSchema> }).properties?.type;
  return property && "const" in property ? property.const : undefined;
}

/**
 * Narrows a union error to the variant the value meant: a union of literals gets
 * "must be one of ...", a union of objects tagged by `type` reports the first error
 * inside the variant whose `type` matches (so `{type:"text"}` names `content.text`).
 */
function narrowUnion(error: ValueError): ValueError {
  const variants = (error.schema as { anyOf?: TSchema[] }).anyOf ?? [];
  const literals = variants.map((v) => (v as { const?: unknown }).const);
  if (variants.length > 0 && literals.every((l) => l !== undefined)) {
    return {
      ...error,
      type: ValueErrorType.Literal,
      message: `must be one of ${literals.map((l) => JSON.stringify(l)).join(", ")}`,
    };
  }
  const tags = variants.map(typeLiteral);
  if (variants.length === 0 || tags.some((t) => t === undefined)) return error;
  const tagList = tags.map((t) => JSON.stringify(t)).join(" or ");
  if (!isObject(error.value)) {
    return {
      ...error,
      type: ValueErrorType.Object,
      message: `must be an object whose \`type\` is ${tagList}`,
    };
  }
  const index = tags.indexOf(error.value.type);
  if (index < 0) {
    return {
      ...error,
      type: ValueErrorType.Literal,
      path: `${error.path}/type`,
      value: error.value.type,
      message: `must be ${tagList}`,
    };
  }
  const inner = Value.Errors(variants[index]!, error.value).First();
  if (!inner) return error;
  const nested = { ...inner, path: `${error.path}${inner.path}` };
  return nested.type === ValueErrorType.Union ? narrowUnion(nested) : nested;
}

function sentence(error: ValueError): string {
  const schema = error.schema as Record<string, unknown>;
  // narrowUnion writes its own sentences; TypeBox's all start with "Expected"/"Unexpected".
  if (!/^(Expected|Unexpected)/.test(error.message)) return error.message;
  switch (error.type) {
    case ValueErrorType.StringMinLength:
      return schema.minLength === 1
        ? "must not be empty"
        : `must be at least ${schema.minLength} characters long`;
    case ValueErrorType.StringMaxLength:
      return `must be at most ${schema.maxLength} characters long`;
    case ValueErrorType.ArrayMinItems:
      return `must have at least ${schema.minItems} items`;
    case ValueErrorType.ArrayMaxItems:
      return `must have at most ${schema.maxItems} items`;
    case ValueErrorType.ArrayUniqueItems:
      return "must not list the same item twice";
    case ValueErrorType.IntegerMinimum:
    case ValueErrorType.NumberMinimum:
      return `must be ${schema.minimum} or more`;
    case ValueErrorType.IntegerMaximum:
    case ValueErrorType.NumberMaximum:
      return `must be ${schema.maximum} or less`;
    case ValueErrorType.ObjectRequiredProperty:
      return "is required but missing";
    case ValueErrorType.ObjectAdditionalProperties:
      return "is not a field of this event; remove it or check its spelling";
    case ValueErrorType.StringFormatUnknown:
    case ValueErrorType.StringFormat:
      return `must be a ${String(schema.format ?? "valid")} string`;
    case ValueErrorType.StringPattern:
      return `must match ${String(schema.pattern)}`;
    default: {
      const expected = typeErrors.get(error.type);
      if (expected) return `must be ${expected}`;
      // TypeBox says "Expected string length greater or equal to 1": keep its detail, lower-case.
      return error.message.replace(/^Expected /, "must be ").replace(/^\w/, (c) => c.toLowerCase());
    }
  }
}

/** A ValidationError for the first problem a compiled check reports, naming the field. */
export function firstError(
  check: TypeCheck<TSchema>,
  value: unknown,
  prefix = "",
): ValidationError | undefined {
  // Check() is the compiled fast path; Errors() walks the schema and is only for failures.
  if (check.Check(value)) return undefined;
  let first = check.Errors(value).First();
  if (!first) return undefined;
  if (first.type === ValueErrorType.Union) first = narrowUnion(first);
  const rule = typeErrors.has(first.type)
    ? "type"
    : (ruleNames[first.type] ?? ValueErrorType[first.type] ?? "schema");
  const field = dotted(first.path, prefix) || prefix || "(event)";
  const got = first.type === ValueErrorType.ObjectRequiredProperty ? "" : `; got ${show(first.value)}`;
  return new ValidationError(field, rule, `\`${field}\` ${sentence(first)}${got}.`);
}

/** Where a value holds something PostgreSQL cannot store, and what it is. */
export interface UnstorableValue {
  /** Dotted path, e.g. `content.data.note` (a bad object key names the key itself). */
  path: string;
  /** `nul`, `surrogate` or `unsafeInteger`. */
  rule: "nul" | "surrogate" | "unsafeInteger";
  /** Why, as the end of a sentence starting with the field's name. */
  reason: string;
}

/** An unpaired surrogate half (no `u` flag: the regex must see UTF-16 code units). */
const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function unstorableString(text: string): Pick<UnstorableValue, "rule" | "reason"> | undefined {
  // jsonb and text refuse U+0000; jsonb refuses an unpaired UTF-16 surrogate half.
  if (text.includes("\u0000")) return { rule: "nul", reason: "must not contain U+0000 (NUL)" };
  if (loneSurrogate.test(text)) {
    return { rule: "surrogate", reason: "must not contain a lone UTF-16 surrogate (invalid Unicode)" };
  }
  return undefined;
}

/** `path.key`, or `key` at the top (the path format of UnstorableValue). */
const joinPath = (path: string, key: string): string => (path ? `${path}.${key}` : key);

/**
 * Where `findUnstorableValue` found a bad value: the path segments below the start,
 * innermost first (added while the search unwinds, so that a clean value, the
 * common case, builds no path strings at all).
 */
interface Found {
  segments: string[];
  /** The bad thing is an object key (its segment is the key itself), not a value. */
  isKey: boolean;
  bad: Pick<UnstorableValue, "rule" | "reason">;
}

const unsafeInteger: Pick<UnstorableValue, "rule" | "reason"> = {
  rule: "unsafeInteger",
  reason: `must be an integer between -${Number.MAX_SAFE_INTEGER} and ${Number.MAX_SAFE_INTEGER} (2^53-1)`,
};

function findUnstorable(value: unknown): Found | undefined {
  if (typeof value === "string") {
    const bad = unstorableString(value);
    return bad && { segments: [], isKey: false, bad };
  }
  if (typeof value === "number") {
    if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
      return { segments: [], isKey: false, bad: unsafeInteger };
    }
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findUnstorable(value[i]);
      if (found) {
        found.segments.push(String(i));
        return found;
      }
    }
    return undefined;
  }
  // for-in with hasOwn visits what Object.entries would (own enumerable string keys,
  // in the same order) without allocating an array per object: this runs for every
  // consumed event (decodeRecord), where those arrays and the eager path strings
  // were a tenth of the runtime's allocations in the no-op benchmark.
  const object = value as Record<string, unknown>;
  for (const key in object) {
    if (!Object.hasOwn(object, key)) continue;
    const badKey = unstorableString(key);
    if (badKey) return { segments: [JSON.stringify(key).slice(1, -1)], isKey: true, bad: badKey };
    const found = findUnstorable(object[key]);
    if (found) {
      found.segments.push(key);
      return found;
    }
  }
  return undefined;
}

/**
 * The first string (value or object key) holding U+0000 or a lone surrogate, or
 * integer beyond 2^53-1, anywhere in `value`: what the schemas cannot say about
 * free-form data such as custom content, and what PostgreSQL would refuse after
 * Kafka had already accepted the event (a poison record). Depth-first, bounded by
 * the value itself (request bodies are size-limited before they get here).
 */
export function findUnstorableValue(value: unknown, path = ""): UnstorableValue | undefined {
  const found = findUnstorable(value);
  if (!found) return undefined;
  let at = path;
  for (let i = found.segments.length - 1; i >= 0; i--) at = joinPath(at, found.segments[i]!);
  return { path: found.isKey ? at : at || "(value)", ...found.bad };
}

/**
 * Checks an event's data against its type's schema; throws a ValidationError that
 * names the first bad field (relative to the event, e.g. `content.text`), with
 * `prefix` before it when given (e.g. `items[3]` in `sendMany`).
 */
export function validateEventData(type: string, data: unknown, prefix = ""): asserts type is ChatEventType {
  const check = Object.hasOwn(compiled, type)
    ? (compiled as Record<string, TypeCheck<TSchema>>)[type]
    : undefined;
  if (!check) {
    const field = prefix ? `${prefix}.type` : "type";
    throw new ValidationError(
      field,
      "enum",
      `\`${field}\` must be one of ${Object.keys(compiled).join(", ")}; got ${show(type)}.`,
    );
  }
  const error = firstError(check, data, prefix);
  if (error) throw error;
  const unstorable = findUnstorableValue(data, prefix);
  if (unstorable) {
    throw new ValidationError(
      unstorable.path,
      unstorable.rule,
      `\`${unstorable.path}\` ${unstorable.reason}.`,
    );
  }
}
