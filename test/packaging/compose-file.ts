/**
 * Reads compose.yaml as `docker compose` does: variable interpolation (`${VAR}`,
 * `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `$$`),
 * then YAML with merge keys (`<<: *anchor`). Enough of the Compose specification's
 * interpolation rules to test the file without a Docker engine.
 */
import { readFileSync } from "node:fs";
import { parse } from "yaml";

/** A `${VAR:?message}` whose variable is unset: compose refuses to start with `message`. */
export class MissingVariableError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
  }
}

const reference = /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g;

/** Substitutes variables in `text` from `env`, as compose does before parsing. */
export function interpolate(text: string, env: Record<string, string | undefined>): string {
  return text.replace(
    reference,
    (whole, braced?: string, operator?: string, argument?: string, bare?: string) => {
      if (whole === "$$") return "$";
      const name = (braced ?? bare) as string;
      const value = env[name];
      const unsetOrEmpty = value === undefined || value === "";
      switch (operator) {
        case ":-":
          return unsetOrEmpty ? (argument ?? "") : value;
        case "-":
          return value === undefined ? (argument ?? "") : value;
        case ":?":
          if (unsetOrEmpty) throw new MissingVariableError(name, argument ?? "required");
          return value;
        case "?":
          if (value === undefined) throw new MissingVariableError(name, argument ?? "required");
          return value;
        default:
          return value ?? "";
      }
    },
  );
}

/** Every variable name compose.yaml refers to, with the operator it uses. */
export function referencedVariables(text: string): { name: string; operator: string; argument: string }[] {
  const found: { name: string; operator: string; argument: string }[] = [];
  for (const match of text.matchAll(reference)) {
    if (match[0] === "$$") continue;
    found.push({
      name: (match[1] ?? match[4]) as string,
      operator: match[2] ?? "",
      argument: match[3] ?? "",
    });
  }
  return found;
}

/** compose.yaml interpolated with `env` and parsed. */
export function loadCompose(path: string, env: Record<string, string | undefined>): Record<string, unknown> {
  const text = readFileSync(path, "utf8")
    .split("\n")
    // Comments are not interpolated by compose.
    .filter((line) => !line.trimStart().startsWith("#"))
    .join("\n");
  return parse(interpolate(text, env), { merge: true }) as Record<string, unknown>;
}
