/**
 * Request validation with the event contract's own library (TypeBox 0.34, the one
 * `@chatbus/producer-sdk` builds its schemas with), so that a route schema, the
 * SDK's send-time check and the OpenAPI document are the same objects.
 *
 * Bodies are checked as sent: no type coercion and no silent removal of unknown
 * fields (fastify's default AJV does both). Query strings and path parameters are
 * strings on the wire, so they are converted first (`"20"` → 20).
 */

import { findUnstorableValue } from "@chatbus/producer-sdk";
import type { TSchema } from "@sinclair/typebox";
import { type TypeCheck, TypeCompiler } from "@sinclair/typebox/compiler";
import { type ValueError, ValueErrorType } from "@sinclair/typebox/errors";
import { FormatRegistry } from "@sinclair/typebox/type";
import { Value } from "@sinclair/typebox/value";
import type { FastifySchemaCompiler } from "fastify";
import { invalidField } from "./errors.ts";

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// TypeBox checks a `format` only when it is registered; MessageId uses `uuid`.
if (!FormatRegistry.Has("uuid")) FormatRegistry.Set("uuid", (value) => uuidPattern.test(value));

const partNames: Record<string, string> = {
  body: "body field",
  querystring: "query parameter",
  params: "path parameter",
  headers: "header",
};

/** Every error, including those nested in unions, depth first. */
function* flatten(errors: Iterable<ValueError>): Generator<ValueError> {
  for (const error of errors) {
    yield error;
    for (const nested of error.errors ?? []) yield* flatten(nested);
  }
}

/**
 * The most useful error: the deepest path (inside a union, the branch that got
 * furthest), preferring a concrete rule over "did not match the union".
 */
export function pickError(errors: Iterable<ValueError>): ValueError | undefined {
  let best: ValueError | undefined;
  const depth = (e: ValueError) => e.path.split("/").length;
  for (const error of flatten(errors)) {
    if (!best) {
      best = error;
      continue;
    }
    const deeper = depth(error) > depth(best);
    const sameButConcrete =
      depth(error) === depth(best) &&
      best.type === ValueErrorType.Union &&
      error.type !== ValueErrorType.Union &&
      error.type !== ValueErrorType.Literal;
    if (deeper || sameButConcrete) best = error;
  }
  return best;
}

/** `/content/text` → `content.text`. */
export function dottedPath(path: string): string {
  return path.split("/").filter(Boolean).join(".");
}

function describe(error: ValueError): string {
  if (error.type === ValueErrorType.ObjectAdditionalProperties) return "is not a known field; remove it";
  if (error.type === ValueErrorType.ObjectRequiredProperty) return "is required";
  if (error.type === ValueErrorType.Union && error.schema.anyOf?.every((s: TSchema) => "const" in s)) {
    return `must be one of ${error.schema.anyOf.map((s: TSchema) => JSON.stringify(s.const)).join(", ")}`;
  }
  return error.message.charAt(0).toLowerCase() + error.message.slice(1);
}

/** Fastify validator compiler: TypeBox checks, errors become 400s naming the field. */
export const validatorCompiler: FastifySchemaCompiler<TSchema> = ({ schema, httpPart }) => {
  const check: TypeCheck<TSchema> = TypeCompiler.Compile(schema);
  const part = httpPart ?? "body";
  return (input: unknown) => {
    const value = part === "body" ? input : Value.Convert(schema, input);
    if (check.Check(value)) {
      // What no schema says: U+0000, lone surrogates and unsafe integers anywhere (custom data too).
      const unstorable = findUnstorableValue(value);
      if (!unstorable) return { value };
      const where = partNames[part] ?? part;
      return {
        error: invalidField(unstorable.path, `${where} \`${unstorable.path}\` ${unstorable.reason}.`),
      };
    }
    const error = pickError(check.Errors(value));
    const field = error ? dottedPath(error.path) : "";
    const shown = field || "(body)";
    const got =
      error?.value === undefined
        ? "nothing"
        : (JSON.stringify(error.value) ?? String(error.value)).slice(0, 60) +
          ((JSON.stringify(error.value)?.length ?? 0) > 60 ? "…" : "");
    const where = partNames[part] ?? part;
    const message = `${where} \`${shown}\` ${error ? describe(error) : "is invalid"}; got ${got}.`;
    return { error: invalidField(shown, message) };
  };
};
