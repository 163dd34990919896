/**
 * One circuit breaker per subscription. Only system failures count; a BusinessError
 * is the dependency answering (it counts as a success).
 *
 * Our own, with opossum 9's semantics (which it replaced, decisions.md): a rolling
 * window of `rollingBuckets` buckets counts calls and failures; a failure opens it
 * when the window holds at least `volumeThreshold` calls and more than
 * `errorThresholdPercentage` of them failed; after `resetTimeoutMs` it is half-open
 * and lets exactly one call through, whose success closes it and whose failure opens
 * it again. opossum cost more per handler call than the rest of the runtime's
 * bookkeeping (two EventEmitter events, two promises, a latency array that every
 * failure copied and sorted); here a call is a few counter updates, made
 * synchronously by the runner (`enter`, `succeeded`, `failed`), so no promise wraps it.
 */
import { ChatBusError } from "@chatbus/producer-sdk";
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
 * Thrown by `fire` (and `enter`) when the breaker is open (or a probe is already
 * out); retryable: the breaker lets a probe through after `resetTimeoutMs`.
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
  /**
   * The first half of `fire`, for a caller that runs the call itself: counts a call
   * and throws BreakerOpenError when it may not run. Every admitted call must end in
   * exactly one `succeeded` or `failed`.
   */
  enter(): void;
  /** An admitted call succeeded. */
  succeeded(): void;
  /** An admitted call failed with `error` (a BusinessError counts as a success). */
  failed(error: unknown): void;
  /** Calls `listener` on every transition. */
  onTransition(listener: (to: BreakerState, from: BreakerState) => void): void;
  /** Resolves at the next transition. */
  nextTransition(): Promise<BreakerState>;
  shutdown(): void;
}

/** One time slice of the rolling window. */
interface Bucket {
  calls: number;
  failures: number;
}

/** Creates a breaker named after its subscription. */
export function createCircuitBreaker(name: string, options: BreakerOptions): CircuitBreaker {
  return new RollingWindowBreaker(name, options);
}

class RollingWindowBreaker implements CircuitBreaker {
  #state: BreakerState = "closed";
  /** Half-open and its one probe not yet let through. */
  #probeFree = false;
  #shutdown = false;
  /** Newest bucket first; rotated every `rollingWindowMs / rollingBuckets`. */
  #window: Bucket[];
  #rotation: NodeJS.Timeout;
  #resetTimer: NodeJS.Timeout | undefined;
  #listeners: ((to: BreakerState, from: BreakerState) => void)[] = [];
  #waiters: ((to: BreakerState) => void)[] = [];

  constructor(
    readonly name: string,
    readonly options: BreakerOptions,
  ) {
    this.#window = Array.from({ length: options.rollingBuckets }, () => ({ calls: 0, failures: 0 }));
    this.#rotation = setInterval(
      () => {
        this.#window.pop();
        this.#window.unshift({ calls: 0, failures: 0 });
      },
      Math.floor(options.rollingWindowMs / options.rollingBuckets),
    );
    this.#rotation.unref();
  }

  get state(): BreakerState {
    return this.#state;
  }

  async fire<T>(action: () => Promise<T>): Promise<T> {
    this.enter();
    let result: T;
    try {
      result = await action();
    } catch (error) {
      this.failed(error);
      throw error;
    }
    this.succeeded();
    return result;
  }

  enter(): void {
    if (this.#shutdown)
      throw Object.assign(new Error("The circuit has been shutdown."), { code: "ESHUTDOWN" });
    // A refused call counts in the window too, as it did with opossum.
    this.#window[0]!.calls++;
    if (this.#state === "closed") return;
    if (this.#state === "halfOpen" && this.#probeFree) {
      this.#probeFree = false;
      return;
    }
    throw new BreakerOpenError(`the circuit breaker of subscription "${this.name}" is open`);
  }

  succeeded(): void {
    if (this.#state === "halfOpen") this.#close();
  }

  failed(error: unknown): void {
    if (error instanceof BusinessError) {
      this.succeeded();
      return;
    }
    this.#window[0]!.failures++;
    if (this.#shutdown) return;
    if (this.#state === "halfOpen") {
      this.#open();
      return;
    }
    let calls = 0;
    let failures = 0;
    for (const bucket of this.#window) {
      calls += bucket.calls;
      failures += bucket.failures;
    }
    if (calls < this.options.volumeThreshold) return;
    if ((failures / calls) * 100 > this.options.errorThresholdPercentage) this.#open();
  }

  onTransition(listener: (to: BreakerState, from: BreakerState) => void): void {
    this.#listeners.push(listener);
  }

  nextTransition(): Promise<BreakerState> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  shutdown(): void {
    this.#shutdown = true;
    clearInterval(this.#rotation);
    clearTimeout(this.#resetTimer);
    this.#wakeWaiters();
  }

  #open(): void {
    if (this.#state === "open") return;
    this.#probeFree = false;
    this.#resetTimer = setTimeout(() => {
      this.#probeFree = true;
      this.#move("halfOpen");
    }, this.options.resetTimeoutMs);
    this.#resetTimer.unref();
    this.#move("open");
  }

  #close(): void {
    clearTimeout(this.#resetTimer);
    this.#probeFree = false;
    this.#move("closed");
  }

  #move(to: BreakerState): void {
    if (to === this.#state) return;
    const from = this.#state;
    this.#state = to;
    for (const listener of this.#listeners) listener(to, from);
    this.#wakeWaiters();
  }

  #wakeWaiters(): void {
    const woken = this.#waiters;
    this.#waiters = [];
    for (const wake of woken) wake(this.#state);
  }
}
