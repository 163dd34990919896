/**
 * Real API processes and a real nginx in front of them, for the e2e tests of the API
 * tier across processes (issue 18): `api/src/main.ts` started as `npm start` starts
 * it (node with tsx's loader, so SIGKILL hits the API itself), and nginx from Debian
 * running the example configuration `deploy/nginx/chatbus.conf`.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureSystemPackages, testPackages } from "../../scripts/system-packages.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Secrets shared by every API process of a test deployment. */
export const clusterSecrets = {
  CHATBUS_JWT_SECRET: "e2e-cluster-secret-0123456789abcdef",
  CHATBUS_OPERATOR_KEY: "e2e-cluster-operator-0123456789",
  CHATBUS_SERVICE_KEYS: "e2e-cluster-service-0123456789",
};

/** A port nobody listens on right now (the OS picks it). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** One API process. */
export interface ApiProcess {
  port: number;
  url: string;
  child: ChildProcess;
  /** Resolves when the process has exited. */
  exited: Promise<void>;
}

/** Starts `api/src/main.ts` on `port`; resolves once it listens. */
export async function startApiProcess(settings: {
  port: number;
  databaseUrl: string;
  topic: string;
  brokers: string[];
  env?: Record<string, string>;
  /** Extra node flags (a benchmark's `--cpu-prof`). */
  nodeArgs?: string[];
}): Promise<ApiProcess> {
  const child = spawn(
    process.execPath,
    [
      ...(settings.nodeArgs ?? []),
      "--import",
      "tsx",
      "--conditions=@chatbus/source",
      join(root, "api", "src", "main.ts"),
    ],
    {
      cwd: root,
      env: {
        ...process.env,
        ...clusterSecrets,
        NODE_ENV: "test",
        CHATBUS_DEV_LOGIN: "1",
        HOST: "127.0.0.1",
        PORT: String(settings.port),
        DATABASE_URL: settings.databaseUrl,
        CHATBUS_TOPIC: settings.topic,
        KAFKA_BROKERS: settings.brokers.join(","),
        LOG_LEVEL: "info",
        ...settings.env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-4000);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const url = `http://127.0.0.1:${settings.port}`;
  // Ready when /healthz answers (whatever LOG_LEVEL says); a process that exits or
  // takes a minute is killed and reported with its last output.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const status = await fetch(`${url}/healthz`).then(
      (r) => r.status,
      () => 0,
    );
    if (status === 200) return { port: settings.port, url, child, exited };
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`the API process on port ${settings.port} did not start:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** nginx running `deploy/nginx/chatbus.conf` in front of the given ports. */
export interface Balancer {
  url: string;
  stop(): Promise<void>;
}

/**
 * Starts nginx (installing the Debian package when missing, as `npm test` does for
 * kcat) with the shipped example configuration, its upstream lines and listen port
 * replaced. `X-Upstream` names the process that served each response (test only: it
 * tells internal addresses, which the example does not).
 */
export async function startBalancer(
  backends: number[],
  options: { workerConnections?: number; workerProcesses?: number } = {},
): Promise<Balancer> {
  const workerConnections = options.workerConnections ?? 1024;
  // Several workers share the listening port with SO_REUSEPORT, so the kernel spreads
  // connections evenly: one worker could not hold tens of thousands of streams (each
  // is two connections in nginx) under a per-process open-file limit.
  const workerProcesses = options.workerProcesses ?? 1;
  const missing = ensureSystemPackages(testPackages.filter((p) => p.command === "nginx"));
  if (missing.length > 0) throw new Error("nginx is missing; see the line above");
  const dir = mkdtempSync(join(tmpdir(), "chatbus-nginx-"));
  chmodSync(dir, 0o777); // nginx workers run as nobody and write their temp files here
  const port = await freePort();
  const example = readFileSync(join(root, "deploy", "nginx", "chatbus.conf"), "utf8");
  const servers = backends.map((p) => `    server 127.0.0.1:${p} max_fails=1 fail_timeout=5s;`).join("\n");
  const listen = `listen 127.0.0.1:${port}${workerProcesses > 1 ? " reuseport" : ""};`;
  const site = example
    .replace(/^ {4}server 127\.0\.0\.1:\d+ .*\n(?: {4}server 127\.0\.0\.1:\d+ .*\n)*/m, `${servers}\n`)
    .replace("listen 8080;", `${listen}\n    add_header X-Upstream $upstream_addr always;`);
  if (!site.includes(`:${backends[0]} `) || !site.includes(listen)) {
    throw new Error(
      "deploy/nginx/chatbus.conf no longer has the upstream and listen lines this test replaces",
    );
  }
  writeFileSync(join(dir, "chatbus.conf"), site);
  writeFileSync(
    join(dir, "nginx.conf"),
    `worker_processes ${workerProcesses};
worker_rlimit_nofile ${workerConnections + 512};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections ${workerConnections}; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  include ${dir}/chatbus.conf;
}
`,
  );
  const child = spawn(
    "nginx",
    ["-e", `${dir}/error.log`, "-p", dir, "-c", `${dir}/nginx.conf`, "-g", "daemon off;"],
    {
      stdio: ["ignore", "inherit", "inherit"],
    },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    const up = await fetch(`${url}/healthz`).then(
      (r) => r.status,
      () => 0,
    );
    if (up === 200) break;
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill("SIGKILL");
      throw new Error(
        `nginx did not answer on ${url}: ${readFileSync(join(dir, "error.log"), "utf8").slice(-2000)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    url,
    async stop() {
      child.kill("SIGQUIT");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
