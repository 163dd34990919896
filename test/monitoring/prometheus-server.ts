/**
 * A real Prometheus for tests: the `prometheus` binary of the Debian package, run on a
 * private port with its own temporary configuration and storage, scraping the given
 * targets and evaluating the given rules at a fast interval. Queried through its HTTP
 * API (https://prometheus.io/docs/prometheus/latest/querying/api/).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface ScrapeTarget {
  /** Prometheus job name (`chatbus-runtime`, `chatbus-api`: the alerts use them). */
  job: string;
  /** host:port */
  target: string;
  /** Default `/metrics`. */
  metricsPath?: string;
}

export interface PrometheusOptions {
  /** Listen port on 127.0.0.1; default 19090. */
  port?: number;
  targets: ScrapeTarget[];
  /** Contents of a rule file (YAML); none when undefined. */
  rules?: string;
  /** Scrape and rule evaluation interval in seconds; default 1. */
  intervalSeconds?: number;
}

export interface Sample {
  metric: Record<string, string>;
  /** The sample's value as Prometheus writes it (`"1"`, `"NaN"`, `"+Inf"`). */
  value: string;
}

export interface PrometheusAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  state: "pending" | "firing";
  activeAt: string;
  value: string;
}

export interface PrometheusTarget {
  labels: Record<string, string>;
  health: "up" | "down" | "unknown";
  lastError: string;
  lastScrape: string;
}

/** A query the HTTP API refused, with Prometheus's error type and message. */
export class PrometheusQueryError extends Error {
  constructor(
    readonly expr: string,
    readonly errorType: string,
    readonly detail: string,
  ) {
    super(`Prometheus refused ${expr}: ${errorType}: ${detail}`);
  }
}

export interface PrometheusServer {
  /** e.g. http://127.0.0.1:19090 */
  url: string;
  /** Instant query at now; throws PrometheusQueryError when it does not parse or fails. */
  query(expr: string): Promise<Sample[]>;
  /** Label sets of the series matching a selector (`/api/v1/series`). */
  series(match: string): Promise<Record<string, string>[]>;
  /** Metric metadata from the targets' HELP and TYPE lines, by metric family name. */
  metadata(): Promise<Record<string, { type: string; help: string }[]>>;
  /** Active (pending or firing) alerts. */
  alerts(): Promise<PrometheusAlert[]>;
  targets(): Promise<PrometheusTarget[]>;
  /** Polls `check` until it returns a value other than undefined, or throws after timeoutMs with `what`. */
  waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs: number): Promise<T>;
  /** The process's output so far, for failure messages. */
  log(): string;
  stop(): Promise<void>;
}

/** The `prometheus` binary, or an error saying how to install it. */
export function prometheusBinary(): string {
  const found = spawnSync("sh", ["-c", "command -v prometheus"], { encoding: "utf8" });
  const path = found.stdout.trim();
  if (found.status !== 0 || !path) {
    throw new Error(
      'prometheus is not installed; install the Debian package "prometheus" (apt-get install prometheus), as npm test does.',
    );
  }
  return path;
}

function portInUse(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * Rewrites every duration written in whole minutes (`for: 5m`, `[10m]`) to
 * `secondsPerMinute` seconds per minute, so that rules written for production fire
 * and resolve within a test. Durations in other units are left alone.
 */
export function shortenRuleDurations(rules: string, secondsPerMinute: number): string {
  return rules
    .replace(/^(\s*for:\s*)(\d+)m\s*$/gm, (_, head: string, minutes: string) => {
      return `${head}${Number(minutes) * secondsPerMinute}s`;
    })
    .replace(/\[(\d+)m\]/g, (_, minutes: string) => `[${Number(minutes) * secondsPerMinute}s]`);
}

function configYaml(
  options: Required<Omit<PrometheusOptions, "rules">>,
  rulesFile: string | undefined,
): string {
  const interval = `${options.intervalSeconds}s`;
  const lines = [
    "global:",
    `  scrape_interval: ${interval}`,
    `  scrape_timeout: ${interval}`,
    `  evaluation_interval: ${interval}`,
  ];
  if (rulesFile) lines.push("rule_files:", `  - ${JSON.stringify(rulesFile)}`);
  lines.push("scrape_configs:");
  for (const target of options.targets) {
    lines.push(
      `  - job_name: ${JSON.stringify(target.job)}`,
      `    metrics_path: ${JSON.stringify(target.metricsPath ?? "/metrics")}`,
      "    static_configs:",
      `      - targets: [${JSON.stringify(target.target)}]`,
    );
  }
  return `${lines.join("\n")}\n`;
}

interface ApiResponse<T> {
  status: "success" | "error";
  data: T;
  errorType?: string;
  error?: string;
}

/** Starts Prometheus and waits until it is ready (config and rules loaded). */
export async function startPrometheus(options: PrometheusOptions): Promise<PrometheusServer> {
  const binary = prometheusBinary();
  const settings = {
    port: options.port ?? 19090,
    intervalSeconds: options.intervalSeconds ?? 1,
    targets: options.targets,
  };
  if (await portInUse(settings.port)) {
    throw new Error(
      `port ${settings.port} is taken (a Prometheus left over from an earlier test run?); stop that process first.`,
    );
  }
  const dir = mkdtempSync(join(tmpdir(), "chatbus-prometheus-"));
  let rulesFile: string | undefined;
  if (options.rules !== undefined) {
    rulesFile = join(dir, "rules.yml");
    writeFileSync(rulesFile, options.rules);
  }
  const configFile = join(dir, "prometheus.yml");
  writeFileSync(configFile, configYaml(settings, rulesFile));

  const url = `http://127.0.0.1:${settings.port}`;
  let output = "";
  const child: ChildProcess = spawn(
    binary,
    [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${settings.port}`,
      "--web.enable-lifecycle",
      // Series that vanish from a scrape get staleness markers anyway; this bounds the rest.
      "--query.lookback-delta=1m",
      "--log.level=warn",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-20_000);
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let exitedEarly = false;
  void exited.then(() => {
    exitedEarly = true;
  });

  async function api<T>(path: string, expr?: string): Promise<T> {
    const response = await fetch(`${url}${path}`);
    const body = (await response.json()) as ApiResponse<T>;
    if (body.status !== "success") {
      throw new PrometheusQueryError(
        expr ?? path,
        body.errorType ?? "error",
        body.error ?? `HTTP ${response.status}`,
      );
    }
    return body.data;
  }

  async function waitFor<T>(
    what: string,
    check: () => Promise<T | undefined>,
    timeoutMs: number,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    while (Date.now() < deadline) {
      if (exitedEarly) throw new Error(`Prometheus exited while waiting for ${what}:\n${output}`);
      try {
        const value = await check();
        if (value !== undefined) return value;
        lastError = undefined;
      } catch (error) {
        lastError = error;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    const reason = lastError instanceof Error ? ` (last error: ${lastError.message})` : "";
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${reason}`);
  }

  async function stop(): Promise<void> {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  }

  const server: PrometheusServer = {
    url,
    async query(expr) {
      const data = await api<{
        resultType: string;
        result: { metric: Record<string, string>; value: [number, string] }[];
      }>(`/api/v1/query?query=${encodeURIComponent(expr)}`, expr);
      if (data.resultType === "scalar" || data.resultType === "string") {
        const [, value] = data.result as unknown as [number, string];
        return [{ metric: {}, value }];
      }
      return data.result.map((r) => ({ metric: r.metric, value: r.value[1] }));
    },
    series(match) {
      return api<Record<string, string>[]>(`/api/v1/series?match[]=${encodeURIComponent(match)}`, match);
    },
    metadata() {
      return api<Record<string, { type: string; help: string }[]>>("/api/v1/metadata");
    },
    async alerts() {
      return (await api<{ alerts: PrometheusAlert[] }>("/api/v1/alerts")).alerts;
    },
    async targets() {
      return (await api<{ activeTargets: PrometheusTarget[] }>("/api/v1/targets")).activeTargets;
    },
    waitFor,
    log: () => output,
    stop,
  };

  try {
    await waitFor(
      `Prometheus to be ready at ${url}`,
      async () => ((await fetch(`${url}/-/ready`)).ok ? true : undefined),
      30_000,
    );
  } catch (error) {
    await stop();
    throw error;
  }
  return server;
}
