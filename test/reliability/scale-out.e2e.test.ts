/**
 * Scale-out: three runtime processes in one subscription share the partitions; one is
 * killed with SIGKILL mid-run, its partitions move to the other two, and nothing is
 * lost. Each process handles each conversation in log order.
 */
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../support/env.ts";
import { createTestSchema, createTestTopic, type TestSchema, uniqueName } from "../support/isolation.ts";
import { produceNumbered, readHandled, startWorker, type WorkerSettings } from "./scale-cluster.ts";

let schema: TestSchema;
let dir: string;
let settings: WorkerSettings;
const workers: ChildProcess[] = [];
const conversations = Array.from({ length: 120 }, (_, i) => `scale-${i}`);

beforeAll(async () => {
  schema = await createTestSchema("scale");
  dir = mkdtempSync(join(tmpdir(), "chatbus-scale-"));
  settings = {
    brokers: kafkaBrokers(),
    topic: await createTestTopic("scale", 12),
    group: uniqueName("scale"),
    databaseUrl: schema.url,
    outFile: join(dir, "handled.txt"),
    // Slow enough (about 200 events/s a process) that the backlog outlasts the joins.
    handlerMs: 20,
    concurrency: 4,
  };
});

afterAll(async () => {
  for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
  await schema.cleanup();
});

async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe("scale-out across runtime processes", () => {
  it("shares partitions among three processes and loses nothing when one is killed", async () => {
    const perConversation = 40;
    await produceNumbered(settings.brokers, settings.topic, conversations, 0, perConversation / 2);
    workers.push(...(await Promise.all([0, 1, 2].map(() => startWorker(settings)))));

    const unique = () => new Set(readHandled(settings.outFile).map((h) => `${h.conversation}:${h.n}`)).size;
    const total = conversations.length * perConversation;
    // All three take part once the group settled.
    await waitFor(
      () => new Set(readHandled(settings.outFile).map((h) => h.pid)).size === 3,
      90_000,
      "all three processes to handle events",
    );
    await waitFor(() => unique() >= total / 4, 90_000, "a quarter of the events");

    const victim = workers[0]!;
    victim.kill("SIGKILL");
    await produceNumbered(
      settings.brokers,
      settings.topic,
      conversations,
      perConversation / 2,
      perConversation,
    );
    await waitFor(() => unique() === total, 120_000, `all ${total} events`);

    const handled = readHandled(settings.outFile);
    const survivors = new Set(workers.slice(1).map((w) => w.pid));
    // After the kill, the survivors handled the victim's partitions: some events of the
    // second half were handled by survivors in conversations the victim had owned.
    const victimConversations = new Set(
      handled.filter((h) => h.pid === victim.pid).map((h) => h.conversation),
    );
    expect(victimConversations.size).toBeGreaterThan(0);
    const takenOver = handled.filter((h) => survivors.has(h.pid) && victimConversations.has(h.conversation));
    expect(takenOver.length).toBeGreaterThan(0);

    // Per process, each conversation's events were handled in log order (a process may
    // start in the middle after a rebalance, and repeat events the victim had not committed).
    for (const pid of new Set(handled.map((h) => h.pid))) {
      const byConversation = new Map<string, number[]>();
      for (const h of handled.filter((x) => x.pid === pid)) {
        byConversation.set(h.conversation, [...(byConversation.get(h.conversation) ?? []), h.n]);
      }
      for (const [conversation, numbers] of byConversation) {
        const decreases = numbers.filter((n, i) => i > 0 && n < numbers[i - 1]!);
        expect(decreases, `${conversation} in pid ${pid}: ${numbers.join(",")}`).toEqual([]);
      }
    }
    const duplicates = handled.length - unique();
    console.log(
      `scale-out: ${total} events, ${handled.length} handlings (${duplicates} redelivered after the kill), victim owned ${victimConversations.size} conversations`,
    );
  });
});
