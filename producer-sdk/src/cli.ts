#!/usr/bin/env node
/**
 * `chatbus-send <conversation> <text>`: sends one text message by hand and prints
 * where Kafka stored it. The same command is `chatbus send`.
 */
import { realpathSync } from "node:fs";
import { parseArgs } from "node:util";
import { createChatBus } from "./chat-bus.ts";
import { ChatBusError, ValidationError } from "./errors.ts";
import type { Priority } from "./events.ts";

/** One line for `chatbus --help`. */
export const sendCommandSummary = "send a text message to a conversation and print where Kafka stored it";

function usage(prog: string): string {
  return `usage: ${prog} <conversation> <text> [options]

Sends one chat.message.sent event with text content and waits for Kafka's
acknowledgement (acks=all), then prints its event id, partition and offset.

options:
  --sender ID        sender user id (default: $USER, or "cli")
  --priority P       high | normal | low (default: normal)
  --kind K           direct | group: the conversation's rate limit (default: direct)
  --client-msg-id ID idempotency key for retries
  --brokers LIST     Kafka bootstrap brokers (default: $KAFKA_BROKERS or 127.0.0.1:9092)
  --topic NAME       topic (default: $CHATBUS_TOPIC or chat.events)
  --json             print the result as JSON
  -h, --help         show this help

exit codes: 0 sent, 1 failed (one line says why), 2 bad usage or invalid event`;
}

/**
 * Runs the send command with `argv` (without the program name); returns the exit
 * code. `prog` is the name shown in messages (`chatbus-send` or `chatbus send`).
 */
export async function runSendCommand(argv: string[], prog = "chatbus-send"): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (error) {
    console.error(`${prog}: ${(error as Error).message}\n\n${usage(prog)}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(usage(prog));
    return 0;
  }
  if (positionals.length !== 2) {
    console.error(
      `${prog}: expected <conversation> and <text>; got ${positionals.length} arguments.\n\n${usage(prog)}`,
    );
    return 2;
  }
  const kind = values.kind;
  if (kind !== undefined && kind !== "direct" && kind !== "group") {
    console.error(`${prog}: --kind must be direct or group; got "${kind}".`);
    return 2;
  }
  const [conversationId, text] = positionals as [string, string];
  let bus: Awaited<ReturnType<typeof createChatBus>> | undefined;
  try {
    bus = await createChatBus({
      clientId: "chatbus-send",
      source: "/chatbus/cli",
      ...(values.brokers ? { brokers: values.brokers.split(",") } : {}),
      ...(values.topic ? { topic: values.topic } : {}),
    });
    const result = await bus.send(
      conversationId,
      {
        type: "chat.message.sent",
        senderId: values.sender ?? process.env.USER ?? "cli",
        content: { type: "text", text },
        ...(values.priority ? { priority: values.priority as Priority } : {}),
        ...(values["client-msg-id"] ? { clientMsgId: values["client-msg-id"] } : {}),
      },
      kind ? { kind } : undefined,
    );
    if (values.json) console.log(JSON.stringify({ topic: bus.topic, ...result }));
    else
      console.log(
        `sent ${result.eventId} to ${bus.topic} partition ${result.partition} offset ${result.offset}`,
      );
    return 0;
  } catch (error) {
    console.error(`${prog}: ${error instanceof Error ? error.message : String(error)}`);
    if (error instanceof ValidationError) return 2;
    if (!(error instanceof ChatBusError) && process.env.DEBUG) console.error(error);
    return 1;
  } finally {
    await bus?.close();
  }
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      sender: { type: "string" },
      priority: { type: "string" },
      kind: { type: "string" },
      "client-msg-id": { type: "string" },
      brokers: { type: "string" },
      topic: { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
}

function invokedDirectly(): boolean {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(new URL(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedDirectly()) {
  runSendCommand(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      console.error(`chatbus-send: ${error instanceof Error ? error.message : String(error)}`);
      process.exitCode = 1;
    },
  );
}
