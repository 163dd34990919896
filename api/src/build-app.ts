import { type ApiApp, type ApiDeps, buildBaseApp } from "./app.ts";
import { HistoryCache } from "./history-cache.ts";
import { MembershipCache } from "./membership-cache.ts";
import { EventHub } from "./realtime/event-hub.ts";
import { registerConversationRoutes } from "./routes/conversations.ts";
import { registerDevLogin } from "./routes/dev-login.ts";
import { registerEventRoutes } from "./routes/events.ts";
import { registerMessageRoutes } from "./routes/messages.ts";
import { registerOperatorRoutes } from "./routes/operator.ts";
import { registerReadRoutes } from "./routes/reads.ts";
import { webPages } from "./web-pages.ts";
import { createWriteLimiter } from "./write-limits.ts";

/**
 * Builds the whole API (without listening): error format, auth, `/docs`, metrics,
 * health, and every `/v1` route. `POST /v1/dev/login` exists only when
 * `config.devLogin` (`CHATBUS_DEV_LOGIN=1`), and never in production. With `deps.realtime` the SSE hub starts here (LISTEN) and stops when
 * the app closes, before the server waits for connections.
 */
export async function buildApp(deps: ApiDeps): Promise<ApiApp> {
  const app = await buildBaseApp(deps);
  const { config } = deps;
  if (config.devLogin && config.nodeEnv !== "production") {
    registerDevLogin(app);
    deps.logger.warn(
      "dev login is on (CHATBUS_DEV_LOGIN=1): POST /v1/dev/login gives anyone a token for any user name; never on a server others can reach.",
    );
  }
  const limits = deps.writeLimiter ?? createWriteLimiter(deps.pool, config.rateLimits, deps.logger);
  app.addHook("onClose", async () => limits.close());
  // Used only while the hub's LISTEN connection is up: without realtime every lookup reads PostgreSQL.
  const membership = new MembershipCache({
    projection: deps.projection,
    maxEntries: config.membershipCacheSize,
    registry: deps.registry,
  });
  // The same: the newest history pages, used only while realtime's LISTEN is up.
  const history = new HistoryCache({
    projection: deps.projection,
    maxBytes: config.historyCacheBytes,
    registry: deps.registry,
  });
  registerConversationRoutes(app, {
    ...deps,
    membership,
    limits,
    maxGroupMembers: config.maxGroupMembers,
  });
  registerMessageRoutes(app, { ...deps, membership, limits });
  registerOperatorRoutes(app, deps);
  registerReadRoutes(app, {
    projection: deps.projection,
    history,
    membership,
    historyMaxLimit: config.historyMaxLimit,
    inboxMaxLimit: config.inboxMaxLimit,
  });
  await app.register(webPages); // the chat page at / and the operations page at /ops
  if (deps.realtime) {
    const hub = new EventHub({
      ...deps.realtime,
      topic: deps.config.topic,
      projection: deps.projection,
      bus: deps.bus,
      logger: deps.logger,
      metrics: app.metrics,
      sse: deps.config.sse,
      listenObservers: [membership, history],
    });
    await hub.start();
    app.addHook("preClose", async () => {
      await hub.stop();
    });
    registerEventRoutes(app, hub);
  }
  return app;
}
