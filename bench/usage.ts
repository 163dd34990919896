import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/**
 * `--help` for a bench: prints the file's header comment (what it measures, its command
 * and options, which each bench documents there) and exits; without `--help`, nothing.
 */
export function helpFromHeader(moduleUrl: string): void {
  if (!process.argv.includes("--help")) return;
  const text = readFileSync(fileURLToPath(moduleUrl), "utf8");
  const header = /^\/\*\*([\s\S]*?)\*\//.exec(text)?.[1] ?? "";
  console.log(
    header
      .split("\n")
      .map((line) => line.replace(/^\s*\* ?/, ""))
      .join("\n")
      .trim(),
  );
  process.exit(0);
}
