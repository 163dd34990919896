/** `chatbus-send` against the real broker: help, usage errors, a send, an unreachable broker. */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import { createTestTopic } from "../../test/support/isolation.ts";
import { runSendCommand } from "../src/cli.ts";

let out: string[];
let err: string[];
beforeEach(() => {
  out = [];
  err = [];
  vi.spyOn(console, "log").mockImplementation((...args: unknown[]) => void out.push(args.join(" ")));
  vi.spyOn(console, "error").mockImplementation((...args: unknown[]) => void err.push(args.join(" ")));
});
afterEach(() => {
  vi.restoreAllMocks();
});

describe("chatbus-send", () => {
  it("prints usage for --help and exits 0", async () => {
    expect(await runSendCommand(["--help"])).toBe(0);
    expect(out.join("\n")).toContain("usage: chatbus-send <conversation> <text>");
    expect(out.join("\n")).toContain("--priority");
  });

  it("exits 2 on bad usage, saying why", async () => {
    expect(await runSendCommand([])).toBe(2);
    expect(err[0]).toContain("expected <conversation> and <text>");
    expect(await runSendCommand(["c", "t", "--bogus"])).toBe(2);
    expect(await runSendCommand(["c", "t", "--kind", "crowd"])).toBe(2);
  });

  it("sends a message and prints where it was stored; an invalid one exits 2", async () => {
    const topic = await createTestTopic("sdk_cli");
    const brokers = kafkaBrokers().join(",");
    const args = ["--brokers", brokers, "--topic", topic, "--sender", "ana"];
    expect(await runSendCommand(["cli-conv", "hello", ...args, "--json"])).toBe(0);
    const result = JSON.parse(out.at(-1)!) as {
      topic: string;
      eventId: string;
      partition: number;
      offset: string;
    };
    expect(result).toMatchObject({ topic, offset: "0" });
    expect(await runSendCommand(["cli-conv", "again", ...args, "--priority", "high"])).toBe(0);
    expect(out.at(-1)).toMatch(
      new RegExp(`^sent [0-9a-f-]{36} to ${topic} partition ${result.partition} offset 1$`),
    );
    expect(await runSendCommand(["cli-conv", "x", ...args, "--priority", "urgent"])).toBe(2);
    expect(err.at(-1)).toContain("`priority` must be one of");
  });

  it("exits 1 with one line naming the broker when Kafka is unreachable", async () => {
    const started = performance.now();
    expect(await runSendCommand(["c", "t", "--brokers", "127.0.0.1:1"])).toBe(1);
    expect(performance.now() - started).toBeLessThan(15_000);
    expect(err).toHaveLength(1);
    expect(err[0]).toContain("127.0.0.1:1");
  });
});
