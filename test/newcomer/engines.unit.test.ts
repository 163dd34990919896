/**
 * A newcomer's `npm ci` prints no engine warning (issue 14.8): every package the
 * lock file installs accepts the Node versions we promise, the lowest one in our
 * `engines` and the current LTS that CI also runs. npm prints EBADENGINE for exactly
 * these ranges, so checking the lock file catches a new warning before anyone installs.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import semver from "semver";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..", "..");
const readJson = (file: string) => JSON.parse(readFileSync(join(root, file), "utf8"));

interface LockEntry {
  engines?: { node?: string } | string[];
  optional?: boolean;
  os?: string[];
  cpu?: string[];
}

/** Installed packages with their `engines.node`, skipping other platforms' optional binaries. */
function enginesOfLock(): [string, string][] {
  const lock = readJson("package-lock.json") as { packages: Record<string, LockEntry> };
  return Object.entries(lock.packages).flatMap(([path, entry]) => {
    const range = Array.isArray(entry.engines) ? undefined : entry.engines?.node;
    const elsewhere =
      entry.optional && (entry.os?.includes("linux") === false || entry.cpu?.includes("x64") === false);
    return range === undefined || path === "" || elsewhere ? [] : [[path, range] as [string, string]];
  });
}

describe("engines", () => {
  const ours = (readJson("package.json") as { engines: { node: string } }).engines.node;
  const promised = [semver.minVersion(ours)!.version, "24.11.0"];

  it.each(promised)("every locked package accepts Node %s", (version) => {
    const refusing = enginesOfLock()
      .filter(([, range]) => !semver.satisfies(version, range))
      .map(([path, range]) => `${path.replace(/^.*node_modules\//, "")} wants node ${range}`);
    expect(refusing).toEqual([]);
  });
});
