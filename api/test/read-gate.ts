/**
 * Holds a fake projection's reads back, so that a cache test can interleave a read with
 * an invalidation: the fake awaits `gate.passed()`, the test calls `gate.hold()` and
 * later the release it returned.
 */
export class ReadGate {
  #held: Promise<void> | undefined;

  /** Resolves at once unless the gate is held; then when it is released. */
  passed(): Promise<void> | undefined {
    return this.#held;
  }

  /** Holds every read from now on; returns the release. */
  hold(): () => void {
    let release!: () => void;
    this.#held = new Promise((resolve) => {
      release = resolve;
    });
    return () => {
      this.#held = undefined;
      release();
    };
  }
}
