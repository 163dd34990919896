#!/usr/bin/env node
// Entry point of `npm start` and `npm test` on a fresh clone: installs the npm
// dependencies when they are missing or older than the lockfile, then hands over
// to the TypeScript script of the same name. Plain JavaScript because nothing
// (not even tsx) is installed when it runs.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildPackages } from "./build-packages.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const [command, ...rest] = process.argv.slice(2);
if (!command || command === "--help" || command === "-h") {
  console.log(
    "usage: node scripts/bootstrap.mjs <start|test> [args...]\n\nInstalls npm dependencies when needed, then runs scripts/<command>.ts.",
  );
  process.exit(command ? 0 : 2);
}

const marker = join(root, "node_modules", ".package-lock.json");
const lock = join(root, "package-lock.json");
if (!existsSync(marker) || statSync(marker).mtimeMs < statSync(lock).mtimeMs) {
  console.log("chatbus: installing npm dependencies (npm ci; its prepare step builds the packages) ...");
  const installStarted = Date.now();
  const npm = spawnSync("npm", ["ci", "--no-audit", "--no-fund"], { cwd: root, stdio: "inherit" });
  if (npm.status !== 0) {
    console.error(
      `chatbus: npm ci failed with exit code ${npm.status}; check that the npm registry is reachable and try again.`,
    );
    process.exit(1);
  }
  console.log(
    `chatbus: npm dependencies installed in ${((Date.now() - installStarted) / 1000).toFixed(1)} s`,
  );
}

// npm ci's prepare step built the packages; an incremental `tsc -b` (about a second
// when nothing changed) keeps dist/ current after a pull that left the lockfile alone,
// so that plain-node imports of @chatbus/* see the sources of this checkout.
if (command === "start" && buildPackages() !== 0) process.exit(1);

// node with tsx's loader rather than the tsx command: the tsx command relays a
// terminal's Ctrl-C to its child and then exits on its own a moment later, which
// killed `npm start` while it was still stopping the broker (issue 14.2).
const child = spawn(
  process.execPath,
  ["--import", "tsx", "--conditions=@chatbus/source", join(root, "scripts", `${command}.ts`), ...rest],
  { cwd: root, stdio: "inherit" },
);
// A terminal's Ctrl-C reaches the whole process group (the child too); a process
// manager or `kill` may signal only this process. Forward each signal so that the
// child always hears it (its shutdown is idempotent), then wait for it to finish.
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal));
// `kill <npm pid>`: npm relays SIGTERM to the `sh -c` running this script, and sh
// dies without passing it on. Linux has no parent-death signal for node, so notice
// being orphaned (the parent pid changes) and stop the child as if signalled.
const parent = process.ppid;
const orphanCheck = setInterval(() => {
  if (process.ppid !== parent) {
    clearInterval(orphanCheck);
    child.kill("SIGTERM");
  }
}, 500);
orphanCheck.unref();
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
