/**
 * Issue 14.1: the code in README.md and the package documents runs as written, with
 * plain `node` (no tsx, no `@chatbus/source` condition), against the broker and
 * PostgreSQL: the import of `@chatbus/...` resolves to the built `dist/` that
 * `npm install` (the root `prepare` script) produced.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type ChatBus, createChatBus } from "@chatbus/producer-sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../support/env.ts";
import { createTestSchema, createTestTopic, type TestSchema } from "../support/isolation.ts";
import { type DocSnippet, extractSnippets } from "./doc-snippets.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const documents = [
  "README.md",
  "producer-sdk/README.md",
  "consumer-runtime/README.md",
  "api/README.md",
  ...readdirSync(join(root, "docs"))
    .filter((name) => name.endsWith(".md"))
    .map((name) => `docs/${name}`),
];
const snippets: DocSnippet[] = documents.flatMap((doc) => extractSnippets(join(root, doc), doc));
// Inside the repository, so that `@chatbus/*` resolves through node_modules as for a user.
const scratch = join(root, ".chatbus", "doc-snippets");

let topic: string;
let schema: TestSchema;
let bus: ChatBus;

/** The environment a user would have: no loader, no source condition. */
function plainEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    KAFKA_BROKERS: kafkaBrokers().join(","),
    CHATBUS_TOPIC: topic,
    DATABASE_URL: schema.url,
    LOG_LEVEL: "warn",
  };
  delete env.NODE_OPTIONS;
  return env;
}

function writeSnippet(snippet: DocSnippet, index: number): string {
  mkdirSync(scratch, { recursive: true });
  const file = join(scratch, `snippet-${index}.mjs`);
  writeFileSync(file, `// ${snippet.where}\n${snippet.code}`);
  return file;
}

function collect(child: ChildProcess): { out: () => string } {
  let out = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    out += chunk.toString();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    out += chunk.toString();
  });
  return { out: () => out };
}

function exited(child: ChildProcess, timeoutMs: number): Promise<number | string> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve(`still running after ${timeoutMs / 1000} s`);
    }, timeoutMs);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? `signal ${signal}`);
    });
  });
}

beforeAll(async () => {
  // Incremental and about a second when `npm test` already built: the dist/ that plain node imports.
  const build = spawnSync(process.execPath, [join(root, "scripts", "build-packages.mjs")], {
    cwd: root,
    encoding: "utf8",
  });
  expect(build.status, build.stdout + build.stderr).toBe(0);
  topic = await createTestTopic("snippets");
  schema = await createTestSchema("snippets");
  bus = await createChatBus({ brokers: kafkaBrokers(), topic });
});

afterAll(async () => {
  await bus?.close();
  await schema?.cleanup();
});

describe("documentation snippets run with plain node", () => {
  it("finds the README's first snippet and the package documents' snippets", () => {
    const where = snippets.map((s) => s.where);
    expect(where.some((w) => w.startsWith("README.md:"))).toBe(true);
    expect(where.some((w) => w.startsWith("producer-sdk/README.md:"))).toBe(true);
    expect(where.some((w) => w.startsWith("consumer-runtime/README.md:"))).toBe(true);
  });

  snippets.forEach((snippet, index) => {
    if (snippet.mode.kind === "fragment") {
      it.skip(`${snippet.where} (fragment: ${snippet.mode.reason})`, () => {});
      return;
    }
    if (snippet.mode.kind === "script") {
      it(`${snippet.where} runs to completion`, async () => {
        const child = spawn(process.execPath, [writeSnippet(snippet, index)], { cwd: root, env: plainEnv() });
        const output = collect(child);
        const result = await exited(child, 60_000);
        expect(result, `${snippet.where} printed:\n${output.out()}`).toBe(0);
      });
      return;
    }
    const expected = snippet.mode.expect;
    it(`${snippet.where} serves: handles a message, then stops on SIGTERM`, async () => {
      const child = spawn(process.execPath, [writeSnippet(snippet, index)], { cwd: root, env: plainEnv() });
      const output = collect(child);
      try {
        await bus.send("conv-snippet", {
          type: "chat.message.sent",
          senderId: "ana",
          content: { type: "text", text: "hello from the doc test" },
        });
        const deadline = Date.now() + 90_000;
        while (!output.out().includes(expected) && child.exitCode === null && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 200));
        }
        expect(output.out(), `${snippet.where} never printed "${expected}"`).toContain(expected);
        child.kill("SIGTERM");
        expect(await exited(child, 30_000), `${snippet.where} printed:\n${output.out()}`).toBe(0);
      } finally {
        if (child.exitCode === null) child.kill("SIGKILL");
      }
    });
  });
});
