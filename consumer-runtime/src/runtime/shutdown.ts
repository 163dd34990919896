/**
 * Graceful shutdown on SIGTERM/SIGINT: stop every runtime (stop fetching, finish
 * in-flight handlers up to their deadline, commit, leave the group), then exit.
 */
import type { Logger } from "pino";

/** Anything with a graceful `stop()`. */
export interface Stoppable {
  stop(): Promise<void>;
}

export interface ShutdownOptions {
  logger?: Logger;
  /** Signals to handle; default SIGTERM and SIGINT. */
  signals?: NodeJS.Signals[];
  /** Exit the process when done (default true); a second signal exits at once. */
  exit?: boolean;
  /** Hard limit for the whole shutdown before exiting with code 1 (ms, default 30 000). */
  timeoutMs?: number;
}

/**
 * Installs signal handlers that stop `targets` in order. Returns a function that
 * removes the handlers again.
 */
export function stopOnSignals(targets: Stoppable[], options: ShutdownOptions = {}): () => void {
  const signals = options.signals ?? ["SIGTERM", "SIGINT"];
  const exit = options.exit ?? true;
  const timeoutMs = options.timeoutMs ?? 30_000;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      options.logger?.warn(`${signal} again: exiting now`);
      if (exit) process.exit(1);
      return;
    }
    stopping = true;
    options.logger?.info(`${signal}: stopping gracefully`);
    const hard = setTimeout(() => {
      options.logger?.error(`shutdown took longer than ${timeoutMs} ms; exiting`);
      if (exit) process.exit(1);
    }, timeoutMs);
    hard.unref();
    void (async () => {
      let code = 0;
      for (const target of targets) {
        try {
          await target.stop();
        } catch (error) {
          code = 1;
          options.logger?.error({ err: error }, "stopping failed");
        }
      }
      clearTimeout(hard);
      if (exit) process.exit(code);
    })();
  };
  for (const signal of signals) process.on(signal, onSignal);
  return () => {
    for (const signal of signals) process.off(signal, onSignal);
  };
}
