import { UserId } from "@chatbus/producer-sdk";
import { Type } from "@sinclair/typebox";
import type { ApiApp } from "../app.ts";
import { ErrorResponse } from "./schemas.ts";

/**
 * `POST /v1/dev/login {username}` → `{ token }`: a token for any user name, for
 * development and demos. Registered only when `CHATBUS_DEV_LOGIN=1` (never in
 * production), so otherwise the route is absent (404) rather than merely refused.
 */
export function registerDevLogin(app: ApiApp): void {
  app.post(
    "/v1/dev/login",
    {
      schema: {
        tags: ["auth"],
        summary: "Get a user token for any user name (only with CHATBUS_DEV_LOGIN=1).",
        security: [],
        body: Type.Object({ username: UserId }, { additionalProperties: false }),
        response: {
          200: Type.Object({
            token: Type.String(),
            userId: UserId,
            expiresAt: Type.String({ format: "date-time" }),
          }),
          400: ErrorResponse,
        },
      },
    },
    async (request) => {
      const token = app.jwt.sign({ sub: request.body.username });
      const { exp } = app.jwt.decode<{ exp: number }>(token) ?? { exp: 0 };
      return { token, userId: request.body.username, expiresAt: new Date(exp * 1000).toISOString() };
    },
  );
}
