/**
 * `chatbus dead-letters list|show|replay|discard`: dead letters over the HTTP API.
 * Exit codes: 0 done, 1 failed (one line on stderr), 2 bad usage.
 */
import { parseArgs } from "node:util";
import { CliError, UsageError } from "../errors.ts";
import { callApi, type OperatorEnv, operatorEnv } from "./operator-client.ts";
import { renderTable } from "./table.ts";

/** One line for `chatbus --help`. */
export const summary = "list, show, replay or discard dead letters (operator key)";

const usage = `usage: chatbus dead-letters <command> [options]

commands:
  list [--subscription S] [--status waiting|replaying|replayed|discarded] [--limit N] [--cursor ID] [--json]
  list --all [--subscription S] [--status ...] [--json]   every page, newest first, each dead letter once
  show <id> [--json]
  replay <id>                       replay one waiting dead letter to its subscription
  replay --all --subscription S     replay every waiting dead letter of a subscription
  discard <id> [--reason TEXT]      mark it discarded (kept, recorded with who and why)

options:
  --insecure            allow a plain http:// CHATBUS_API_URL to another host (the key travels in clear)

environment:
  CHATBUS_API_URL       the API (default http://127.0.0.1:3000; https:// unless on this machine)
  CHATBUS_OPERATOR_KEY  the operator key (required)
  CHATBUS_OPERATOR      your name as recorded with replays and discards (default $USER)

exit codes: 0 done, 1 failed, 2 bad usage`;

interface DeadLetterJson {
  id: string;
  subscription: string;
  status: string;
  failureClass: string;
  errorCode: string;
  errorMessage: string;
  attempts: number;
  eventType: string | null;
  conversationId: string | null;
  partition: number;
  offset: string;
  lastFailedAt: string;
  statusChangedBy: string | null;
  statusReason: string | null;
  replayCount: number;
  lastReplayError: string | null;
}

function printDeadLetters(items: DeadLetterJson[]): void {
  console.log(
    renderTable(
      [
        "ID",
        "SUBSCRIPTION",
        "STATUS",
        "CLASS",
        "TYPE",
        "CONVERSATION",
        "P:OFFSET",
        "TRIES",
        "LAST FAILED",
        "ERROR",
      ],
      items.map((d) => [
        d.id,
        d.subscription,
        d.status,
        d.failureClass,
        d.eventType,
        d.conversationId,
        `${d.partition}:${d.offset}`,
        d.attempts,
        d.lastFailedAt.replace("T", " ").slice(0, 19),
        `${d.errorCode}: ${d.errorMessage}`,
      ]),
      48,
    ),
  );
}

/**
 * Follows `nextCursor` from the first page (or `--cursor`) to the last, 1000 at a
 * time unless `--limit` says otherwise, with progress on stderr. The API's cursor
 * visits every dead letter that existed when the walk began exactly once.
 */
async function listAll(
  env: OperatorEnv,
  query: URLSearchParams,
): Promise<{ items: DeadLetterJson[]; nextCursor: null }> {
  const items: DeadLetterJson[] = [];
  if (!query.has("limit")) query.set("limit", "1000");
  for (;;) {
    const page = await callApi<{ items: DeadLetterJson[]; nextCursor: string | null }>(
      env,
      "GET",
      `/v1/dead-letters?${query}`,
    );
    items.push(...page.items);
    if (!page.nextCursor) return { items, nextCursor: null };
    process.stderr.write(`fetched ${items.length} dead letters…\n`);
    query.set("cursor", page.nextCursor);
  }
}

function requireId(value: string | undefined): string {
  if (!value || !/^\d{1,19}$/.test(value)) throw new UsageError("give the dead letter's numeric id");
  return value;
}

/** Runs the subcommand; resolves with the exit code. */
export async function run(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  const parse = () =>
    parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        help: { type: "boolean", short: "h" },
        json: { type: "boolean" },
        all: { type: "boolean" },
        subscription: { type: "string" },
        status: { type: "string" },
        limit: { type: "string" },
        cursor: { type: "string" },
        reason: { type: "string" },
        insecure: { type: "boolean" },
      },
    });
  try {
    parsed = parse();
  } catch (error) {
    console.error(`chatbus dead-letters: ${(error as Error).message}\n\n${usage}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, id] = positionals;
  if (values.help || !command) {
    console.log(usage);
    return values.help ? 0 : 2;
  }
  try {
    if (!["list", "show", "replay", "discard"].includes(command))
      throw new UsageError(`unknown command "${command}"`);
    const env = operatorEnv(process.env, { insecure: values.insecure ?? false });
    switch (command) {
      case "list": {
        if (values.limit !== undefined && !/^\d+$/.test(values.limit))
          throw new UsageError("--limit must be a number");
        const query = new URLSearchParams();
        for (const key of ["subscription", "status", "limit", "cursor"] as const) {
          if (values[key] !== undefined) query.set(key, values[key]);
        }
        const page = values.all
          ? await listAll(env, query)
          : await callApi<{ items: DeadLetterJson[]; nextCursor: string | null }>(
              env,
              "GET",
              `/v1/dead-letters${query.size ? `?${query}` : ""}`,
            );
        if (values.json) console.log(JSON.stringify(page, null, 2));
        else if (page.items.length === 0) console.log("no dead letters match.");
        else {
          printDeadLetters(page.items);
          if (page.nextCursor)
            console.log(`\nmore: chatbus dead-letters list --cursor ${page.nextCursor} ...`);
        }
        return 0;
      }
      case "show": {
        const d = await callApi<DeadLetterJson & Record<string, unknown>>(
          env,
          "GET",
          `/v1/dead-letters/${requireId(id)}`,
        );
        if (values.json) console.log(JSON.stringify(d, null, 2));
        else {
          console.log(
            renderTable(
              ["FIELD", "VALUE"],
              Object.entries(d).map(([k, v]) => [
                k,
                typeof v === "object" && v !== null ? JSON.stringify(v) : v,
              ]),
              100,
            ),
          );
        }
        return 0;
      }
      case "replay": {
        if (values.all) {
          if (!values.subscription) throw new UsageError("replay --all needs --subscription");
          const result = await callApi<{ count: number }>(env, "POST", "/v1/dead-letters/replay", {
            subscription: values.subscription,
          });
          console.log(`replaying ${result.count} dead letter(s) of ${values.subscription}.`);
          return 0;
        }
        const d = await callApi<DeadLetterJson>(env, "POST", `/v1/dead-letters/${requireId(id)}/replay`);
        console.log(`dead letter ${d.id} is ${d.status} (requested by ${d.statusChangedBy}).`);
        return 0;
      }
      case "discard": {
        const d = await callApi<DeadLetterJson>(
          env,
          "POST",
          `/v1/dead-letters/${requireId(id)}/discard`,
          values.reason === undefined ? {} : { reason: values.reason },
        );
        console.log(`dead letter ${d.id} is ${d.status} (by ${d.statusChangedBy}).`);
        return 0;
      }
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`chatbus dead-letters: ${error.message}\n\n${usage}`);
      return 2;
    }
    if (error instanceof CliError) {
      console.error(`chatbus dead-letters: ${error.message}`);
      return 1;
    }
    throw error;
  }
}
