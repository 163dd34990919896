/**
 * `chatbus subscriptions`: each subscription's state, breaker, lag, counts and
 * dead letters waiting, over the HTTP API. Exit codes: 0 done, 1 failed, 2 bad usage.
 */
import { parseArgs } from "node:util";
import { CliError, callApi, operatorEnv } from "./operator-client.ts";
import { renderTable } from "./table.ts";

/** One line for `chatbus --help`. */
export const summary = "show subscriptions: state, breaker, lag per partition, dead letters (operator key)";

const usage = `usage: chatbus subscriptions [--partitions] [--json]

  --partitions  also list lag per partition
  --json        print the API's JSON

environment: CHATBUS_API_URL (default http://127.0.0.1:3000), CHATBUS_OPERATOR_KEY (required)
exit codes: 0 done, 1 failed, 2 bad usage`;

interface SubscriptionJson {
  subscription: string;
  state: string;
  breaker: string;
  lag: number;
  processed: number;
  failed: number;
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

/** Runs the subcommand; resolves with the exit code. */
export async function run(argv: string[]): Promise<number> {
  let values: { help?: boolean; json?: boolean; partitions?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        help: { type: "boolean", short: "h" },
        json: { type: "boolean" },
        partitions: { type: "boolean" },
      },
    }));
  } catch (error) {
    console.error(`chatbus subscriptions: ${(error as Error).message}\n\n${usage}`);
    return 2;
  }
  if (values.help) {
    console.log(usage);
    return 0;
  }
  try {
    const { subscriptions } = await callApi<{ subscriptions: SubscriptionJson[] }>(
      operatorEnv(),
      "GET",
      "/v1/subscriptions",
    );
    if (values.json) {
      console.log(JSON.stringify({ subscriptions }, null, 2));
      return 0;
    }
    if (subscriptions.length === 0) {
      console.log("no subscription has reported its status yet.");
      return 0;
    }
    console.log(
      renderTable(
        [
          "SUBSCRIPTION",
          "STATE",
          "BREAKER",
          "LAG",
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
          s.processed,
          s.failed,
          s.deadLettersWaiting,
          `${s.instances.filter((i) => i.live).length}/${s.instances.length}`,
          s.instances
            .map((i) => i.lastSeenAt)
            .sort()
            .at(-1)
            ?.replace("T", " ")
            .slice(0, 19),
        ]),
      ),
    );
    if (values.partitions) {
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
    return 0;
  } catch (error) {
    if (error instanceof CliError) {
      console.error(`chatbus subscriptions: ${error.message}`);
      return 1;
    }
    throw error;
  }
}
