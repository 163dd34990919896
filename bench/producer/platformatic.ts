/**
 * Loads @platformatic/kafka for the producer benchmark's comparison row. It is not a
 * dependency of the repository: its current line (and its own dependencies) ask for
 * Node ≥ 22.19, so as a devDependency every `npm ci` on Node 20 printed engine
 * warnings for a package only this benchmark uses. The benchmark installs it on first
 * use into ~/.cache/chatbus/bench-deps (like the Kafka jars for the Java perf tool)
 * and imports it from there.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

/** The version measured in docs/benchmarks.md. */
const version = "1.35.0";
const dir = join(homedir(), ".cache", "chatbus", "bench-deps", `platformatic-kafka-${version}`);
const entry = join(dir, "node_modules", "@platformatic", "kafka", "dist", "index.js");

/** The parts of @platformatic/kafka the benchmark uses. */
export interface PlatformaticKafka {
  Producer: new (
    options: Record<string, unknown>,
  ) => {
    send(request: { messages: unknown[] }): Promise<unknown>;
    close(): Promise<void>;
  };
  ProduceAcks: { ALL: number };
  stringSerializers: unknown;
}

/** Installs @platformatic/kafka into the cache on first use and imports it. */
export async function loadPlatformatic(): Promise<PlatformaticKafka> {
  if (!existsSync(entry)) {
    mkdirSync(dir, { recursive: true });
    const started = Date.now();
    process.stdout.write(`installing @platformatic/kafka ${version} into ${dir} (first run only) ...\n`);
    const npm = spawnSync(
      "npm",
      [
        "install",
        "--prefix",
        dir,
        "--no-save",
        "--no-package-lock",
        "--loglevel=error",
        `@platformatic/kafka@${version}`,
      ],
      { stdio: "inherit" },
    );
    if (npm.status !== 0)
      throw new Error(`npm install @platformatic/kafka@${version} failed (exit ${npm.status})`);
    process.stdout.write(`installed in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  }
  return (await import(pathToFileURL(entry).href)) as PlatformaticKafka;
}
