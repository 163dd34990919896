#!/usr/bin/env node
// Launcher of the `chatbus` command. In a source checkout it runs the TypeScript
// sources through tsx (no build step); an installed package runs the compiled dist.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const source = fileURLToPath(new URL("../src/cli/main.ts", import.meta.url));
let tsx;
try {
  tsx = createRequire(import.meta.url).resolve("tsx");
} catch {
  tsx = undefined;
}
if (existsSync(source) && tsx) {
  const child = spawn(
    process.execPath,
    ["--conditions=@chatbus/source", "--import", "tsx", source, ...process.argv.slice(2)],
    { stdio: "inherit" },
  );
  child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
} else {
  await import(new URL("../dist/cli/main.js", import.meta.url).href);
}
