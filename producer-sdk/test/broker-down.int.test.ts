/**
 * Broker down and back, on a private broker (port 19092) so the shared one is never
 * touched: send fails with BrokerUnavailableError within the configured time, and the
 * same bus sends again once the broker is back.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { restartBroker, startKafka, stopKafka } from "../../scripts/kafka.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import { type ChatBus, createChatBus } from "../src/chat-bus.ts";
import { BrokerUnavailableError } from "../src/errors.ts";
import type { ChatEventInput } from "../src/events.ts";

const port = Number(process.env.CHATBUS_PRODUCER_TEST_KAFKA_PORT ?? 19092);
const broker = `127.0.0.1:${port}`;
const sendTimeoutMs = 3000;
const message = (text: string): ChatEventInput => ({
  type: "chat.message.sent",
  senderId: "ana",
  content: { type: "text", text },
  priority: "high",
});

let bus: ChatBus | undefined;

beforeAll(async () => {
  await startKafka(port);
}, 180_000);

afterAll(async () => {
  await bus?.close();
  await stopKafka(port);
}, 120_000);

describe("broker down and back", () => {
  it("fails within the send timeout naming the broker, then the same bus sends again", async () => {
    bus = await createChatBus({
      brokers: [broker],
      topic: uniqueName("sdk_broker_down"),
      partitions: 3,
      replicationFactor: 1,
      sendTimeoutMs,
    });
    const first = await bus.send("down-1", message("before"));
    expect(first.offset).toBe("0");

    await stopKafka(port);
    const started = performance.now();
    const error = await bus.send("down-1", message("while down")).catch((e: unknown) => e);
    const elapsed = performance.now() - started;
    expect(error).toBeInstanceOf(BrokerUnavailableError);
    expect((error as BrokerUnavailableError).message).toContain(broker);
    expect((error as BrokerUnavailableError).brokers).toEqual([broker]);
    expect((error as BrokerUnavailableError).retryable).toBe(true);
    // Bounded: the send timeout plus the sweep interval and some scheduling slack.
    expect(elapsed).toBeLessThan(sendTimeoutMs + 2000);

    // Several concurrent sends while down all settle too, none hangs.
    const whileDown = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => bus!.send(`down-${i}`, message("down"))),
    );
    expect(
      whileDown.every((r) => r.status === "rejected" && r.reason instanceof BrokerUnavailableError),
    ).toBe(true);

    await restartBroker(port);
    // The same bus recovers on its own; allow it a few attempts while metadata settles.
    const deadline = Date.now() + 60_000;
    let after: Awaited<ReturnType<ChatBus["send"]>> | undefined;
    let lastError: unknown;
    while (!after && Date.now() < deadline) {
      after = await bus.send("down-1", message("after")).catch((e: unknown) => {
        lastError = e;
        return undefined;
      });
    }
    expect(after, String(lastError)).toBeDefined();
    expect(after!.partition).toBe(first.partition);
    expect(BigInt(after!.offset)).toBeGreaterThan(0n);
    // And keeps working.
    const more = await Promise.all(
      Array.from({ length: 50 }, (_, i) => bus!.send(`down-${i % 5}`, message(`${i}`))),
    );
    expect(more).toHaveLength(50);
  });
});
