/**
 * `npm test`: the whole suite on a fresh clone. Installs the system packages the
 * tests use, lints, type-checks, then runs every vitest tier. The integration tiers'
 * global setup (test/support/global-setup.ts) brings up Kafka and the database.
 *
 * Extra arguments go to vitest, e.g. `npm test -- --project unit`.
 */
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureSystemPackages, testPackages } from "./system-packages.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name: string) => join(root, "node_modules", ".bin", name);

if (process.argv.includes("--help")) {
  console.log(`usage: npm test [-- <vitest arguments>]

Runs, in order: system package check (kcat, prometheus, curl, chromium), biome
lint, TypeScript type-check, the web page build, then vitest's unit, int and e2e projects. Kafka is started when
KAFKA_BROKERS is unset and none answers on 127.0.0.1:9092; DATABASE_URL defaults
to postgres://postgres@127.0.0.1:5432/chatbus, or an embedded PostgreSQL when nothing
answers there. Exit code 0 when everything passed.`);
  process.exit(0);
}

function step(title: string, command: string, args: string[]): void {
  const started = Date.now();
  console.log(`\nchatbus: ${title} ...`);
  const result = spawnSync(command, args, { cwd: root, stdio: "inherit" });
  if (result.status !== 0) {
    console.error(`chatbus: ${title} failed (exit ${result.status ?? result.signal}).`);
    process.exit(1);
  }
  console.log(`chatbus: ${title} passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

if (ensureSystemPackages(testPackages).length > 0) process.exit(1);
step("lint (biome)", bin("biome"), ["ci", "."]);
step("function length (150 lines)", bin("tsx"), ["scripts/function-length.ts"]);
step("type-check (tsc)", bin("tsc"), ["-b"]);
step("type-check tests, scripts and benchmarks", bin("tsc"), ["-p", "tsconfig.tools.json"]);
step("type-check the web pages", bin("tsc"), ["-p", "api/web/tsconfig.json"]);
step("build the web pages (vite)", "npm", ["run", "--silent", "-w", "api", "build:web"]);
step("tests (vitest: unit, int, e2e)", bin("vitest"), ["run", ...process.argv.slice(2)]);
