/**
 * Logging in (development login), keeping the session in sessionStorage, starting
 * the live connection, and logging out (also when the API says the token ended).
 */
import { byId } from "../element.ts";
import { ApiRequestError, apiRequest } from "../http.ts";
import { LiveEvents, type LiveState } from "../live-events.ts";
import { onSessionEnded } from "./api.ts";
import { openConversation, showConversation } from "./conversation.ts";
import { refreshInbox } from "./inbox.ts";
import { onEvent } from "./live.ts";
import { onPresence } from "./presence.ts";
import { state, token } from "./state.ts";
import type { Session } from "./wire.ts";

const sessionKey = "chatbus.session";
const sessionEndedMessage = "Your session ended; log in again.";

const loginView = byId("login-view");
const loginForm = byId<HTMLFormElement>("login-form");
const loginError = byId("login-error");
const chatView = byId("chat-view");
const meLabel = byId("me");
const connection = byId("connection");

/** The saved session, unless it expires within 10 s. */
export function loadSession(): Session | null {
  try {
    const raw = sessionStorage.getItem(sessionKey);
    if (!raw) return null;
    const session = JSON.parse(raw) as Session;
    return new Date(session.expiresAt).getTime() > Date.now() + 10_000 ? session : null;
  } catch {
    return null;
  }
}

/** The login form and the logout button. */
export function installSession(): void {
  onSessionEnded(logout);
  loginForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const username = String(new FormData(loginForm).get("username") ?? "").trim();
    loginError.textContent = "";
    apiRequest<Session>("/v1/dev/login", { method: "POST", body: { username } }).then(
      (session) => {
        sessionStorage.setItem(sessionKey, JSON.stringify(session));
        start(session);
      },
      (error: ApiRequestError) => {
        loginError.textContent =
          error.status === 404
            ? "Development login is off on this server (production mode)."
            : error.field === "username"
              ? "A username is letters, digits and . _ : @ - (starting with a letter or digit), up to 128 characters."
              : error.message;
      },
    );
  });
  byId("logout").addEventListener("click", () => logout());
}

function logout(message?: string): void {
  state.live?.stop();
  state.live = null;
  state.session = null;
  sessionStorage.removeItem(sessionKey);
  chatView.hidden = true;
  loginView.hidden = false;
  loginError.textContent = message ?? "";
  byId<HTMLInputElement>("username").focus();
}

/** Shows the chat for `session` and opens the live connection. */
export function start(session: Session): void {
  state.session = session;
  loginView.hidden = true;
  chatView.hidden = false;
  meLabel.textContent = session.userId;
  state.inbox = [];
  state.openId = null;
  state.online.clear();
  showConversation(false);
  void refreshInbox();
  state.live = new LiveEvents({
    token,
    onEvent,
    onPresence,
    onReset: () => {
      void refreshInbox();
      if (state.openId) void openConversation(state.openId);
    },
    onResumed: () => void refreshInbox(),
    onState: showLiveState,
    canReconnect,
  });
  state.live.start();
}

/** Before reopening a failed stream: is the token still good? (A 401 logs out.) */
async function canReconnect(): Promise<boolean> {
  try {
    await apiRequest("/v1/me/conversations?limit=1", { token: token() });
    return true;
  } catch (error) {
    if (error instanceof ApiRequestError && error.status === 401) {
      logout(sessionEndedMessage);
      return false;
    }
    throw error;
  }
}

function showLiveState(live: LiveState): void {
  connection.dataset.state = live;
  connection.textContent = live === "live" ? "Live" : live === "connecting" ? "Connecting…" : "Reconnecting…";
}
