/**
 * The operator commands' HTTP client: `CHATBUS_API_URL` (default
 * http://127.0.0.1:3000) with `CHATBUS_OPERATOR_KEY`; each action is sent with
 * `X-Chatbus-Operator: $USER` so the API records who did it.
 *
 * The operator key travels in a header, so a plain `http://` URL to another host
 * would hand it to anyone on the path: such URLs are refused unless the operator
 * passes `--insecure` (loopback addresses never leave the machine and are allowed).
 */
import { userInfo } from "node:os";
import { CliError } from "../errors.ts";

/** What the commands need from the environment. */
export interface OperatorEnv {
  apiUrl: string;
  operatorKey: string;
  operator: string;
}

/** True for localhost, 127.0.0.0/8 and ::1: traffic that never leaves the machine. */
function isLoopback(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  return (
    host === "localhost" ||
    host.endsWith(".localhost") ||
    host === "::1" ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
  );
}

/**
 * Checks CHATBUS_API_URL: `https://` anywhere, `http://` only to a loopback address
 * unless `insecure`. Returns the URL without trailing slashes.
 */
export function checkApiUrl(raw: string, insecure: boolean): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CliError(
      `CHATBUS_API_URL is not a URL: ${JSON.stringify(raw)} (e.g. https://chatbus.example.com).`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CliError(
      `CHATBUS_API_URL must start with https:// (or http:// for this machine); got ${url.protocol}//.`,
    );
  }
  if (url.protocol === "http:" && !isLoopback(url.hostname) && !insecure) {
    throw new CliError(
      `refusing to send the operator key in clear text to ${url.origin}: use https:// in CHATBUS_API_URL, ` +
        "or pass --insecure if this network is trusted.",
    );
  }
  return raw.replace(/\/+$/, "");
}

/** Reads CHATBUS_API_URL, CHATBUS_OPERATOR_KEY and the operator's name; see `checkApiUrl` for `insecure`. */
export function operatorEnv(
  env: NodeJS.ProcessEnv = process.env,
  options: { insecure?: boolean } = {},
): OperatorEnv {
  const operatorKey = env.CHATBUS_OPERATOR_KEY;
  if (!operatorKey) {
    throw new CliError("CHATBUS_OPERATOR_KEY is not set; export the API's operator key to use this command.");
  }
  let operator = env.CHATBUS_OPERATOR ?? env.USER;
  if (!operator) {
    try {
      operator = userInfo().username;
    } catch {
      operator = "cli";
    }
  }
  return {
    apiUrl: checkApiUrl(env.CHATBUS_API_URL ?? "http://127.0.0.1:3000", options.insecure ?? false),
    operatorKey,
    operator,
  };
}

/** Calls the API; resolves with the JSON body, or throws a CliError with the API's message. */
export async function callApi<T>(
  env: OperatorEnv,
  method: "GET" | "POST",
  path: string,
  body?: unknown,
): Promise<T> {
  let res: Response;
  try {
    res = await fetch(`${env.apiUrl}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${env.operatorKey}`,
        "x-chatbus-operator": env.operator,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(15_000),
    });
  } catch (error) {
    throw new CliError(
      `the API at ${env.apiUrl} did not answer (${(error as Error).message}); start it or set CHATBUS_API_URL.`,
      { retryable: true, cause: error },
    );
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new CliError(`the API at ${env.apiUrl} answered ${res.status} with something that is not JSON.`, {
      retryable: res.status >= 500,
    });
  }
  if (!res.ok) {
    const error = (json as { error?: { code?: string; message?: string } }).error;
    throw new CliError(`${error?.code ?? `HTTP ${res.status}`}: ${error?.message ?? text.slice(0, 200)}`, {
      retryable: res.status === 429 || res.status >= 500,
    });
  }
  return json as T;
}
