/**
 * Crash safety: a runtime process is killed with SIGKILL in the middle of a run and a
 * new one takes over: every event is handled at least once, none is missing, and each
 * process handled each conversation in log order. And a graceful stop: SIGTERM mid-run
 * exits 0 after committing, and the next process repeats nothing.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { connectProducer, orderProblems, produceNumbered, waitFor } from "./runtime-support.ts";

const root = join(import.meta.dirname, "..", "..");
let schema: TestSchema;
let topic: string;
let dir: string;
const children: ChildProcess[] = [];

beforeAll(async () => {
  schema = await createTestSchema("rt_crash");
  topic = await createTestTopic("rt_crash", 4);
  dir = mkdtempSync(join(tmpdir(), "chatbus-crash-"));
});

afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
  await schema.cleanup();
});

function startChild(group: string, out: string, childTopic = topic): ChildProcess {
  // node itself with tsx's loader (not the tsx wrapper), so that SIGKILL hits the runtime.
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "--conditions=@chatbus/source",
      join(root, "consumer-runtime", "test", "fixtures", "runtime-child.ts"),
    ],
    {
      cwd: root,
      env: {
        ...process.env,
        KAFKA_BROKERS: kafkaBrokers().join(","),
        TOPIC: childTopic,
        GROUP: group,
        DATABASE_URL: schema.url,
        OUT_FILE: out,
      },
      stdio: ["ignore", "ignore", "inherit"],
    },
  );
  children.push(child);
  return child;
}

const lines = (out: string) =>
  existsSync(out)
    ? readFileSync(out, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => l.split(" ") as [string, string, string])
    : [];

describe("kill -9 mid-run", () => {
  it("loses nothing when a runtime process is killed and a new one takes over", async () => {
    const conversations = 50;
    const perConversation = 40;
    const producer = await connectProducer();
    await produceNumbered(producer, topic, conversations, perConversation, "crash");
    await producer.disconnect();
    const group = uniqueName("crash");
    const out = join(dir, "handled.txt");

    const first = startChild(group, out);
    await waitFor(() => lines(out).length >= 400, 60_000, "the first process to handle 400 events");
    first.kill("SIGKILL");
    await new Promise((r) => first.once("exit", r));
    const handledByFirst = lines(out).length;
    expect(handledByFirst).toBeLessThan(conversations * perConversation);
    await new Promise((r) => setTimeout(r, 500));
    expect(lines(out).length, "nothing is handled after the kill").toBe(handledByFirst);

    startChild(group, out);
    const handled = () => new Set(lines(out).map(([, c, n]) => `${c} ${n}`));
    await waitFor(() => handled().size === conversations * perConversation, 120_000, "every event handled");

    const all = lines(out);
    expect(all.length).toBeGreaterThanOrEqual(conversations * perConversation);
    // Within each process, each conversation ran in log order (the second may repeat a tail of the first).
    for (const pid of new Set(all.map(([p]) => p))) {
      const seen = new Map<string, number[]>();
      for (const [p, c, n] of all) if (p === pid) seen.set(c, [...(seen.get(c) ?? []), Number(n)]);
      for (const [c, numbers] of seen) {
        const sorted = [...numbers].sort((a, b) => a - b);
        expect(numbers, `process ${pid}, ${c}`).toEqual(sorted);
      }
    }
    // Across both processes, read in file order: never a gap (only repeats after the crash).
    const merged = new Map<string, number[]>();
    for (const [, c, n] of all) merged.set(c, [...(merged.get(c) ?? []), Number(n)]);
    expect(orderProblems(merged, perConversation, true)).toEqual([]);
  });
});

describe("SIGTERM mid-run", () => {
  it("stops gracefully (finish in-flight, commit, leave): the next process repeats nothing", async () => {
    const conversations = 50;
    const perConversation = 40;
    const producer = await connectProducer();
    const sigtermTopic = await createTestTopic("rt_sigterm", 4);
    await produceNumbered(producer, sigtermTopic, conversations, perConversation, "term");
    await producer.disconnect();
    const group = uniqueName("sigterm");
    const out = join(dir, "sigterm.txt");

    const first = startChild(group, out, sigtermTopic);
    await waitFor(() => lines(out).length >= 400, 60_000, "the first process to handle 400 events");
    const exited = new Promise<number | null>((resolve) => first.once("exit", (code) => resolve(code)));
    first.kill("SIGTERM");
    expect(await exited).toBe(0);
    const handledByFirst = lines(out).length;
    expect(handledByFirst).toBeLessThan(conversations * perConversation);

    startChild(group, out, sigtermTopic);
    await waitFor(() => lines(out).length >= conversations * perConversation, 120_000, "every event handled");
    await new Promise((r) => setTimeout(r, 500));
    const all = lines(out);
    expect(new Set(all.map(([, c, n]) => `${c} ${n}`)).size).toBe(conversations * perConversation);
    // Everything the first process finished was committed before it left.
    expect(all.length).toBe(conversations * perConversation);
  });
});
