/**
 * `buildApp(deps)`: the fastify application without `listen`, so that tests use
 * `inject` where sockets are not the point and `main.ts` owns the process.
 */
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import type { ProjectionReader } from "@chatbus/consumer-runtime/materialiser";
import { ChatBusError, RateLimitedError, ValidationError } from "@chatbus/producer-sdk";
import fastifyJwt from "@fastify/jwt";
import fastifySwagger from "@fastify/swagger";
import fastifySwaggerUi from "@fastify/swagger-ui";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
  type RawReplyDefaultExpression,
  type RawRequestDefaultExpression,
  type RawServerDefault,
} from "fastify";
import type pg from "pg";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import { installAuth } from "./auth.ts";
import type { ApiConfig } from "./config.ts";
import { ApiError } from "./errors.ts";
import { type ApiMetrics, createApiMetrics } from "./metrics.ts";
import { validatorCompiler } from "./request-validation.ts";
import type { EventSender } from "./types.ts";
import type { WriteLimiter } from "./write-limits.ts";

/** A readiness probe of one dependency: resolves when healthy, rejects with the reason. */
export type ReadinessCheck = () => Promise<void>;

/** Everything the app needs, passed in (no globals). */
export interface ApiDeps {
  config: ApiConfig;
  logger: Logger;
  /** Registry the API's metrics register on; `/metrics` serves it. */
  registry: Registry;
  /** Where events are sent (the producer SDK's bus). */
  bus: EventSender;
  /** Readiness probes by dependency name, e.g. `{ kafka, postgresql }`. */
  readiness: Record<string, ReadinessCheck>;
  /**
   * Facts `/readyz` reports under `details` without failing readiness, e.g. the chat
   * topic's retention (a topic that deletes records still serves, but an operator
   * must know). A detail that throws is shown as its error message.
   */
  readinessDetails?: Record<string, () => Promise<unknown>>;
  /** The materialised projection (conversations, members, messages, event log). */
  projection: ProjectionReader;
  /** The chatbus database (dead letters, subscription status), for the operator routes. */
  pool: pg.Pool;
  /**
   * Realtime (SSE): the projection's pool, a connection string for the LISTEN
   * client and the materialiser's channel (`eventsChannel(schema)`). Without it
   * `/v1/me/events` is not served.
   */
  realtime?: { pool: pg.Pool; databaseUrl: string; channel: string };
  /** Write rate limits; by default the PostgreSQL-backed limiter on `pool` (write-limits.ts). */
  writeLimiter?: WriteLimiter;
}

/** The API's fastify instance with the TypeBox type provider. */
export type ApiApp = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  TypeBoxTypeProvider
> & { metrics: ApiMetrics };

/** A query parameter, its name as sent (possibly percent-encoded) and its value. */
const queryParameter = /([?&])([^=&#]*)(=?)([^&#]*)/g;

function decodedName(name: string): string {
  try {
    return decodeURIComponent(name.replaceAll("+", " "));
  } catch {
    return name;
  }
}

/**
 * The request line as logged: the SSE token is cut out of the query string. Names
 * are compared decoded, as fastify's parser reads them, so `access%5Ftoken=` (which
 * authenticates just the same) is redacted too.
 */
export function redactUrl(url: string): string {
  return url.replace(queryParameter, (whole, sep: string, name: string, eq: string) =>
    decodedName(name).toLowerCase() === "access_token" ? `${sep}${name}${eq}[redacted]` : whole,
  );
}

/** The standard error body. */
export function errorBody(code: string, message: string, field?: string) {
  return { error: field === undefined ? { code, message } : { code, message, field } };
}

function sendError(reply: FastifyReply, status: number, code: string, message: string, field?: string) {
  return reply
    .status(status)
    .type("application/json")
    .send(errorBody(code, message, field));
}

function handleError(error: unknown, request: FastifyRequest, reply: FastifyReply) {
  if (error instanceof ApiError) {
    if (error.statusCode === 429) {
      const ms = (error as ApiError & { retryAfterMs?: number }).retryAfterMs ?? 1000;
      reply.header("retry-after", String(Math.max(1, Math.ceil(ms / 1000))));
    }
    return sendError(reply, error.statusCode, error.code, error.message, error.field);
  }
  if (error instanceof ValidationError) {
    return sendError(reply, 400, error.code, error.message, error.field);
  }
  if (error instanceof RateLimitedError) {
    reply.header("retry-after", String(Math.max(1, Math.ceil(error.retryAfterMs / 1000))));
    return sendError(reply, 429, error.code, error.message);
  }
  if (error instanceof ChatBusError && error.retryable) {
    request.log.warn({ err: error }, "dependency unavailable");
    return sendError(reply, 503, error.code, error.message);
  }
  const fastifyError = error as FastifyError;
  switch (fastifyError.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return sendError(
        reply,
        413,
        "CHATBUS_PAYLOAD_TOO_LARGE",
        `the request body is larger than the limit of ${request.routeOptions.bodyLimit ?? "the configured"} bytes; send less.`,
        "(body)",
      );
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return sendError(
        reply,
        415,
        "CHATBUS_UNSUPPORTED_MEDIA_TYPE",
        "send the body as JSON with `Content-Type: application/json`.",
      );
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      return sendError(reply, 400, "CHATBUS_VALIDATION", "the request body is not valid JSON.", "(body)");
  }
  if (typeof fastifyError.statusCode === "number" && fastifyError.statusCode < 500) {
    return sendError(reply, fastifyError.statusCode, "CHATBUS_BAD_REQUEST", fastifyError.message);
  }
  request.log.error({ err: error }, "unhandled error");
  return sendError(
    reply,
    500,
    "CHATBUS_INTERNAL",
    `the server failed to handle the request; quote request id ${request.id} when reporting it.`,
  );
}

/** Builds the app: plugins, auth, error format, docs, metrics, health. Routes are added by `registerRoutes`. */
export async function buildBaseApp(deps: ApiDeps): Promise<ApiApp> {
  const { config } = deps;
  const logger = deps.logger.child(
    {},
    {
      serializers: {
        req: (req: { method: string; url: string; ip?: string }) => ({
          method: req.method,
          url: redactUrl(req.url),
          remoteAddress: req.ip,
        }),
      },
    },
  );
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    bodyLimit: config.bodyLimitBytes,
    // A caller's X-Request-Id is kept when it looks like an id (it ends up in every log line).
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers["x-request-id"];
      return typeof given === "string" && /^[A-Za-z0-9._:-]{1,128}$/.test(given) ? given : randomUUID();
    },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
    // One line per request instead of fastify's two: see the onResponse hook.
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { maxParamLength: 20_000 },
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  const metrics = createApiMetrics(deps.registry);
  app.decorate("metrics", metrics);

  // Callback hooks, not async ones: no promise per request on every route.
  app.addHook("onSend", (request, reply, payload, done) => {
    reply.header("x-request-id", request.id);
    done(null, payload);
  });
  app.addHook("onResponse", (request, reply, done) => {
    const sse = request.routeOptions.config.sse === true;
    // A stream's lifetime is not a request duration; its opening is logged by the route.
    if (!sse) {
      metrics.httpDuration.observe(
        {
          method: request.method,
          route: request.routeOptions.url ?? "unmatched",
          status_code: String(reply.statusCode),
        },
        reply.elapsedTime / 1000,
      );
    }
    if ((!sse || reply.statusCode !== 200) && (request.log as unknown as Logger).isLevelEnabled("info")) {
      // The one access-log line (decisions.md, issue 16): what fastify's "incoming request"
      // line said (method, redacted url, address) plus status and time.
      request.log.info(
        { req: request, res: { statusCode: reply.statusCode }, responseTime: reply.elapsedTime },
        "request completed",
      );
    }
    done();
  });

  app.setErrorHandler(handleError);
  app.setNotFoundHandler((request, reply) =>
    sendError(
      reply,
      404,
      "CHATBUS_NOT_FOUND",
      `no route ${request.method} ${redactUrl(request.url).split("?")[0]}.`,
    ),
  );

  await app.register(fastifyJwt, {
    secret: config.jwtSecret,
    // @fastify/jwt reads a numeric expiresIn as seconds (×1000 made 1 h tokens last 41 days).
    sign: { algorithm: "HS256", expiresIn: config.tokenTtlSeconds },
    // Remember verified tokens (fast-jwt's LRU, keyed by the token's SHA-256): a client
    // sends the same token on every request, and the HMAC and JSON decode were the
    // auth hook's largest cost on the send path. An entry never outlives the token's
    // `exp` (nor 10 minutes); refusals are remembered too, so a bad token stays bad.
    verify: { algorithms: ["HS256"], cache: 10_000 },
  });
  installAuth(app, config);

  await app.register(fastifySwagger, {
    openapi: {
      info: {
        title: "chatbus HTTP API",
        version: "1",
        description:
          "Send chat events, read history and inboxes, receive events live over SSE, and operate subscriptions and dead letters.",
      },
      components: {
        securitySchemes: {
          bearer: {
            type: "http",
            scheme: "bearer",
            description:
              "A user token (POST /v1/dev/login when CHATBUS_DEV_LOGIN=1), a service key or the operator key.",
          },
        },
      },
      security: [{ bearer: [] }],
    },
  });
  await app.register(fastifySwaggerUi, { routePrefix: "/docs" });

  registerHealthRoutes(app, deps);
  return app as unknown as ApiApp;
}

/**
 * `/healthz`, `/readyz` and `/metrics`. Readiness failures and `details` name internal
 * hosts, so only the operator key sees them.
 */
function registerHealthRoutes(app: FastifyInstance, deps: ApiDeps): void {
  app.get("/healthz", { schema: { hide: true } }, async () => ({ status: "ok" }));
  const operatorDigest = createHash("sha256").update(deps.config.operatorKey).digest();
  /** Dependency error text names internal hosts: only the operator key sees it. */
  const isOperator = (request: FastifyRequest): boolean => {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? "");
    if (!match) return false;
    return timingSafeEqual(createHash("sha256").update(match[1]!).digest(), operatorDigest);
  };
  app.get("/readyz", { schema: { hide: true } }, async (request, reply) => {
    const results = await Promise.all(
      Object.entries(deps.readiness).map(async ([name, probe]) => {
        try {
          await probe();
          return { name, ok: true as const };
        } catch (error) {
          return { name, ok: false as const, reason: (error as Error).message };
        }
      }),
    );
    const failed = results.filter((r) => !r.ok);
    const operator = isOperator(request);
    const checks = Object.fromEntries(
      results.map((r) => [r.name, r.ok ? "ok" : operator ? r.reason : "failing"]),
    );
    // `details` (topic retention and the like) only for the operator, and only when the
    // app was given some, so the answer's shape is unchanged otherwise.
    const extra =
      operator && deps.readinessDetails
        ? {
            details: Object.fromEntries(
              await Promise.all(
                Object.entries(deps.readinessDetails).map(async ([name, detail]) => {
                  try {
                    return [name, await detail()] as const;
                  } catch (error) {
                    return [name, { error: (error as Error).message }] as const;
                  }
                }),
              ),
            ),
          }
        : {};
    if (failed.length === 0) return { status: "ready", checks, ...extra };
    return reply.status(503).send({
      status: "not ready",
      checks,
      ...extra,
      error: {
        code: "CHATBUS_NOT_READY",
        message: operator
          ? failed.map((f) => `${f.name}: ${f.reason}`).join("; ")
          : `${failed.map((f) => f.name).join(", ")} not ready; details with the operator key (Authorization: Bearer $CHATBUS_OPERATOR_KEY).`,
      },
    });
  });
  app.get("/metrics", { schema: { hide: true } }, async (_request, reply) => {
    reply.type(deps.registry.contentType);
    return deps.registry.metrics();
  });
}
