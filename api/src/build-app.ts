import { type ApiApp, type ApiDeps, buildBaseApp } from "./app.ts";
import { registerConversationRoutes } from "./routes/conversations.ts";
import { registerDevLogin } from "./routes/dev-login.ts";
import { registerMessageRoutes } from "./routes/messages.ts";

/**
 * Builds the whole API (without listening): error format, auth, `/docs`, metrics,
 * health, and every `/v1` route. `POST /v1/dev/login` exists only outside production.
 */
export async function buildApp(deps: ApiDeps): Promise<ApiApp> {
  const app = await buildBaseApp(deps);
  if (deps.config.nodeEnv !== "production") registerDevLogin(app);
  registerConversationRoutes(app, deps);
  registerMessageRoutes(app, deps);
  return app;
}
