/**
 * Who is calling. Three kinds of credentials, all as `Authorization: Bearer …`:
 *
 * - user tokens: JWTs signed with `CHATBUS_JWT_SECRET` (HS256), expiring after
 *   `tokenTtlSeconds`; `sub` is the user id;
 * - service keys (`CHATBUS_SERVICE_KEYS`): services send on behalf of a `senderId`;
 * - the operator key (`CHATBUS_OPERATOR_KEY`): the operator endpoints only.
 *
 * Browsers' EventSource cannot set headers, so the SSE route alone also accepts the
 * user token as `?access_token=`; the query string is redacted from logs (see app.ts).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance, FastifyRequest } from "fastify";
import type { ApiConfig } from "./config.ts";
import { forbidden, unauthorized } from "./errors.ts";

/** The authenticated caller of a request. */
export type Principal =
  | { kind: "user"; userId: string }
  | { kind: "service"; name: string }
  | { kind: "operator"; name: string };

/** What the credential kinds may do, per route. */
export type Access = "user" | "user-or-service" | "operator";

declare module "fastify" {
  interface FastifyRequest {
    /** Set by the auth hook on routes that declare `config.access`. */
    principal: Principal;
  }
  interface FastifyContextConfig {
    /** Who may call this route; routes without it are public. */
    access?: Access;
    /** Accept the user token as `?access_token=` (SSE only: EventSource cannot set headers). */
    queryToken?: boolean;
    /** A long-lived stream: left out of the request-duration histogram. */
    sse?: boolean;
  }
}

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

/** Constant-time membership test of a credential's digest against a list of secrets'. */
function matchKey(d: Buffer, keys: Buffer[]): number {
  let found = -1;
  keys.forEach((key, index) => {
    if (timingSafeEqual(d, key)) found = index;
  });
  return found;
}

/** The operator's name as recorded with their actions: header `X-Chatbus-Operator`, sanitised. */
function operatorName(request: FastifyRequest): string {
  const raw = request.headers["x-chatbus-operator"];
  const name = typeof raw === "string" ? raw.trim() : "";
  return /^[A-Za-z0-9._@-]{1,64}$/.test(name) ? `operator:${name}` : "operator";
}

function bearer(request: FastifyRequest, allowQuery: boolean): string | undefined {
  const header = request.headers.authorization;
  if (typeof header === "string") {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) throw unauthorized("the Authorization header must be `Bearer <token>`.");
    return match[1];
  }
  if (allowQuery) {
    const token = (request.query as Record<string, unknown> | undefined)?.access_token;
    if (typeof token === "string" && token) return token;
  }
  return undefined;
}

/**
 * Installs the auth hook: every route with `config.access` gets `request.principal`
 * or an error (401 missing/invalid/expired credentials, 403 credentials of the
 * wrong kind). Registered on the root instance.
 */
export function installAuth(app: FastifyInstance, config: ApiConfig): void {
  const serviceKeys = config.serviceKeys.map(digest);
  const operatorKeys = [digest(config.operatorKey)];

  app.decorateRequest("principal", undefined as unknown as { getter(): Principal });
  app.addHook("onRequest", async (request) => {
    const access = request.routeOptions.config.access;
    if (!access) return;
    const token = bearer(request, request.routeOptions.config.queryToken === true);
    if (!token) {
      throw unauthorized("this route needs credentials: send `Authorization: Bearer <token>`.");
    }
    const tokenDigest = digest(token); // once: both key lists compare digests
    const operator = matchKey(tokenDigest, operatorKeys) >= 0;
    const service = matchKey(tokenDigest, serviceKeys);
    if (access === "operator") {
      if (operator) {
        request.principal = { kind: "operator", name: operatorName(request) };
        return;
      }
      if (service >= 0 || looksLikeJwt(token)) {
        if (service < 0) verifyUser(app, token); // an invalid token is still a 401, not a 403
        throw forbidden("this route needs the operator key (CHATBUS_OPERATOR_KEY).");
      }
      throw unauthorized("the operator key is not valid.");
    }
    if (service >= 0) {
      if (access === "user-or-service") {
        request.principal = { kind: "service", name: `service#${service + 1}` };
        return;
      }
      throw forbidden("service keys may only send; this route needs a user token.");
    }
    if (operator)
      throw forbidden("the operator key only opens the operator routes; this route needs a user token.");
    request.principal = { kind: "user", userId: verifyUser(app, token) };
  });
}

function looksLikeJwt(token: string): boolean {
  return token.split(".").length === 3;
}

function verifyUser(app: FastifyInstance, token: string): string {
  let payload: { sub?: unknown };
  try {
    payload = app.jwt.verify<{ sub?: unknown }>(token);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === "FAST_JWT_EXPIRED") {
      throw unauthorized("the token has expired; log in again for a new one.", "CHATBUS_TOKEN_EXPIRED");
    }
    throw unauthorized("the token is not valid (bad signature or malformed); log in again.");
  }
  if (typeof payload.sub !== "string" || !payload.sub) {
    throw unauthorized("the token names no user (`sub`); log in again.");
  }
  return payload.sub;
}
