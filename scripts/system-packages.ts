/**
 * Debian packages that tests and tools run as real external clients: kcat (reads and
 * writes raw records), promtool and prometheus (alert rule tests), curl (SSE client),
 * chromium (web page tests) and nginx (the load balancer in front of two API processes). Installed with
 * apt-get when missing, so that `npm test` works on a fresh machine.
 */
import { spawnSync } from "node:child_process";

interface SystemPackage {
  /** A command the package puts on PATH. */
  command: string;
  /** The Debian package that provides it. */
  debian: string;
  /** Why chatbus needs it. */
  purpose: string;
}

export const testPackages: SystemPackage[] = [
  { command: "kcat", debian: "kcat", purpose: "produce and read raw Kafka records in tests" },
  { command: "promtool", debian: "prometheus", purpose: "check and unit-test the Prometheus alert rules" },
  { command: "curl", debian: "curl", purpose: "follow the SSE stream as a client nobody here wrote" },
  { command: "chromium", debian: "chromium", purpose: "test the web pages in a real browser" },
  {
    command: "nginx",
    debian: "nginx-light",
    purpose: "put a real load balancer in front of two API processes",
  },
];

function present(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

/**
 * Installs the missing packages. Returns the commands still missing afterwards
 * (e.g. when not root); the caller decides whether that is fatal.
 */
export function ensureSystemPackages(packages: SystemPackage[]): string[] {
  const missing = packages.filter((p) => !present(p.command));
  if (missing.length === 0) return [];
  const names = [...new Set(missing.map((p) => p.debian))];
  const canInstall = process.getuid?.() === 0 && present("apt-get");
  if (canInstall) {
    console.log(
      `chatbus: installing Debian packages ${names.join(", ")} (${missing.map((p) => p.purpose).join("; ")}) ...`,
    );
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    spawnSync("apt-get", ["update", "-qq"], { stdio: "inherit", env });
    // --no-install-recommends keeps prometheus from pulling in exporters we do not use.
    spawnSync("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...names], {
      stdio: "inherit",
      env,
    });
  }
  const still = missing.filter((p) => !present(p.command));
  for (const p of still) {
    console.error(
      `chatbus: ${p.command} is missing; install the Debian package "${p.debian}" (apt-get install ${p.debian}) to ${p.purpose}.`,
    );
  }
  return still.map((p) => p.command);
}
