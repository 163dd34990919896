/**
 * `chatbus subscriptions [skip <subscription> <partition> <offset>]`: each
 * subscription's state, breaker, lag, events in flight, the records it is stuck on
 * and dead letters waiting, over the HTTP API; `skip` asks the subscription to turn a
 * stuck record into a dead letter of class `operator` and waits (with progress) until
 * the owning instance applied it. Exit codes: 0 done, 1 failed (or not applied in
 * time), 2 bad usage.
 */
import { parseArgs } from "node:util";
import { CliError, UsageError } from "../errors.ts";
import { callApi, type OperatorEnv, operatorEnv } from "./operator-client.ts";
import { renderTable } from "./table.ts";

/** One line for `chatbus --help`. */
export const summary =
  "show subscriptions (state, breaker, lag, in flight, stuck records); skip a stuck record (operator key)";

const usage = `usage: chatbus subscriptions [--partitions] [--json]
       chatbus subscriptions skip <subscription> <partition> <offset> [--wait SECONDS] [--json]

  --partitions  also list lag per partition
  --json        print the API's JSON
  --wait S      skip: wait up to S seconds for the owning instance to apply the skip (default 30; 0: do not wait)
  --insecure    allow a plain http:// CHATBUS_API_URL to another host (the key travels in clear)

skip turns the record at <partition>:<offset> into a dead letter of class "operator"
(recorded with your name, CHATBUS_OPERATOR or $USER) and the partition moves on; the
records a subscription is stuck on are listed by \`chatbus subscriptions\`.

environment: CHATBUS_API_URL (default http://127.0.0.1:3000), CHATBUS_OPERATOR_KEY (required)
exit codes: 0 done, 1 failed (or the skip was not applied within --wait), 2 bad usage`;

interface StuckJson {
  partition: number;
  offset: string;
  eventType: string | null;
  conversationId: string | null;
  error: string;
  attempts: number;
  since: string;
  instanceId: string;
}

interface SkipJson {
  id: string;
  subscription: string;
  partition: number;
  offset: string;
  status: "pending" | "applied";
  requestedBy: string;
  requestedAt: string;
  appliedAt: string | null;
  appliedBy: string | null;
  deadLetterId: string | null;
}

interface SubscriptionJson {
  subscription: string;
  state: string;
  breaker: string;
  lag: number;
  processed: number;
  failed: number;
  inFlight: number;
  oldestInFlightMs: number | null;
  stuck: StuckJson[];
  skipsPending: SkipJson[];
  deadLettersWaiting: number;
  partitions: {
    partition: number;
    committedOffset: string;
    highWatermark: string;
    lag: number;
    paused: boolean;
    instanceId: string;
  }[];
  instances: { instanceId: string; live: boolean; lastSeenAt: string }[];
}

/** `83000` → `1m 23s`; null → `-`. */
export function formatAge(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return "-";
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

const shortTime = (iso: string | undefined) => iso?.replace("T", " ").slice(0, 19);

function printSubscriptions(subscriptions: SubscriptionJson[], withPartitions: boolean): void {
  console.log(
    renderTable(
      [
        "SUBSCRIPTION",
        "STATE",
        "BREAKER",
        "LAG",
        "IN FLIGHT",
        "OLDEST IN FLIGHT",
        "STUCK",
        "PROCESSED",
        "FAILED",
        "DEAD LETTERS",
        "INSTANCES (LIVE/ALL)",
        "LAST SEEN",
      ],
      subscriptions.map((s) => [
        s.subscription,
        s.state,
        s.breaker,
        s.lag,
        s.inFlight,
        formatAge(s.oldestInFlightMs),
        (s.stuck ?? []).length,
        s.processed,
        s.failed,
        s.deadLettersWaiting,
        `${s.instances.filter((i) => i.live).length}/${s.instances.length}`,
        shortTime(
          s.instances
            .map((i) => i.lastSeenAt)
            .sort()
            .at(-1),
        ),
      ]),
    ),
  );
  const stuck = subscriptions.flatMap((s) =>
    (s.stuck ?? []).map((r) => ({ ...r, subscription: s.subscription })),
  );
  if (stuck.length > 0) {
    console.log("\nstuck records (retried for a system failure past the threshold):");
    console.log(
      renderTable(
        ["SUBSCRIPTION", "PARTITION", "OFFSET", "TYPE", "CONVERSATION", "ATTEMPTS", "SINCE", "ERROR"],
        stuck.map((r) => [
          r.subscription,
          r.partition,
          r.offset,
          r.eventType,
          r.conversationId,
          r.attempts,
          shortTime(r.since),
          r.error,
        ]),
        60,
      ),
    );
    const first = stuck[0]!;
    console.log(
      `\nskip one: chatbus subscriptions skip ${first.subscription} ${first.partition} ${first.offset}`,
    );
  }
  const pending = subscriptions.flatMap((s) => s.skipsPending ?? []);
  if (pending.length > 0) {
    console.log("\nskip requests not applied yet:");
    console.log(
      renderTable(
        ["ID", "SUBSCRIPTION", "PARTITION", "OFFSET", "REQUESTED BY", "REQUESTED AT"],
        pending.map((k) => [
          k.id,
          k.subscription,
          k.partition,
          k.offset,
          k.requestedBy,
          shortTime(k.requestedAt),
        ]),
      ),
    );
  }
  if (!withPartitions) return;
  for (const s of subscriptions) {
    console.log(`\n${s.subscription}`);
    console.log(
      renderTable(
        ["PARTITION", "COMMITTED", "HIGH WATERMARK", "LAG", "PAUSED", "INSTANCE"],
        s.partitions.map((p) => [
          p.partition,
          p.committedOffset,
          p.highWatermark,
          p.lag,
          p.paused ? "yes" : "no",
          p.instanceId,
        ]),
      ),
    );
  }
}

/** Posts the skip, then polls it until applied or `waitSeconds` pass; resolves with the exit code. */
async function skip(
  env: OperatorEnv,
  args: { subscription: string; partition: string; offset: string; waitSeconds: number; json: boolean },
): Promise<number> {
  if (!/^\d{1,10}$/.test(args.partition))
    throw new UsageError("<partition> must be a whole number (0 or more)");
  if (!/^\d{1,19}$/.test(args.offset)) throw new UsageError("<offset> must be a whole number (0 or more)");
  let request = await callApi<SkipJson>(
    env,
    "POST",
    `/v1/subscriptions/${encodeURIComponent(args.subscription)}/skip`,
    { partition: Number(args.partition), offset: args.offset },
  );
  const started = Date.now();
  if (!args.json) {
    console.log(
      `skip request ${request.id}: ${request.subscription} partition ${request.partition} offset ${request.offset}, requested by ${request.requestedBy} at ${shortTime(request.requestedAt)}.`,
    );
  }
  while (!request.appliedAt && Date.now() - started < args.waitSeconds * 1000) {
    if (!args.json) {
      process.stderr.write(
        `waiting for the instance that owns partition ${request.partition} to apply it… ${Math.round((Date.now() - started) / 1000)} s\n`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
    request = await callApi<SkipJson>(env, "GET", `/v1/subscriptions/skips/${request.id}`);
  }
  if (args.json) console.log(JSON.stringify(request, null, 2));
  if (request.appliedAt) {
    if (!args.json) {
      console.log(
        `applied at ${shortTime(request.appliedAt)} by ${request.appliedBy}: dead letter ${request.deadLetterId ?? "(none: the record was already done)"}; the partition moved on.`,
      );
    }
    return 0;
  }
  if (args.waitSeconds === 0) return 0;
  console.error(
    `chatbus subscriptions: skip request ${request.id} is not applied after ${args.waitSeconds} s: is an instance of ${request.subscription} running? It stays pending and is applied when one is.`,
  );
  return 1;
}

/** Runs the subcommand; resolves with the exit code. */
export async function run(argv: string[]): Promise<number> {
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        help: { type: "boolean", short: "h" },
        json: { type: "boolean" },
        partitions: { type: "boolean" },
        wait: { type: "string" },
        insecure: { type: "boolean" },
      },
    });
  } catch (error) {
    console.error(`chatbus subscriptions: ${(error as Error).message}\n\n${usage}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(usage);
    return 0;
  }
  try {
    const [command, subscription, partition, offset, ...extra] = positionals;
    if (command !== undefined && command !== "skip") throw new UsageError(`unknown command "${command}"`);
    const wait = typeof values.wait === "string" ? values.wait : "30";
    if (!/^\d{1,5}$/.test(wait)) throw new UsageError("--wait must be a number of seconds");
    if (command === "skip" && (!subscription || !partition || !offset || extra.length > 0)) {
      throw new UsageError("skip needs <subscription> <partition> <offset>");
    }
    const env = operatorEnv(process.env, { insecure: values.insecure === true });
    if (command === "skip") {
      return await skip(env, {
        subscription: subscription!,
        partition: partition!,
        offset: offset!,
        waitSeconds: Number(wait),
        json: values.json === true,
      });
    }
    const { subscriptions } = await callApi<{ subscriptions: SubscriptionJson[] }>(
      env,
      "GET",
      "/v1/subscriptions",
    );
    if (values.json) console.log(JSON.stringify({ subscriptions }, null, 2));
    else if (subscriptions.length === 0) console.log("no subscription has reported its status yet.");
    else printSubscriptions(subscriptions, values.partitions === true);
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`chatbus subscriptions: ${error.message}\n\n${usage}`);
      return 2;
    }
    if (error instanceof CliError) {
      console.error(`chatbus subscriptions: ${error.message}`);
      return 1;
    }
    throw error;
  }
}
