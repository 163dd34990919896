/**
 * One circuit breaker per subscription: opossum behind a small interface of our own,
 * so that its types and errors do not leak. Only system failures count; a
 * BusinessError is the dependency answering (opossum's `errorFilter`).
 */
import { ChatBusError } from "@chatbus/producer-sdk";
import CircuitBreakerImpl from "opossum";
import { BusinessError } from "../errors.ts";

/** Breaker states as the status table and the API name them. */
export type BreakerState = "closed" | "open" | "halfOpen";

/** Breaker settings; defaults in `breakerDefaults`. */
export interface BreakerOptions {
  /** Open when more than this share of calls in the window failed (percent). */
  errorThresholdPercentage: number;
  /** Calls the window must hold before it can open at all. */
  volumeThreshold: number;
  /** Length of the rolling window (ms). */
  rollingWindowMs: number;
  /** Buckets the window is divided into. */
  rollingBuckets: number;
  /** How long it stays open before one probe is let through (ms). */
  resetTimeoutMs: number;
}

export const breakerDefaults: BreakerOptions = {
  errorThresholdPercentage: 50, // % of calls in the window
  volumeThreshold: 10, // calls
  rollingWindowMs: 10_000, // 10 s
  rollingBuckets: 10, // 1 s each
  resetTimeoutMs: 10_000, // 10 s
};

/**
 * Thrown by `fire` when the breaker is open (or a probe is already out); retryable:
 * the breaker lets a probe through after `resetTimeoutMs`.
 */
export class BreakerOpenError extends ChatBusError<"CHATBUS_BREAKER_OPEN"> {
  constructor(message: string) {
    super("CHATBUS_BREAKER_OPEN", message, { retryable: true });
  }
}

/** The runtime's view of a breaker. */
export interface CircuitBreaker {
  readonly state: BreakerState;
  /** Runs `action` through the breaker; rejects with BreakerOpenError when open. */
  fire<T>(action: () => Promise<T>): Promise<T>;
  /** Calls `listener` on every transition. */
  onTransition(listener: (to: BreakerState, from: BreakerState) => void): void;
  /** Resolves at the next transition. */
  nextTransition(): Promise<BreakerState>;
  shutdown(): void;
}

/** Creates a breaker named after its subscription. */
export function createCircuitBreaker(name: string, options: BreakerOptions): CircuitBreaker {
  const impl = new CircuitBreakerImpl((action: () => Promise<unknown>) => action(), {
    name,
    timeout: false,
    errorThresholdPercentage: options.errorThresholdPercentage,
    volumeThreshold: options.volumeThreshold,
    rollingCountTimeout: options.rollingWindowMs,
    rollingCountBuckets: options.rollingBuckets,
    resetTimeout: options.resetTimeoutMs,
    errorFilter: (error: unknown) => error instanceof BusinessError,
  });
  let state: BreakerState = "closed";
  const listeners: ((to: BreakerState, from: BreakerState) => void)[] = [];
  let waiters: ((to: BreakerState) => void)[] = [];
  const move = (to: BreakerState) => {
    if (to === state) return;
    const from = state;
    state = to;
    for (const listener of listeners) listener(to, from);
    const woken = waiters;
    waiters = [];
    for (const wake of woken) wake(to);
  };
  impl.on("open", () => move("open"));
  impl.on("halfOpen", () => move("halfOpen"));
  impl.on("close", () => move("closed"));
  return {
    get state() {
      return state;
    },
    async fire<T>(action: () => Promise<T>): Promise<T> {
      try {
        return (await impl.fire(action)) as T;
      } catch (error) {
        if ((error as { code?: string }).code === "EOPENBREAKER") {
          throw new BreakerOpenError(`the circuit breaker of subscription "${name}" is open`);
        }
        throw error;
      }
    },
    onTransition(listener) {
      listeners.push(listener);
    },
    nextTransition() {
      return new Promise((resolve) => waiters.push(resolve));
    },
    shutdown() {
      impl.shutdown();
      const woken = waiters;
      waiters = [];
      for (const wake of woken) wake(state);
    },
  };
}
