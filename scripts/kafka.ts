/**
 * Installs and runs the local Apache Kafka broker (KRaft, single node by default).
 *
 * The official jars come from Maven Central through Maven (scripts/kafka/pom.xml)
 * into a cache folder outside git; the broker's data, config, pid and log live next
 * to them, keyed by port, so any clone of the repository can stop a broker another
 * one started. Used by `npm start`, the test setup and by hand:
 *
 *   npx tsx scripts/kafka.ts start|stop|status|install [--port 9092]
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

/** The pinned broker version; see the README ("Apache Kafka") for why 3.9. */
export const KAFKA_VERSION = "3.9.2";

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
const cacheRoot =
  process.env.CHATBUS_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "chatbus");
const libsDir = join(cacheRoot, `kafka-${KAFKA_VERSION}`, "libs");
const readyTimeoutMs = 90_000;

/** A one-line, actionable failure; the CLI prints only its message. */
export class KafkaSetupError extends Error {
  override name = "KafkaSetupError";
}

function say(message: string): void {
  console.log(`chatbus: ${message}`);
}

function hasCommand(command: string, args: string[]): boolean {
  return spawnSync(command, args, { stdio: "ignore" }).status === 0;
}

/** The classpath of the installed broker, installing it first when missing. */
export function installKafka(): string {
  if (existsSync(join(libsDir, `kafka_2.13-${KAFKA_VERSION}.jar`))) return `${libsDir}/*`;
  if (!hasCommand("java", ["-version"])) {
    throw new KafkaSetupError(
      "Java was not found on PATH; install a JDK 17 or newer (apt-get install openjdk-17-jdk-headless).",
    );
  }
  if (!hasCommand("mvn", ["-v"])) {
    throw new KafkaSetupError(
      "Maven (mvn) was not found on PATH; install it (apt-get install maven) so that Kafka can be fetched from Maven Central.",
    );
  }
  say(`installing Apache Kafka ${KAFKA_VERSION} from Maven Central into ${libsDir} (first run only) ...`);
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
    );
  }
  mkdirSync(dirname(libsDir), { recursive: true });
  rmSync(libsDir, { recursive: true, force: true });
  renameSync(staging, libsDir);
  say(`installed ${readdirSync(libsDir).length} jars`);
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

function serverProperties(dir: string, port: number, controllerPort: number): string {
  return `# Written by scripts/kafka.ts: a single-node KRaft broker for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${controllerPort}
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=${join(dir, "data")}
num.partitions=1
# One node: internal topics must have replication factor 1 or groups never find a coordinator.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
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

/**
 * Starts the single-node broker on 127.0.0.1:port unless a Kafka broker already
 * answers there, and resolves once it answers metadata requests.
 */
export async function startKafka(port = 9092): Promise<StartedBroker> {
  const controllerPort = port + 1;
  const dir = brokerDir(port);
  const logFile = join(dir, "kafka.log");
  const brokers = [`127.0.0.1:${port}`];
  if (await portOpen("127.0.0.1", port)) {
    if (await kafkaAnswers(brokers, 5000)) {
      say(`Kafka already answers on 127.0.0.1:${port}; reusing it`);
      return { brokers, started: false, logFile };
    }
    throw new KafkaSetupError(
      `port ${port} on 127.0.0.1 is taken by something that is not a Kafka broker; stop it, or set KAFKA_PORT to a free port.`,
    );
  }
  if (await portOpen("127.0.0.1", controllerPort)) {
    throw new KafkaSetupError(
      `the KRaft controller port ${controllerPort} on 127.0.0.1 is taken; stop what uses it, or set KAFKA_PORT to a free port.`,
    );
  }
  const classpath = installKafka();
  mkdirSync(dir, { recursive: true });
  const config = join(dir, "server.properties");
  writeFileSync(config, serverProperties(dir, port, controllerPort));
  writeFileSync(join(dir, "log4j.properties"), log4jProperties);
  const log4j = `-Dlog4j.configuration=file:${join(dir, "log4j.properties")}`;
  if (!existsSync(join(dir, "data", "meta.properties"))) {
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
        randomUUID().replaceAll("-", "").slice(0, 22),
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
  say(`starting Kafka ${KAFKA_VERSION} on 127.0.0.1:${port} (log: ${logFile})`);
  const out = openSync(logFile, "a");
  const child = spawn(
    "java",
    [
      "-Xms256m",
      "-Xmx1g",
      "-XX:+UseG1GC",
      "-Djava.awt.headless=true",
      log4j,
      "-cp",
      classpath,
      "kafka.Kafka",
      config,
    ],
    { detached: true, stdio: ["ignore", out, out] },
  );
  child.unref();
  writeFileSync(join(dir, "broker.pid"), String(child.pid));
  const deadline = Date.now() + readyTimeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || !alive(child.pid!)) {
      throw new KafkaSetupError(
        `the Kafka broker exited during start-up; see ${logFile}:\n${lastLines(logFile, 5)}`,
      );
    }
    if (await kafkaAnswers(brokers, 2000)) {
      say(`Kafka is ready on 127.0.0.1:${port}`);
      return { brokers, started: true, logFile };
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new KafkaSetupError(
    `Kafka did not answer on 127.0.0.1:${port} within ${readyTimeoutMs / 1000} s; see ${logFile}`,
  );
}

/** Stops the broker this script started on the port (SIGTERM, then SIGKILL after 30 s). */
export async function stopKafka(port = 9092): Promise<boolean> {
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

const usage = `usage: tsx scripts/kafka.ts <command> [--port N]

Runs the local Apache Kafka ${KAFKA_VERSION} broker (KRaft, single node) used by npm start and npm test.

commands:
  install   fetch the broker jars from Maven Central into ${libsDir}
  start     start the broker on 127.0.0.1:PORT (default 9092, or KAFKA_PORT) unless one answers there
  stop      stop the broker this script started on PORT
  status    say whether a broker answers on PORT

exit codes: 0 ok, 1 failed (one line says why), 2 bad usage`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === "--help" || command === "-h") {
    console.log(usage);
    return command ? 0 : 2;
  }
  let port = Number(process.env.KAFKA_PORT ?? 9092);
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--port") port = Number(rest[++i]);
    else {
      console.error(`unknown option ${rest[i]}\n\n${usage}`);
      return 2;
    }
  }
  if (!Number.isInteger(port) || port < 1 || port > 65534) {
    console.error(`--port must be an integer between 1 and 65534; got ${port}`);
    return 2;
  }
  switch (command) {
    case "install":
      installKafka();
      return 0;
    case "start":
      await startKafka(port);
      return 0;
    case "stop":
      if (!(await stopKafka(port))) say(`no broker started by chatbus runs on port ${port}`);
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
