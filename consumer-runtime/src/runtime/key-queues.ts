/**
 * Key-level queues: the events of one key (conversation) run one at a time in push
 * order; different keys run concurrently up to a limit shared by every partition
 * (`Slots`). A step may ask to run again later (a retry back-off, an open breaker):
 * the key is parked without holding a slot, and only that key waits.
 */

/** What running an item decided. */
export type Step =
  /** Finished (handled or dead-lettered): the key moves on. */
  | { kind: "done" }
  /** Run the same item again once `when` settles; the key waits, other keys go on. */
  | { kind: "later"; when: Promise<unknown> }
  /** Give the item up without finishing it (shutdown): it is dropped with its key's queue. */
  | { kind: "abandon" };

/**
 * Starts work in a later microtask: `resolved.then(f)` is one small reaction, where
 * Node's queueMicrotask makes an AsyncResource per call (6 % of the no-op runtime's
 * CPU in its profile).
 */
const resolved = Promise.resolve();

/** A step that finished: one shared object (nobody changes it), not one per event. */
export const stepDone: Step = Object.freeze({ kind: "done" });

/**
 * A counting semaphore with FIFO waiters. Taken and given back without promises or
 * closures of its own: the key queues take a slot for every event they run.
 */
export class Slots {
  #free: number;
  /** FIFO of waiters from `#head` on: Array#shift copies a long array (one waiter per ready key). */
  #waiters: (() => void)[] = [];
  #head = 0;

  constructor(readonly size: number) {
    this.#free = size;
  }

  get inUse(): number {
    return this.size - this.#free;
  }

  /** True when someone waits for a slot. */
  get contended(): boolean {
    return this.#head < this.#waiters.length;
  }

  /** Takes a free slot (true), or returns false when all are in use. */
  tryTake(): boolean {
    if (this.#free === 0) return false;
    this.#free--;
    return true;
  }

  /** Calls `granted` (synchronously, from `release`) once a slot was handed over to it. */
  wait(granted: () => void): void {
    this.#waiters.push(granted);
  }

  /** Gives a taken slot back: to the longest waiter, else to the free ones. Once per take. */
  release(): void {
    if (this.#head === this.#waiters.length) {
      this.#free++;
      return;
    }
    const next = this.#waiters[this.#head]!;
    this.#waiters[this.#head++] = noWaiter;
    // Drop the served part now and then, so that the array does not grow for ever.
    if (this.#head === this.#waiters.length) {
      this.#waiters = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#waiters.length) {
      this.#waiters = this.#waiters.slice(this.#head);
      this.#head = 0;
    }
    next();
  }
}

/** Put in a served waiter's place, so that the array holds no finished closure. */
const noWaiter = () => {};

interface Waiter {
  check: () => boolean;
  resolve: () => void;
}

interface KeyState<T> {
  items: T[];
  state: "ready" | "running" | "parked";
}

/**
 * The queues of one partition. `run` must not throw (a throw is treated as
 * "later, after one second"); `onDone` is called once per finished item, in key order.
 */
export class KeyQueues<T> {
  #keys = new Map<string, KeyState<T>>();
  #size = 0;
  #running = 0;
  #ready = 0;
  #parked = 0;
  #closed = false;
  #waiters: Waiter[] = [];

  constructor(
    private readonly slots: Slots,
    private readonly run: (item: T) => Step | Promise<Step>,
    private readonly onDone: (item: T) => void,
  ) {}

  /** Items held (queued, running or parked) and not finished. */
  get size(): number {
    return this.#size;
  }
  /** Items running right now. */
  get running(): number {
    return this.#running;
  }
  /** Keys whose next item waits for a slot. */
  get ready(): number {
    return this.#ready;
  }
  /** Keys waiting for a back-off or the breaker. */
  get parked(): number {
    return this.#parked;
  }
  get closed(): boolean {
    return this.#closed;
  }

  push(key: string, item: T): void {
    if (this.#closed) return;
    this.#size++;
    const existing = this.#keys.get(key);
    if (existing) {
      existing.items.push(item);
      return;
    }
    const state: KeyState<T> = { items: [item], state: "ready" };
    this.#keys.set(key, state);
    this.#schedule(key, state);
  }

  /** Resolves when nothing runs or waits for a slot (only parked keys, if any, remain). */
  whenQuiet(): Promise<void> {
    return this.#when(() => this.#running === 0 && this.#ready === 0);
  }

  /** Resolves when no item runs. */
  whenNotRunning(): Promise<void> {
    return this.#when(() => this.#running === 0);
  }

  /** Resolves when at most `size` items are held. */
  whenSizeAtMost(size: number): Promise<void> {
    return this.#when(() => this.#size <= size);
  }

  /**
   * Drops every item that is not running; running ones finish but are not reported
   * (their offsets are not committed by this generation). Used on revoke and stop.
   */
  close(): void {
    this.#closed = true;
    this.#keys.clear();
    this.#size = 0;
    this.#notify();
  }

  #when(check: () => boolean): Promise<void> {
    if (check()) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ check, resolve }));
  }

  #notify(): void {
    if (this.#waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const waiter of this.#waiters) {
      if (this.#closed && this.#running === 0) waiter.resolve();
      else if (waiter.check()) waiter.resolve();
      else still.push(waiter);
    }
    this.#waiters = still;
  }

  #schedule(key: string, state: KeyState<T>): void {
    state.state = "ready";
    this.#ready++;
    // The head always starts in a later microtask, never inside push() or release().
    const start = () => {
      this.#ready--;
      if (this.#closed) {
        this.slots.release();
        this.#notify();
        return;
      }
      void this.#runHead(key, state);
    };
    if (this.slots.tryTake()) void resolved.then(start);
    else this.slots.wait(() => void resolved.then(start));
  }

  async #runHead(key: string, state: KeyState<T>): Promise<void> {
    let step: Step;
    let streak = 0;
    for (;;) {
      state.state = "running";
      this.#running++;
      const item = state.items[0]!;
      try {
        step = await this.run(item);
      } catch {
        step = { kind: "later", when: new Promise((r) => setTimeout(r, 1000)) };
      }
      this.#running--;
      // Fast path: the key's next item runs on the same slot when nobody waits for
      // one (bounded, so that a busy key cannot keep a slot for ever).
      if (
        step.kind === "done" &&
        !this.#closed &&
        state.items.length > 1 &&
        streak < 64 &&
        !this.slots.contended
      ) {
        state.items.shift();
        this.#size--;
        this.onDone(item);
        streak++;
        continue;
      }
      break;
    }
    this.slots.release();
    if (this.#closed) {
      this.#notify();
      return;
    }
    if (step.kind === "abandon") {
      this.#size -= state.items.length;
      this.#keys.delete(key);
    } else if (step.kind === "done") {
      const item = state.items.shift()!;
      this.#size--;
      this.onDone(item);
      if (state.items.length > 0) this.#schedule(key, state);
      else this.#keys.delete(key);
    } else {
      state.state = "parked";
      this.#parked++;
      const wake = () => {
        this.#parked--;
        if (this.#closed) return this.#notify();
        this.#schedule(key, state);
      };
      step.when.then(wake, wake);
    }
    this.#notify();
  }
}
