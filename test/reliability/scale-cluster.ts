/**
 * Runs N runtime processes (scale-worker.ts) in one subscription and reads what they
 * handled; shared by the scale-out test and the scale benchmark.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { encodeEvent } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";

const root = join(import.meta.dirname, "..", "..");

export interface WorkerSettings {
  brokers: string[];
  topic: string;
  group: string;
  databaseUrl: string;
  outFile: string;
  handlerMs: number;
  concurrency?: number;
}

/** Starts one worker; resolves once it joined the group. */
export function startWorker(settings: WorkerSettings): Promise<ChildProcess> {
  // node itself with tsx's loader (not the tsx wrapper), so that SIGKILL hits the runtime.
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "--conditions=@chatbus/source", join(root, "test", "reliability", "scale-worker.ts")],
    {
      cwd: root,
      env: {
        ...process.env,
        KAFKA_BROKERS: settings.brokers.join(","),
        TOPIC: settings.topic,
        GROUP: settings.group,
        DATABASE_URL: settings.databaseUrl,
        OUT_FILE: settings.outFile,
        HANDLER_MS: String(settings.handlerMs),
        CONCURRENCY: String(settings.concurrency ?? 32),
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("a runtime worker did not join within 60 s")), 60_000);
    child.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("started")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`a runtime worker exited with ${code} before joining`));
    });
  });
}

/** Produces `perConversation` numbered messages to each conversation, interleaved. */
export async function produceNumbered(
  brokers: string[],
  topic: string,
  conversations: string[],
  from: number,
  to: number,
): Promise<void> {
  const producer = new Kafka({ clientId: "chatbus-scale", brokers, logLevel: logLevel.NOTHING }).producer({
    idempotent: true,
  });
  await producer.connect();
  try {
    const records = [];
    for (let n = from; n < to; n++) {
      for (const id of conversations) {
        const content = { type: "text" as const, text: String(n) };
        records.push(
          encodeEvent(
            id,
            { type: "chat.message.sent", senderId: "tester", content },
            { source: "/test/scale" },
          ).record,
        );
      }
    }
    for (let i = 0; i < records.length; i += 2000) {
      await producer.send({ topic, acks: -1, messages: records.slice(i, i + 2000) });
    }
  } finally {
    await producer.disconnect();
  }
}

export interface Handled {
  pid: number;
  conversation: string;
  n: number;
}

export function readHandled(outFile: string): Handled[] {
  if (!existsSync(outFile)) return [];
  return readFileSync(outFile, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const [pid, conversation, n] = line.split(" ");
      return { pid: Number(pid), conversation: conversation!, n: Number(n) };
    });
}
