/** Calls to the API with the session's token; a 401 ends the session. */
import { ApiRequestError, apiRequest } from "../http.ts";
import { token } from "./state.ts";

let sessionEnded: (message: string) => void = () => {};

/** Sets what happens when the API says the token is no longer valid (the session module logs out). */
export function onSessionEnded(handler: (message: string) => void): void {
  sessionEnded = handler;
}

/** An API request with the user token. */
export function call<T>(path: string, options: Parameters<typeof apiRequest>[1] = {}): Promise<T> {
  return apiRequest<T>(path, { ...options, token: token() }).catch((error: unknown) => {
    if (error instanceof ApiRequestError && error.status === 401)
      sessionEnded("Your session ended; log in again.");
    throw error;
  });
}

export function conversationPath(id: string): string {
  return `/v1/conversations/${encodeURIComponent(id)}`;
}

/** A client message id (not crypto.randomUUID: that needs a secure context). */
export function newClientMsgId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `web-${Date.now().toString(36)}-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}
