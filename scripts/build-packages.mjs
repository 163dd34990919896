#!/usr/bin/env node
// `npm install`'s prepare step: compiles the three packages into their dist/ folders
// (tsc -b), so that `import ... from "@chatbus/producer-sdk"` works with plain node
// right after installing, as the README's first snippet does. Plain JavaScript so
// that it runs before anything else is set up; says what it does and how long it took.
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Runs `tsc -b` at the repository root; returns its exit status. */
export function buildPackages() {
  const started = Date.now();
  console.log("chatbus: building the packages (tsc -b: producer-sdk, consumer-runtime, api) ...");
  const tsc = spawnSync(join(root, "node_modules", ".bin", "tsc"), ["-b"], { cwd: root, stdio: "inherit" });
  if (tsc.status !== 0) {
    console.error(
      `chatbus: building the packages failed (tsc -b exit ${tsc.status ?? tsc.signal}); see the errors above.`,
    );
    return 1;
  }
  console.log(`chatbus: packages built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) process.exit(buildPackages());
