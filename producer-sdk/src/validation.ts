import type { TSchema } from "@sinclair/typebox";
import { type TypeCheck, TypeCompiler } from "@sinclair/typebox/compiler";
import { ValueErrorType } from "@sinclair/typebox/errors";
import { ValidationError } from "./errors.ts";
import { type ChatEventType, eventDataSchemas } from "./events.ts";

/** Compiled once at load: validation must stay cheap next to a Kafka round trip. */
const compiled = Object.fromEntries(
  Object.entries(eventDataSchemas).map(([type, schema]) => [type, TypeCompiler.Compile(schema)]),
) as { [T in ChatEventType]: TypeCheck<(typeof eventDataSchemas)[T]> };

const ruleNames: Partial<Record<ValueErrorType, string>> = {
  [ValueErrorType.ObjectRequiredProperty]: "required",
  [ValueErrorType.ObjectAdditionalProperties]: "additionalProperties",
  [ValueErrorType.StringMinLength]: "minLength",
  [ValueErrorType.StringMaxLength]: "maxLength",
  [ValueErrorType.StringPattern]: "pattern",
  [ValueErrorType.StringFormat]: "format",
  [ValueErrorType.ArrayMinItems]: "minItems",
  [ValueErrorType.ArrayMaxItems]: "maxItems",
  [ValueErrorType.ArrayUniqueItems]: "uniqueItems",
  [ValueErrorType.IntegerMinimum]: "minimum",
  [ValueErrorType.NumberMinimum]: "minimum",
  [ValueErrorType.Union]: "oneOf",
  [ValueErrorType.Literal]: "const",
};

/** `/content/text` → `content.text`, with an optional prefix such as `data`. */
function dotted(path: string, prefix: string): string {
  const parts = path.split("/").filter(Boolean);
  return [prefix, ...parts].filter(Boolean).join(".");
}

/** A ValidationError for the first problem a compiled check reports, naming the field. */
export function firstError(
  check: TypeCheck<TSchema>,
  value: unknown,
  prefix = "",
): ValidationError | undefined {
  const first = check.Errors(value).First();
  if (!first) return undefined;
  const rule = ruleNames[first.type] ?? ValueErrorType[first.type] ?? "schema";
  const field = dotted(first.path, prefix) || "(event)";
  const got = first.value === undefined ? "nothing" : JSON.stringify(first.value)?.slice(0, 60);
  return new ValidationError(field, rule, `\`${field}\` ${first.message}; got ${got}.`);
}

/**
 * Checks an event's data against its type's schema; throws a ValidationError that
 * names the first bad field (relative to the event, e.g. `content.text`).
 */
export function validateEventData(type: string, data: unknown): asserts type is ChatEventType {
  const check = (compiled as Record<string, TypeCheck<TSchema>>)[type];
  if (!check) {
    throw new ValidationError(
      "type",
      "enum",
      `\`type\` must be one of ${Object.keys(compiled).join(", ")}; got ${JSON.stringify(type)?.slice(0, 60)}.`,
    );
  }
  const error = firstError(check, data);
  if (error) throw error;
}
