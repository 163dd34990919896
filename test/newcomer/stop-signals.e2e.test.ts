/**
 * Issue 14.2: Ctrl-C stops everything `npm start` started. `npm start` runs in its own
 * process group as in a terminal, with its own Kafka broker on a free port (the shared
 * broker on 9092 is never touched); after the signal, within 30 s, nothing listens on
 * the API, metrics and Kafka ports and no process of the stack is left, the detached
 * broker JVM and the runtime and API processes included.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { databaseUrl } from "../support/env.ts";
import { killTree, listening, processTree, startStack, stillRunning } from "./stack-process.ts";

const database = `chatbus_stop_${randomBytes(4).toString("hex")}`;
const url = new URL(databaseUrl());
url.pathname = `/${database}`;

afterAll(async () => {
  const admin = new pg.Client({ connectionString: databaseUrl() });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
  await admin.end();
});

type Delivery = "group" | "npm alone";

async function stopsEverything(signal: NodeJS.Signals, delivery: Delivery): Promise<void> {
  const stack = await startStack({
    DATABASE_URL: url.toString(),
    CHATBUS_GROUP_PREFIX: `stop-${randomBytes(3).toString("hex")}`,
    LOG_LEVEL: "warn",
  });
  const npmPid = stack.npm.pid!;
  // Everything of the stack now: npm, the scripts, node children, and the detached
  // broker JVM (a child of the start script until it exits).
  const before = processTree(npmPid);
  const broker = stack.brokerPid();
  expect(broker, "the start script started a broker of its own").toBeDefined();
  expect(before.some((p) => p.pid === broker)).toBe(true);
  expect(before.filter((p) => p.command.includes("/api/src/main.ts"))).toHaveLength(1);
  expect(before.filter((p) => p.command.includes("/consumer-runtime/src/main.ts"))).toHaveLength(1);
  for (const port of Object.values(stack.ports)) expect(await listening(port)).toBe(true);

  const sent = Date.now();
  process.kill(delivery === "group" ? -npmPid : npmPid, signal);
  const deadline = sent + 30_000;
  let left = before;
  let open: number[] = [];
  while (Date.now() < deadline) {
    left = before.filter(stillRunning);
    open = [];
    for (const port of Object.values(stack.ports)) if (await listening(port)) open.push(port);
    if (left.length === 0 && open.length === 0) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  try {
    expect(
      left.map((p) => `${p.pid} ${p.command.slice(0, 120)}`),
      `processes left 30 s after ${signal} to the ${delivery}; output:\n${stack
        .output()
        .split("\n")
        .filter((line) => !line.startsWith("{"))
        .join("\n")
        .slice(-4000)}`,
    ).toEqual([]);
    expect(open, "ports still listening").toEqual([]);
    expect(stack.output()).toContain("chatbus: stopped");
  } finally {
    killTree(npmPid, before);
    stack.removeBrokerData();
  }
}

describe("npm start stops everything it started", () => {
  it("SIGINT to the process group (Ctrl-C in a terminal)", () => stopsEverything("SIGINT", "group"));
  it("SIGTERM to the process group (a process manager)", () => stopsEverything("SIGTERM", "group"));
  it("SIGTERM to the npm process alone (kill <pid>)", () => stopsEverything("SIGTERM", "npm alone"));
});
