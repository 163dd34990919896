/**
 * Which offset of one partition may be committed: the lowest offset not yet finished
 * (handled or dead-lettered), or one past the highest seen when all are finished.
 * Events finish out of order (different conversations run concurrently); the commit
 * never passes an unfinished one, so a crash or rebalance only ever redelivers.
 */
export class OffsetTracker {
  /** Tracked offsets in arrival (= log) order; `head` is the first unfinished candidate. */
  #pending: bigint[] = [];
  #head = 0;
  #finished = new Set<bigint>();
  #highest: bigint | null = null;
  #lastCommitted: bigint | null = null;

  /** Records a fetched offset; offsets must arrive in increasing order. */
  track(offset: bigint): void {
    if (this.#highest !== null && offset <= this.#highest) {
      throw new Error(`offset ${offset} arrived after ${this.#highest}; offsets must increase`);
    }
    this.#highest = offset;
    this.#pending.push(offset);
  }

  /** Marks an offset handled or dead-lettered. */
  finish(offset: bigint): void {
    this.#finished.add(offset);
    while (this.#head < this.#pending.length && this.#finished.has(this.#pending[this.#head]!)) {
      this.#finished.delete(this.#pending[this.#head]!);
      this.#head++;
    }
    // Compact now and then so that the array does not grow for ever.
    if (this.#head > 1024 && this.#head * 2 > this.#pending.length) {
      this.#pending = this.#pending.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Tracked offsets not yet finished. */
  get unfinished(): number {
    return this.#pending.length - this.#head;
  }

  /** The offset to commit (Kafka's "next to read"), or null when nothing was tracked. */
  committable(): bigint | null {
    if (this.#head < this.#pending.length) return this.#pending[this.#head]!;
    return this.#highest === null ? null : this.#highest + 1n;
  }

  /** The committable offset when it moved since the last `markCommitted`, else null. */
  toCommit(): bigint | null {
    const offset = this.committable();
    return offset !== null && offset !== this.#lastCommitted ? offset : null;
  }

  markCommitted(offset: bigint): void {
    if (this.#lastCommitted === null || offset > this.#lastCommitted) this.#lastCommitted = offset;
  }
}
