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
}
