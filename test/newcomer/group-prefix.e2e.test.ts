/**
 * Issue 14.5: two chatbus deployments share one Kafka cluster with different topics
 * and CHATBUS_GROUP_PREFIX values. Each runtime process joins only its own consumer
 * groups (`<prefix>-materialiser`, `<prefix>-notifications`) and each projection
 * gets its own conversation and nothing of the other's.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { createChatBus } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, expect, it } from "vitest";
import { kafkaBrokers } from "../support/env.ts";
import { createTestSchema, createTestTopic, type TestSchema, uniqueName } from "../support/isolation.ts";
import { freePort, repoRoot } from "./stack-process.ts";

interface Stack {
  prefix: string;
  topic: string;
  schema: TestSchema;
  runtime: ChildProcess;
  output: () => string;
}

const stacks: Stack[] = [];

async function startStack(name: string): Promise<Stack> {
  const topic = await createTestTopic(`prefix_${name}`, 3);
  const schema = await createTestSchema(`prefix_${name}`);
  const prefix = uniqueName(`stack-${name}`);
  const runtime = spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@chatbus/source", join(repoRoot, "consumer-runtime", "src", "main.ts")],
    {
      cwd: repoRoot,
      env: {
        ...process.env,
        KAFKA_BROKERS: kafkaBrokers().join(","),
        CHATBUS_TOPIC: topic,
        DATABASE_URL: schema.url,
        CHATBUS_GROUP_PREFIX: prefix,
        CHATBUS_METRICS_PORT: String(await freePort()),
        LOG_LEVEL: "warn",
      },
    },
  );
  let output = "";
  runtime.stdout?.on("data", (c: Buffer) => {
    output += c.toString();
  });
  runtime.stderr?.on("data", (c: Buffer) => {
    output += c.toString();
  });
  const stack = { prefix, topic, schema, runtime, output: () => output };
  stacks.push(stack);
  return stack;
}

afterAll(async () => {
  await Promise.all(
    stacks.map(
      (s) =>
        new Promise<void>((resolve) => {
          if (s.runtime.exitCode !== null) return resolve();
          s.runtime.once("exit", () => resolve());
          s.runtime.kill("SIGTERM");
          setTimeout(() => s.runtime.kill("SIGKILL"), 20_000).unref();
        }),
    ),
  );
  for (const s of stacks) await s.schema.cleanup();
});

it("two stacks on one broker keep to their own consumer groups and data", async () => {
  const [a, b] = [await startStack("a"), await startStack("b")];
  const admin = new Kafka({ brokers: kafkaBrokers(), logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    // Both processes are up once each has a stable member in both of its groups.
    const groupsOf = (s: Stack) => [`${s.prefix}-materialiser`, `${s.prefix}-notifications`];
    const deadline = Date.now() + 120_000;
    for (;;) {
      const { groups } = await admin.describeGroups([...groupsOf(a), ...groupsOf(b)]);
      if (groups.every((g) => g.state === "Stable" && g.members.length === 1)) break;
      for (const s of [a, b]) {
        if (s.runtime.exitCode !== null) throw new Error(`runtime ${s.prefix} exited:\n${s.output()}`);
      }
      if (Date.now() > deadline) {
        throw new Error(
          `groups not stable after 120 s: ${JSON.stringify(groups.map((g) => [g.groupId, g.state]))}`,
        );
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    // No default-named group took part: the fixed ids of before are what broke.
    const { groups: all } = await admin.listGroups();
    const ours = all.map((g) => g.groupId).filter((id) => id.startsWith("stack-"));
    expect(ours.filter((id) => id.startsWith(a.prefix)).sort()).toEqual(groupsOf(a).sort());
    expect(ours.filter((id) => id.startsWith(b.prefix)).sort()).toEqual(groupsOf(b).sort());

    for (const s of [a, b]) {
      const bus = await createChatBus({ brokers: kafkaBrokers(), topic: s.topic, partitions: 3 });
      const conversation = `conv-${s.prefix.slice(0, 20)}`;
      await bus.send(conversation, {
        type: "chat.conversation.created",
        kind: "group",
        title: s.prefix,
        createdBy: "ana",
        members: ["ana", "ben"],
      });
      await bus.send(conversation, {
        type: "chat.message.sent",
        senderId: "ana",
        content: { type: "text", text: `hello ${s.prefix}` },
      });
      await bus.close();
    }
    for (const s of [a, b]) {
      const until = Date.now() + 90_000;
      let rows: { title: string }[] = [];
      while (Date.now() < until) {
        rows = (await s.schema.pool.query<{ title: string }>("SELECT title FROM conversations")).rows;
        const messages = await s.schema.pool.query("SELECT 1 FROM messages");
        if (rows.length > 0 && messages.rowCount === 1) break;
        await new Promise((r) => setTimeout(r, 300));
      }
      expect(
        rows.map((r) => r.title),
        `projection of ${s.prefix}; runtime said:\n${s.output()}`,
      ).toEqual([s.prefix]);
    }
  } finally {
    await admin.disconnect();
  }
});
