/**
 * @platformatic/kafka for the producer benchmark's comparison row and for the SDK's
 * optional "platformatic" backend in tests. It is not a dependency of the repository:
 * its dependencies ask for Node ≥ 22.19, so as a devDependency every `npm ci` on Node
 * 20 printed engine warnings (docs/decisions.md). It installs on first use into
 * ~/.cache/chatbus/bench-deps (like the Kafka jars for the Java perf tool); the
 * benchmark imports it from there, and `linkPlatformatic` links it into this
 * checkout's node_modules so that the SDK's `import("@platformatic/kafka")` finds it.
 *
 *   npx tsx scripts/platformatic-kafka.ts    # install (first run) and link
 */
import { spawnSync } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, readlinkSync, rmSync, symlinkSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** The version measured in docs/benchmarks.md and tested as the SDK's backend. */
export const platformaticVersion = "1.35.0";
const dir = join(homedir(), ".cache", "chatbus", "bench-deps", `platformatic-kafka-${platformaticVersion}`);
const packageDir = join(dir, "node_modules", "@platformatic", "kafka");
const entry = join(packageDir, "dist", "index.js");
const repository = resolve(dirname(fileURLToPath(import.meta.url)), "..");

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

/** Installs @platformatic/kafka into the cache on first use; returns its package directory. */
export function installPlatformatic(): string {
  if (existsSync(entry)) return packageDir;
  mkdirSync(dir, { recursive: true });
  const started = Date.now();
  process.stdout.write(
    `installing @platformatic/kafka ${platformaticVersion} into ${dir} (first run only) ...\n`,
  );
  const npm = spawnSync(
    "npm",
    [
      "install",
      "--prefix",
      dir,
      "--no-save",
      "--no-package-lock",
      "--loglevel=error",
      `@platformatic/kafka@${platformaticVersion}`,
    ],
    { stdio: "inherit" },
  );
  if (npm.status !== 0)
    throw new Error(`npm install @platformatic/kafka@${platformaticVersion} failed (exit ${npm.status})`);
  process.stdout.write(`installed in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  return packageDir;
}

/** Installs @platformatic/kafka into the cache on first use and imports it. */
export async function loadPlatformatic(): Promise<PlatformaticKafka> {
  installPlatformatic();
  return (await import(pathToFileURL(entry).href)) as PlatformaticKafka;
}

/**
 * Installs (first run) and links the cached package to node_modules/@platformatic/kafka
 * of this checkout. Node resolves the link to its real path, so the package's own
 * dependencies come from the cache too. A link left by an older version is replaced.
 */
export function linkPlatformatic(): void {
  const target = installPlatformatic();
  const link = join(repository, "node_modules", "@platformatic", "kafka");
  const current = lstatSync(link, { throwIfNoEntry: false });
  if (current?.isSymbolicLink() && readlinkSync(link) === target) return;
  if (current) rmSync(link, { recursive: true, force: true });
  mkdirSync(dirname(link), { recursive: true });
  symlinkSync(target, link, "dir");
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  linkPlatformatic();
  process.stdout.write(`@platformatic/kafka ${platformaticVersion} linked into ${repository}/node_modules\n`);
}
