/**
 * The fence of a rebalance or a consumer restart (issue 20). Handlers run outside
 * kafkajs's batch calls, so the runtime fences them itself before the group is
 * rejoined (or the consumer restarted): no new call starts (`active`), running calls
 * get their signal aborted and are awaited up to `boundMs`, and what finished before
 * is committed (kafkajs #28). Results of the aborted calls are discarded (never
 * committed). The fence ends with the next assignment.
 */
import { within } from "@chatbus/producer-sdk/internal";
import type { Logger } from "pino";
import { RunningCalls } from "./handler-call.ts";
import type { ResolvedRuntimeOptions } from "./options.ts";

/**
 * How long a fence waits for aborted calls before it gives up on them (ms), and how
 * long a new generation's event waits for a fenced call of its conversation: the
 * rebalance timeout less 10 s (at least 1 s).
 */
export function fenceBoundMs(config: Pick<ResolvedRuntimeOptions, "rebalanceTimeoutMs">): number {
  return Math.max(1000, config.rebalanceTimeoutMs - 10_000);
}

/** The fence of one rebalance or restart: done once running calls settled (bounded) and commits ran. */
export interface Fence {
  promise: Promise<void>;
  done: boolean;
  startedAt: number;
}

/** What a fence needs from its runtime. */
export interface FencingOptions {
  calls: RunningCalls;
  logger: Logger;
  /** How long a fence waits for aborted calls before it gives up on them (ms). */
  boundMs: number;
  /** Commits what finished; never throws. */
  commit: () => Promise<void>;
}

/** The current fence, and the waiters for its end. */
export class Fencing {
  #options: FencingOptions;
  /** The fence of the current rebalance or restart (null while consuming normally). */
  #current: Fence | null = null;
  #active = false;
  #settled = deferred();

  constructor(options: FencingOptions) {
    this.#options = options;
  }

  /** True from a fence's start to the next assignment: no new call starts. */
  get active(): boolean {
    return this.#active;
  }

  /** The fence being waited for, if any. */
  get current(): Fence | null {
    return this.#current;
  }

  /** Resolves when the fence ends (the next assignment), or on stop. */
  whenOver(): Promise<void> {
    return this.#settled.promise;
  }

  /** Starts the fence (idempotent per rebalance); `why` is for the logs. */
  start(why: string): Fence {
    if (this.#current) return this.#current;
    this.#active = true;
    const { calls, logger, boundMs: bound, commit } = this.#options;
    const startedAt = Date.now();
    const aborted = calls.abortAll("fence");
    const running = aborted.length;
    const created: Fence = {
      done: false,
      startedAt,
      promise: (async () => {
        const settledInTime = await within(
          RunningCalls.whenSettled(aborted).then(() => true),
          bound,
          () => false,
        );
        if (!settledInTime) {
          logger.warn(
            { running: calls.size, boundMs: bound },
            `handlers ignored their aborted ctx.signal for ${bound} ms; going on (${why}) without them, their results are discarded`,
          );
        }
        await commit();
      })(),
    };
    void created.promise.then(() => {
      created.done = true;
      logger.info({ why, running, ms: Date.now() - startedAt }, "in-flight work fenced");
    });
    this.#current = created;
    return created;
  }

  /**
   * A new assignment ends the fence. Normally it was fenced already (REBALANCING); an
   * eviction rejoins without that event: abort what still runs so that it cannot
   * overlap the new owner for long.
   */
  assigned(): void {
    if (!this.#current && this.#options.calls.size > 0) this.start("assignment");
    this.#current = null;
    this.#active = false;
    this.#release();
  }

  /** Stop: nothing waits for a fence any more. */
  stop(): void {
    this.#settled.resolve();
  }

  #release(): void {
    this.#settled.resolve();
    this.#settled = deferred();
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}
