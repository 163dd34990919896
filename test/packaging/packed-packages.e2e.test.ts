/**
 * Issues 14.3 and 15.3: the packages as users install them. `npm pack` each package,
 * `npm install` the three tarballs in a scratch project outside the repository, then
 * with plain node (no tsx, no `@chatbus/source` condition, no src/ in the tarballs):
 * send one event with the SDK snippet, run a runtime with one handler, `npx chatbus
 * --help`, ask for the optional @platformatic/kafka backend that is not installed; type-check a consumer against the shipped declarations; and check the
 * public surface (root, `/materialiser` and `/operator` entry points; internals absent).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ChatBus, createChatBus } from "@chatbus/producer-sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { extractSnippets } from "../newcomer/doc-snippets.ts";
import { repoRoot } from "../newcomer/stack-process.ts";
import { kafkaBrokers } from "../support/env.ts";
import { createTestSchema, createTestTopic, type TestSchema } from "../support/isolation.ts";

const packages = ["producer-sdk", "consumer-runtime", "api"] as const;
const scratch = mkdtempSync(join(tmpdir(), "chatbus-packed-"));
const app = join(scratch, "app");
const tarballs: Record<string, string[]> = {};

let topic: string;
let schema: TestSchema;

function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env) {
  const result = spawnSync(command, args, { cwd, env, encoding: "utf8", timeout: 240_000 });
  if (result.status !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} failed (${result.status ?? result.signal}):\n${result.stdout}${result.stderr}`,
    );
  }
  return result.stdout;
}

/** A user's environment: no loader flags, pointed at this test's topic and schema. */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    KAFKA_BROKERS: kafkaBrokers().join(","),
    CHATBUS_TOPIC: topic,
    DATABASE_URL: schema.url,
    LOG_LEVEL: "warn",
  };
  delete env.NODE_OPTIONS;
  // The scratch app installs no optional peer: its sends use the default client.
  delete env.CHATBUS_PRODUCER;
  return env;
}

function snippet(document: string): string {
  const found = extractSnippets(join(repoRoot, document), document).find((s) => s.mode.kind !== "fragment");
  if (!found) throw new Error(`${document} has no runnable snippet`);
  return found.code;
}

beforeAll(async () => {
  run(process.execPath, [join(repoRoot, "scripts", "build-packages.mjs")], repoRoot);
  // `npm test` built the pages before vitest; rebuilding here would empty web/dist
  // under the other e2e files that serve it.
  if (!existsSync(join(repoRoot, "api", "web", "dist", "index.html"))) {
    run("npm", ["run", "--silent", "-w", "api", "build:web"], repoRoot);
  }
  const packed = JSON.parse(
    run(
      "npm",
      [
        "pack",
        "--json",
        "--ignore-scripts",
        "--pack-destination",
        scratch,
        ...packages.flatMap((p) => ["-w", p]),
      ],
      repoRoot,
    ),
  ) as { name: string; filename: string; files: { path: string }[] }[];
  for (const p of packed) tarballs[p.name] = p.files.map((f) => f.path);
  run("mkdir", ["-p", app], scratch);
  writeFileSync(
    join(app, "package.json"),
    JSON.stringify({ name: "scratch", private: true, type: "module" }),
  );
  run(
    "npm",
    [
      "install",
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
      ...packed.map((p) => join(scratch, p.filename)),
      "pg", // the runtime snippet makes its own pool
    ],
    app,
  );
  topic = await createTestTopic("packed");
  schema = await createTestSchema("packed");
}, 300_000);

afterAll(async () => {
  await schema?.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

describe("tarballs", () => {
  it.each(packages)("%s holds dist/ with types, a README and a license, and no src/", (name) => {
    const files = tarballs[`@chatbus/${name}`] ?? [];
    expect(files).toContain("dist/index.js");
    expect(files).toContain("dist/index.d.ts");
    expect(files).toContain("README.md");
    expect(files).toContain("LICENSE");
    expect(files.filter((f) => f.startsWith("src/") || f.endsWith(".tsbuildinfo"))).toEqual([]);
  });

  it("consumer-runtime ships its migrations, api its web pages and bin", () => {
    expect(tarballs["@chatbus/consumer-runtime"]?.some((f) => /^migrations\/\d+_.*\.sql$/.test(f))).toBe(
      true,
    );
    expect(tarballs["@chatbus/api"]).toContain("web/dist/index.html");
    expect(tarballs["@chatbus/api"]).toContain("bin/chatbus.mjs");
  });

  it.each(packages)("%s lists `types` first in every exports entry", (name) => {
    const manifest = JSON.parse(
      readFileSync(join(app, "node_modules", "@chatbus", name, "package.json"), "utf8"),
    );
    for (const [subpath, target] of Object.entries(manifest.exports as Record<string, unknown>)) {
      if (typeof target === "string") continue;
      expect(Object.keys(target as object)[0], `${name} exports["${subpath}"]`).toBe("types");
    }
  });
});

describe("installed packages, plain node", () => {
  it("the README's SDK snippet sends one event", async () => {
    writeFileSync(join(app, "send.mjs"), snippet("README.md"));
    run(process.execPath, ["send.mjs"], app, userEnv());
    const { Kafka, logLevel } = await import("kafkajs");
    const admin = new Kafka({ brokers: kafkaBrokers(), logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
    const offsets = await admin.fetchTopicOffsets(topic);
    await admin.disconnect();
    expect(offsets.reduce((sum, p) => sum + Number(p.high), 0)).toBe(1);
  });

  it("a runtime with one handler handles an event and stops on SIGTERM", async () => {
    writeFileSync(join(app, "handler.mjs"), snippet("consumer-runtime/README.md"));
    const child: ChildProcess = spawn(process.execPath, ["handler.mjs"], { cwd: app, env: userEnv() });
    let output = "";
    child.stdout?.on("data", (c: Buffer) => {
      output += c.toString();
    });
    child.stderr?.on("data", (c: Buffer) => {
      output += c.toString();
    });
    const bus: ChatBus = await createChatBus({ brokers: kafkaBrokers(), topic });
    try {
      await bus.send("conv-packed", {
        type: "chat.message.sent",
        senderId: "bo",
        content: { type: "text", text: "from the packed test" },
      });
      const deadline = Date.now() + 90_000;
      while (
        !output.includes("handled chat.message.sent from bo") &&
        Date.now() < deadline &&
        child.exitCode === null
      ) {
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(output).toContain("handled chat.message.sent from bo in conv-packed");
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      child.kill("SIGTERM");
      expect(await exited, output).toBe(0);
    } finally {
      await bus.close();
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  });

  it("installs without @platformatic/kafka, and asking for it says how to install it", () => {
    expect(existsSync(join(app, "node_modules", "@platformatic", "kafka"))).toBe(false);
    writeFileSync(
      join(app, "platformatic.mjs"),
      `import { createChatBus } from "@chatbus/producer-sdk";
const error = await createChatBus({ producer: "platformatic" }).then(
  (bus) => bus.close().then(() => undefined),
  (e) => e,
);
console.log(JSON.stringify({ name: error?.name, code: error?.code, field: error?.field, message: error?.message }));`,
    );
    const result = JSON.parse(run(process.execPath, ["platformatic.mjs"], app, userEnv()));
    expect(result).toMatchObject({ name: "ValidationError", code: "CHATBUS_VALIDATION", field: "producer" });
    expect(result.message).toContain("npm install @platformatic/kafka");
  });

  it("npx chatbus --help and npx chatbus-send --help", () => {
    expect(run("npx", ["--no-install", "chatbus", "--help"], app, userEnv())).toContain(
      "usage: chatbus <command>",
    );
    expect(run("npx", ["--no-install", "chatbus-send", "--help"], app, userEnv())).toContain(
      "usage: chatbus-send",
    );
  });

  it("exports the public surface and not the internals", () => {
    const probe = `
      const root = await import("@chatbus/consumer-runtime");
      const materialiser = await import("@chatbus/consumer-runtime/materialiser");
      const operator = await import("@chatbus/consumer-runtime/operator");
      const sdk = await import("@chatbus/producer-sdk");
      const api = await import("@chatbus/api");
      const has = (m) => Object.keys(m).sort();
      console.log(JSON.stringify({ root: has(root), materialiser: has(materialiser), operator: has(operator), sdk: has(sdk), api: has(api) }));
    `;
    writeFileSync(join(app, "probe.mjs"), probe);
    const surface = JSON.parse(run(process.execPath, ["probe.mjs"], app, userEnv())) as Record<
      string,
      string[]
    >;
    expect(surface.root).toEqual(
      expect.arrayContaining([
        "createRuntime",
        "migrate",
        "BusinessError",
        "DependencyUnavailableError",
        "stopOnSignals",
      ]),
    );
    expect(surface.materialiser).toEqual(
      expect.arrayContaining([
        "startMaterialiser",
        "createProjectionReader",
        "rebuildProjection",
        "verifyProjections",
      ]),
    );
    expect(surface.operator).toEqual(
      expect.arrayContaining([
        "listDeadLetters",
        "replayDeadLetter",
        "discardDeadLetter",
        "listSubscriptionStatus",
      ]),
    );
    const everything = [...surface.root!, ...surface.materialiser!, ...surface.operator!];
    for (const internal of ["applyBatch", "OffsetMovedError", "recordDeadLetter"])
      expect(everything).not.toContain(internal);
    expect(surface.root).not.toContain("startMaterialiser");
    expect(surface.root).not.toContain("listDeadLetters");
    expect(surface.sdk).toContain("createChatBus");
    expect(surface.sdk).not.toContain("runSendCommand");
    expect(surface.api).toContain("buildApp");
  });

  it("type-checks a consumer against the shipped declarations", () => {
    writeFileSync(
      join(app, "consumer.ts"),
      `import { createChatBus, type ChatEvent } from "@chatbus/producer-sdk";
import { createRuntime, type Handler } from "@chatbus/consumer-runtime";
import { createProjectionReader, type MessageView } from "@chatbus/consumer-runtime/materialiser";
import { listDeadLetters } from "@chatbus/consumer-runtime/operator";
import { buildApp, loadConfig } from "@chatbus/api";
export const uses = [createChatBus, createRuntime, createProjectionReader, listDeadLetters, buildApp, loadConfig];
export type Used = [ChatEvent, Handler, MessageView];
`,
    );
    const tsc = join(repoRoot, "node_modules", "typescript", "bin", "tsc");
    run(
      process.execPath,
      [
        tsc,
        "--noEmit",
        "--strict",
        "--module",
        "nodenext",
        "--moduleResolution",
        "nodenext",
        "--target",
        "es2023",
        "--skipLibCheck",
        "false",
        "--types",
        "node",
        "consumer.ts",
      ],
      app,
    );
  });
});
