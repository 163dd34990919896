/**
 * Runs `npm start` the way a terminal does (its own process group) on free ports with
 * a Kafka broker of its own, so that the shared broker on 9092 is never touched, and
 * finds every process of the stack for the checks that nothing is left afterwards.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** A port nothing listens on right now (the kernel's pick). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/** Does anything accept TCP connections on 127.0.0.1:port? */
export function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.setTimeout(1000);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/** A Kafka port whose controller port (one above) is free too. */
export async function freeKafkaPort(): Promise<number> {
  for (;;) {
    const port = await freePort();
    if (port < 65000 && !(await listening(port + 1))) return port;
  }
}

interface ProcessInfo {
  pid: number;
  ppid: number;
  /** Start time in clock ticks since boot: tells a reused pid from the original. */
  started: string;
  state: string;
  command: string;
}

function readProcess(pid: number): ProcessInfo | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name is in parentheses and may hold spaces; fields follow the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const command = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim();
    return { pid, state: fields[0] ?? "", ppid: Number(fields[1]), started: fields[19] ?? "", command };
  } catch {
    return undefined;
  }
}

/** Every live descendant of `root` (and `root` itself). */
export function processTree(root: number): ProcessInfo[] {
  const all = readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .map((name) => readProcess(Number(name)))
    .filter((p): p is ProcessInfo => p !== undefined);
  const tree: ProcessInfo[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    const self = all.find((p) => p.pid === pid);
    if (self) tree.push(self);
    for (const child of all.filter((p) => p.ppid === pid)) queue.push(child.pid);
  }
  return tree;
}

/** Is this very process (same pid and start time) still running (not a zombie)? */
export function stillRunning(process: ProcessInfo): boolean {
  const now = readProcess(process.pid);
  return now !== undefined && now.started === process.started && now.state !== "Z";
}

/**
 * Free ports for the API, the runtime's metrics and Kafka, all different: the kernel can
 * hand the same free port out twice (a CI run once gave Kafka and the metrics server
 * both 40899), and none may be Kafka's controller port (one above Kafka's).
 */
async function distinctFreePorts(): Promise<{ api: number; metrics: number; kafka: number }> {
  for (;;) {
    const ports = { api: await freePort(), metrics: await freePort(), kafka: await freeKafkaPort() };
    const taken = [ports.api, ports.metrics, ports.kafka, ports.kafka + 1];
    if (new Set(taken).size === taken.length) return ports;
  }
}

export interface StartedStack {
  npm: ChildProcess;
  ports: { api: number; metrics: number; kafka: number };
  output(): string;
  /** The broker pid that the start script wrote, if any. */
  brokerPid(): number | undefined;
  /** Deletes the data folder of the stack's own broker (call once everything stopped). */
  removeBrokerData(): void;
}

/**
 * `npm start` in a new process group; resolves once it printed "Press Ctrl-C to stop."
 * `env` is added to the environment (DATABASE_URL etc.); KAFKA_BROKERS is removed so
 * that the stack runs its own broker on a free port.
 */
export async function startStack(
  env: NodeJS.ProcessEnv,
  timeoutMs = 240_000,
  cwd = repoRoot,
): Promise<StartedStack> {
  const ports = await distinctFreePorts();
  const childEnv: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(ports.api),
    CHATBUS_METRICS_PORT: String(ports.metrics),
    KAFKA_PORT: String(ports.kafka),
    ...env,
  };
  delete childEnv.KAFKA_BROKERS;
  delete childEnv.NODE_OPTIONS;
  const npm = spawn("npm", ["start"], { cwd, env: childEnv, detached: true });
  let output = "";
  npm.stdout?.on("data", (chunk: Buffer) => {
    output += chunk.toString();
  });
  npm.stderr?.on("data", (chunk: Buffer) => {
    output += chunk.toString();
  });
  const cacheDir = childEnv.CHATBUS_CACHE_DIR ?? join(childEnv.HOME ?? "/root", ".cache", "chatbus");
  const stack: StartedStack = {
    npm,
    ports,
    output: () => output,
    brokerPid() {
      const file = join(cacheDir, `broker-${ports.kafka}`, "broker.pid");
      return existsSync(file) ? Number(readFileSync(file, "utf8")) : undefined;
    },
    removeBrokerData() {
      rmSync(join(cacheDir, `broker-${ports.kafka}`), { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + timeoutMs;
  while (!output.includes("Press Ctrl-C to stop.")) {
    if (npm.exitCode !== null || Date.now() > deadline) {
      killTree(npm.pid!);
      throw new Error(`npm start did not come up (exit ${npm.exitCode}); it printed:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return stack;
}

/** Last resort after a failed check: SIGKILL what is left of a tree this test started. */
export function killTree(root: number, known: ProcessInfo[] = []): void {
  for (const p of [...processTree(root), ...known]) {
    if (stillRunning(p)) {
      try {
        process.kill(p.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  }
}
