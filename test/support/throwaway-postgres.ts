/**
 * A PostgreSQL cluster of a test's own (initdb + pg_ctl on a private port, data under
 * /tmp) that the test may stop, restart or kill without touching the shared server.
 * Runs as the `postgres` user when we are root, because initdb refuses root.
 */
import { spawnSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const bin = process.env.PG_BIN ?? "/usr/lib/postgresql/15/bin";

export interface ThrowawayPostgres {
  port: number;
  /** Connection string of its `postgres` database. */
  url: string;
  start(): void;
  /** `fast` disconnects clients and shuts down cleanly; `immediate` is a crash. */
  stop(mode?: "fast" | "immediate"): void;
  /** Stops the cluster and deletes its data. */
  destroy(): void;
}

function run(command: string, args: string[]): void {
  const asRoot = process.getuid?.() === 0;
  const result = asRoot
    ? spawnSync("runuser", ["-u", "postgres", "--", join(bin, command), ...args], { encoding: "utf8" })
    : spawnSync(join(bin, command), args, { encoding: "utf8" });
  if (result.status !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} failed: ${(result.stderr || result.stdout || String(result.error)).trim()}`,
    );
  }
}

/** Creates and starts a cluster on `port`. */
export function createThrowawayPostgres(port: number): ThrowawayPostgres {
  if (!existsSync(join(bin, "initdb"))) {
    throw new Error(
      `PostgreSQL server binaries were not found in ${bin}; set PG_BIN to the folder with initdb and pg_ctl.`,
    );
  }
  const dataDir = mkdtempSync(join(tmpdir(), `chatbus-pg-${port}-`));
  if (process.getuid?.() === 0) {
    const { uid, gid } = lookupPostgresUser();
    chownSync(dataDir, uid, gid);
  }
  run("initdb", ["-D", dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
  const cluster: ThrowawayPostgres = {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    start: () => {
      const args = [
        "-D",
        dataDir,
        "-l",
        join(dataDir, "server.log"),
        "-o",
        `-p ${port} -k /tmp -c fsync=off`,
      ];
      // The port can be briefly held as an ephemeral port of some client on a busy
      // machine ("Address already in use"): retry for a while.
      for (let attempt = 1; ; attempt++) {
        try {
          run("pg_ctl", [...args, "-w", "start"]);
          return;
        } catch (error) {
          if (attempt >= 20) throw error;
          spawnSync("sleep", ["1"]);
        }
      }
    },
    stop: (mode = "fast") => run("pg_ctl", ["-D", dataDir, "-m", mode, "-w", "stop"]),
    destroy: () => {
      try {
        cluster.stop("immediate");
      } catch {
        // already stopped
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  cluster.start();
  return cluster;
}

function lookupPostgresUser(): { uid: number; gid: number } {
  const id = (flag: string) =>
    Number(spawnSync("id", [flag, "postgres"], { encoding: "utf8" }).stdout.trim());
  return { uid: id("-u"), gid: id("-g") };
}
