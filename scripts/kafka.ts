/**
 * Installs and runs the local Apache Kafka broker (KRaft, single node by default).
 *
 * The official jars come from Maven Central through Maven (scripts/kafka/pom.xml)
 * into a cache folder outside git; the broker's data, config, pid and log live next
 * to them, keyed by port, so any clone of the repository can stop a broker another
 * one started. Used by `npm start`, the test setup and by hand:
 *
 *   npx tsx scripts/kafka.ts start|stop|status|install [--port 9092] [--nodes 3]
 */
import { spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createConnection } from "node:net";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Kafka, logLevel } from "kafkajs";
// The SDK's source, not "@chatbus/producer-sdk": `npm run kafka` runs before any build
// and without the @chatbus/source condition, and errors.ts imports nothing.
import { ChatBusError } from "../producer-sdk/src/errors.ts";
import { ensureSystemPackages } from "./system-packages.ts";

/** The pinned broker version; see the README ("Apache Kafka") for why 3.9. */
export const KAFKA_VERSION = "3.9.2";

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
const cacheRoot =
  process.env.CHATBUS_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "chatbus");
const libsDir = join(cacheRoot, `kafka-${KAFKA_VERSION}`, "libs");
const readyTimeoutMs = 90_000;

/**
 * A one-line, actionable failure of the local broker's setup; the CLI prints only its
 * message. Retryable only where waiting can help (Maven Central or the broker slow).
 */
export class KafkaSetupError extends ChatBusError<"CHATBUS_KAFKA_SETUP"> {
  constructor(message: string, options: { retryable?: boolean } = {}) {
    super("CHATBUS_KAFKA_SETUP", message, { retryable: options.retryable ?? false });
  }
}

function say(message: string): void {
  console.log(`chatbus: ${message}`);
}

/** "12.3 s" since `started`: every slow first-run step says how long it took. */
function seconds(started: number): string {
  return `${((Date.now() - started) / 1000).toFixed(1)} s`;
}

/** What to install per platform when `java` or `mvn` is missing and apt cannot be used. */
const javaMavenHelp =
  "Debian/Ubuntu: sudo apt-get install default-jre-headless maven; Fedora: sudo dnf install java-17-openjdk-headless maven; macOS (Homebrew): brew install openjdk@17 maven";

/**
 * The broker needs `java` and, to fetch its jars, `mvn`. When either is missing and
 * this runs as root on Debian or Ubuntu, install them with apt (as `npm test` does for
 * its test tools) and say so; otherwise fail with one line naming what to install.
 */
function ensureJavaAndMaven(): void {
  const missing = ensureSystemPackages([
    { command: "java", debian: "default-jre-headless", purpose: "run the Kafka broker" },
    { command: "mvn", debian: "maven", purpose: "fetch the Kafka jars from Maven Central" },
  ]);
  if (missing.length > 0) {
    throw new KafkaSetupError(`${missing.join(" and ")} not found on PATH; install them. ${javaMavenHelp}`);
  }
}

/** The classpath of the installed broker, installing it first when missing. */
export function installKafka(): string {
  if (existsSync(join(libsDir, `kafka_2.13-${KAFKA_VERSION}.jar`))) return `${libsDir}/*`;
  ensureJavaAndMaven();
  say(`installing Apache Kafka ${KAFKA_VERSION} from Maven Central into ${libsDir} (first run only) ...`);
  const installStarted = Date.now();
  const staging = `${libsDir}.partial-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  const mvn = spawnSync(
    "mvn",
    [
      "-q",
      "-B",
      "-f",
      join(repoRoot, "scripts", "kafka", "pom.xml"),
      `-Dkafka.version=${KAFKA_VERSION}`,
      "dependency:copy-dependencies",
      `-DoutputDirectory=${staging}`,
      "-DincludeScope=runtime",
    ],
    { stdio: ["ignore", "inherit", "inherit"] },
  );
  if (mvn.status !== 0) {
    throw new KafkaSetupError(
      `Maven could not resolve org.apache.kafka:kafka_2.13:${KAFKA_VERSION} (exit ${mvn.status}); check that Maven Central is reachable.`,
      { retryable: true },
    );
  }
  mkdirSync(dirname(libsDir), { recursive: true });
  rmSync(libsDir, { recursive: true, force: true });
  renameSync(staging, libsDir);
  say(`installed ${readdirSync(libsDir).length} jars in ${seconds(installStarted)}`);
  return `${libsDir}/*`;
}

/** Where one broker keeps its config, data, pid and log. */
export function brokerDir(port: number): string {
  return join(cacheRoot, `broker-${port}`);
}

/** Is something listening on 127.0.0.1:port? */
function portOpen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host, port });
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

/** True when the brokers answer a metadata request (not merely accept TCP). */
export async function kafkaAnswers(brokers: string[], timeoutMs = 3000): Promise<boolean> {
  const admin = new Kafka({
    clientId: "chatbus-probe",
    brokers,
    logLevel: logLevel.NOTHING,
    connectionTimeout: timeoutMs,
    requestTimeout: timeoutMs,
    retry: { retries: 0 },
  }).admin();
  try {
    await admin.connect();
    const cluster = await admin.describeCluster();
    return cluster.brokers.length > 0 && cluster.controller !== null && cluster.controller >= 0;
  } catch {
    return false;
  } finally {
    await admin.disconnect().catch(() => {});
  }
}

/** One KRaft node: a combined broker and controller. */
interface NodeSpec {
  nodeId: number;
  port: number;
  /** All voters of the quorum, e.g. `1@127.0.0.1:9093,2@127.0.0.1:9095`. */
  voters: string;
  /** Number of nodes in the cluster: sets internal topics' replication. */
  clusterSize: number;
}

function serverProperties(dir: string, node: NodeSpec): string {
  const replication = Math.min(node.clusterSize, 3);
  const minIsr = node.clusterSize >= 3 ? 2 : 1;
  return `# Written by scripts/kafka.ts: a KRaft node (broker + controller) for development and tests.
process.roles=broker,controller
node.id=${node.nodeId}
controller.quorum.voters=${node.voters}
listeners=PLAINTEXT://127.0.0.1:${node.port},CONTROLLER://127.0.0.1:${node.port + 1}
advertised.listeners=PLAINTEXT://127.0.0.1:${node.port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=${join(dir, "data")}
num.partitions=1
default.replication.factor=${replication}
min.insync.replicas=${minIsr}
# Internal topics must not ask for more replicas than there are brokers, or groups
# never find a coordinator (kafkajs #1752).
offsets.topic.replication.factor=${replication}
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=${replication}
transaction.state.log.min.isr=${minIsr}
# Tests create and join many groups; do not wait 3 s for more members to arrive.
group.initial.rebalance.delay.ms=0
# Topics are provisioned explicitly (producer SDK), so a typo never creates one.
auto.create.topics.enable=false
delete.topic.enable=true
`;
}

const log4jProperties = `log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
`;

function readPid(dir: string): number | undefined {
  const file = join(dir, "broker.pid");
  if (!existsSync(file)) return undefined;
  const pid = Number(readFileSync(file, "utf8").trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function lastLines(file: string, count: number): string {
  if (!existsSync(file)) return "";
  return readFileSync(file, "utf8").trimEnd().split("\n").slice(-count).join("\n");
}

export interface StartedBroker {
  /** `host:port` list for KAFKA_BROKERS. */
  brokers: string[];
  /** False when a broker was already answering on the port and was reused. */
  started: boolean;
  logFile: string;
}

/** Refuses ports held by something that is not our broker. */
async function checkPortsFree(port: number): Promise<void> {
  if (await portOpen("127.0.0.1", port)) {
    throw new KafkaSetupError(
      `port ${port} on 127.0.0.1 is taken by something that is not a Kafka broker; stop it, or set KAFKA_PORT to a free port.`,
    );
  }
  if (await portOpen("127.0.0.1", port + 1)) {
    throw new KafkaSetupError(
      `the KRaft controller port ${port + 1} on 127.0.0.1 is taken; stop what uses it, or set KAFKA_PORT to a free port.`,
    );
  }
}

/** Writes a node's config and formats its storage once; returns the java arguments that run it. */
function prepareNode(node: NodeSpec, classpath: string, clusterId: string): string[] {
  const dir = brokerDir(node.port);
  mkdirSync(dir, { recursive: true });
  const config = join(dir, "server.properties");
  writeFileSync(config, serverProperties(dir, node));
  writeFileSync(join(dir, "log4j.properties"), log4jProperties);
  const log4j = `-Dlog4j.configuration=file:${join(dir, "log4j.properties")}`;
  const meta = join(dir, "data", "meta.properties");
  // Storage formatted for another cluster (another size or id) cannot join this one.
  if (existsSync(meta) && !readFileSync(meta, "utf8").includes(`cluster.id=${clusterId}`)) {
    rmSync(join(dir, "data"), { recursive: true });
  }
  writeFileSync(join(dir, "cluster"), `${node.clusterSize}:${clusterId}`);
  if (!existsSync(meta)) {
    say(`formatting KRaft storage in ${join(dir, "data")}`);
    const format = spawnSync(
      "java",
      [
        log4j,
        "-cp",
        classpath,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        clusterId,
        "-c",
        config,
        "--ignore-formatted",
      ],
      { encoding: "utf8" },
    );
    if (format.status !== 0) {
      throw new KafkaSetupError(
        `formatting Kafka storage failed: ${(format.stderr || format.stdout).trim().split("\n").pop()}`,
      );
    }
  }
  return [
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-Djava.awt.headless=true",
    log4j,
    "-cp",
    classpath,
    "kafka.Kafka",
    config,
  ];
}

/** Starts a prepared node's JVM detached, logging to its folder; returns its pid. */
function launchNode(port: number, javaArgs: string[]): number {
  const dir = brokerDir(port);
  const out = openSync(join(dir, "kafka.log"), "a");
  const child = spawn("java", javaArgs, { detached: true, stdio: ["ignore", out, out] });
  child.unref();
  writeFileSync(join(dir, "broker.pid"), String(child.pid));
  writeFileSync(join(dir, "java.args"), JSON.stringify(javaArgs));
  return child.pid!;
}

/** Resolves once every broker answers; fails early when a JVM exits. */
async function waitReady(ports: number[], pids: number[]): Promise<void> {
  const deadline = Date.now() + readyTimeoutMs;
  const brokers = ports.map((p) => `127.0.0.1:${p}`);
  while (Date.now() < deadline) {
    pids.forEach((pid, i) => {
      if (!alive(pid)) {
        const log = join(brokerDir(ports[i]!), "kafka.log");
        throw new KafkaSetupError(
          `the Kafka broker on port ${ports[i]} exited during start-up; see ${log}:\n${lastLines(log, 5)}`,
        );
      }
    });
    const answers = await Promise.all(brokers.map((b) => kafkaAnswers([b], 2000)));
    if (answers.every(Boolean)) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new KafkaSetupError(
    `Kafka did not answer on ${brokers.join(",")} within ${readyTimeoutMs / 1000} s; see ${join(brokerDir(ports[0]!), "kafka.log")}`,
    { retryable: true },
  );
}

/** A Kafka cluster id: 16 random bytes, URL-safe base64 without padding. */
function newClusterId(): string {
  // base64url may start with "-", which kafka-storage's argument parser takes for an
  // option ("argument --cluster-id/-t: expected one argument"): one new cluster in 64
  // failed to format. Kafka's own Uuid.randomUuid() skips such ids the same way.
  for (;;) {
    const id = Buffer.from(randomUUID().replaceAll("-", ""), "hex").toString("base64url");
    if (!id.startsWith("-")) return id;
  }
}

/**
 * Starts a KRaft cluster of `size` nodes on 127.0.0.1 (node i listens on
 * basePort + 2(i-1), its controller one port above) unless Kafka already answers
 * on the first port, and resolves once every node answers metadata requests.
 * Size 1 is the default single-node broker; size 3 gives replication factor 3 and
 * min.insync.replicas=2.
 */
export async function startKafka(basePort = 9092, size = 1): Promise<StartedBroker> {
  const ports = Array.from({ length: size }, (_, i) => basePort + 2 * i);
  const brokers = ports.map((p) => `127.0.0.1:${p}`);
  const logFile = join(brokerDir(basePort), "kafka.log");
  if (await portOpen("127.0.0.1", basePort)) {
    if (await kafkaAnswers([brokers[0]!], 5000)) {
      say(`Kafka already answers on ${brokers[0]}; reusing it`);
      return { brokers, started: false, logFile };
    }
  }
  for (const port of ports) await checkPortsFree(port);
  const classpath = installKafka();
  const voters = ports.map((p, i) => `${i + 1}@127.0.0.1:${p + 1}`).join(",");
  // Keep the cluster id (and so the data) across restarts of a cluster of the same size.
  const marker = join(brokerDir(basePort), "cluster");
  const [previousSize, previousId] = existsSync(marker) ? readFileSync(marker, "utf8").split(":") : [];
  const clusterId = previousSize === String(size) && previousId ? previousId : newClusterId();
  const args = ports.map((port, i) =>
    prepareNode({ nodeId: i + 1, port, voters, clusterSize: size }, classpath, clusterId),
  );
  say(`starting Kafka ${KAFKA_VERSION} on ${brokers.join(",")} (log: ${logFile})`);
  const launched = Date.now();
  const pids = ports.map((port, i) => launchNode(port, args[i]!));
  await waitReady(ports, pids);
  say(`Kafka is ready on ${brokers.join(",")} after ${seconds(launched)}`);
  return { brokers, started: true, logFile };
}

/** Kills one node of a running cluster at once (failover tests). */
export function killBroker(port: number): void {
  const pid = readPid(brokerDir(port));
  if (pid !== undefined && alive(pid)) process.kill(pid, "SIGKILL");
}

/** Starts again a node that was killed or stopped, with the config it had; resolves when it answers. */
export async function restartBroker(port: number): Promise<void> {
  const argsFile = join(brokerDir(port), "java.args");
  if (!existsSync(argsFile))
    throw new KafkaSetupError(`no broker was ever started on port ${port}; start it with startKafka first.`);
  const pid = launchNode(port, JSON.parse(readFileSync(argsFile, "utf8")) as string[]);
  await waitReady([port], [pid]);
}

/** Stops the nodes this script started from basePort (SIGTERM, then SIGKILL after 30 s). */
export async function stopKafka(basePort = 9092, size = 1): Promise<boolean> {
  const stopped = await Promise.all(Array.from({ length: size }, (_, i) => stopNode(basePort + 2 * i)));
  return stopped.some(Boolean);
}

async function stopNode(port: number): Promise<boolean> {
  const dir = brokerDir(port);
  const pid = readPid(dir);
  if (pid === undefined || !alive(pid)) {
    rmSync(join(dir, "broker.pid"), { force: true });
    return false;
  }
  say(`stopping Kafka on 127.0.0.1:${port} (pid ${pid})`);
  process.kill(pid, "SIGTERM");
  const deadline = Date.now() + 30_000;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  if (alive(pid)) process.kill(pid, "SIGKILL");
  rmSync(join(dir, "broker.pid"), { force: true });
  return true;
}

const usage = `usage: tsx scripts/kafka.ts <command> [--port N] [--nodes N]

Runs the local Apache Kafka ${KAFKA_VERSION} broker (KRaft, single node) used by npm start and npm test.

commands:
  install   fetch the broker jars from Maven Central into ${libsDir}
  start     start the broker on 127.0.0.1:PORT (default 9092, or KAFKA_PORT) unless one answers there
  stop      stop the broker this script started on PORT
  status    say whether a broker answers on PORT

options:
  --port N   first broker port (default 9092, or KAFKA_PORT); node i uses PORT+2(i-1), its controller one above
  --nodes N  cluster size (default 1, or KAFKA_NODES); 3 gives replication factor 3 and min.insync.replicas=2

exit codes: 0 ok, 1 failed (one line says why), 2 bad usage`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === "--help" || command === "-h") {
    console.log(usage);
    return command ? 0 : 2;
  }
  let port = Number(process.env.KAFKA_PORT ?? 9092);
  let nodes = Number(process.env.KAFKA_NODES ?? 1);
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--port") port = Number(rest[++i]);
    else if (rest[i] === "--nodes") nodes = Number(rest[++i]);
    else {
      console.error(`unknown option ${rest[i]}\n\n${usage}`);
      return 2;
    }
  }
  if (!Number.isInteger(port) || port < 1 || port > 65534) {
    console.error(`--port must be an integer between 1 and 65534; got ${port}`);
    return 2;
  }
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 5) {
    console.error(`--nodes must be an integer between 1 and 5; got ${nodes}`);
    return 2;
  }
  switch (command) {
    case "install":
      installKafka();
      return 0;
    case "start":
      await startKafka(port, nodes);
      return 0;
    case "stop":
      if (!(await stopKafka(port, nodes))) say(`no broker started by chatbus runs on port ${port}`);
      return 0;
    case "status": {
      const up = await kafkaAnswers([`127.0.0.1:${port}`]);
      say(up ? `Kafka answers on 127.0.0.1:${port}` : `no Kafka broker answers on 127.0.0.1:${port}`);
      return up ? 0 : 1;
    }
    default:
      console.error(`unknown command ${command}\n\n${usage}`);
      return 2;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(`chatbus: ${error instanceof KafkaSetupError ? error.message : String(error)}`);
      process.exit(1);
    },
  );
}
