/**
 * Gathers concurrent sends into produce requests. kafkajs has no linger of its own:
 * each `send` call is one request, so one request per event caps throughput at one
 * round trip per event. The batcher holds records for `lingerMs` while the producer is
 * idle, and while a request is in flight it collects the next one, so batches grow
 * with the load. One request is in flight at a time: with an idempotent producer
 * kafkajs serialises requests per broker anyway, and a single pipeline means a failed
 * and retried request can never overtake a later one, which keeps per-key order.
 *
 * Every record settles within `timeoutMs` of being added: unsent records are dropped
 * from the queue with a "not sent" error, and a request that runs past every
 * record's deadline is abandoned (the owner resets its producer) so the pipeline
 * never stalls behind an unreachable broker.
 */

/** One record waiting for Kafka. */
export interface PendingRecord<M> {
  /** What the produce function sends (e.g. a kafkajs message). */
  message: M;
  partition: number;
  /** Size counted against `maxBatchBytes` of its partition. */
  bytes: number;
  /** Clock time when it was added (ms). */
  addedAt: number;
  resolve(offset: string): void;
  reject(error: Error): void;
  /** Set once resolve or reject ran. */
  settled?: boolean;
}

/** Sends one batch; resolves with the base offset the broker gave each partition. */
export type ProduceBatch<M> = (batch: PendingRecord<M>[]) => Promise<Map<number, string>>;

export interface RecordBatcherOptions<M> {
  produce: ProduceBatch<M>;
  lingerMs: number;
  maxBatchSize: number;
  /** Most bytes of one partition in one request. */
  maxBatchBytes: number;
  timeoutMs: number;
  /** The error for records that timed out; `sent` says whether their request had started. */
  timeoutError(sent: boolean): Error;
  /** Turns a produce failure into the error the callers get. */
  failureError(error: unknown): Error;
  /** Called when a request was abandoned (timed out) or failed: reset the producer. */
  onFailure(): void;
  now?: () => number;
}

/** Queues records and ships them in batches through `produce`. */
export class RecordBatcher<M> {
  readonly #options: RecordBatcherOptions<M>;
  readonly #now: () => number;
  #queue: PendingRecord<M>[] = [];
  /** Index of the first live record in #queue (shifting arrays one by one is O(n)). */
  #head = 0;
  #inFlight: { batch: PendingRecord<M>[]; generation: number } | undefined;
  #generation = 0;
  #linger: NodeJS.Timeout | NodeJS.Immediate | undefined;
  #sweeper: NodeJS.Timeout | undefined;
  #unsettled = 0;
  #drainWaiters: (() => void)[] = [];

  constructor(options: RecordBatcherOptions<M>) {
    this.#options = options;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Records added and not yet settled. */
  get pending(): number {
    return this.#unsettled;
  }

  /** Adds a record; it settles with its offset or an error. */
  add(record: Omit<PendingRecord<M>, "addedAt" | "settled">): void {
    const pending = record as PendingRecord<M>;
    pending.addedAt = this.#now();
    pending.settled = false;
    this.#unsettled++;
    this.#queue.push(pending);
    this.#startSweeper();
    if (this.#inFlight) return;
    if (this.#queue.length - this.#head >= this.#options.maxBatchSize) {
      this.#flushNow();
    } else if (!this.#linger) {
      this.#linger =
        this.#options.lingerMs > 0
          ? setTimeout(() => this.#flushNow(), this.#options.lingerMs)
          : setImmediate(() => this.#flushNow());
    }
  }

  #resolve(record: PendingRecord<M>, offset: string): void {
    if (record.settled) return;
    record.settled = true;
    this.#settledOne();
    record.resolve(offset);
  }

  #reject(record: PendingRecord<M>, error: Error): void {
    if (record.settled) return;
    record.settled = true;
    this.#settledOne();
    record.reject(error);
  }

  /** Sends what is queued without waiting for the linger. */
  flush(): void {
    if (!this.#inFlight) this.#flushNow();
  }

  /** Resolves once every record added so far has settled (bounded by `timeoutMs`). */
  drained(): Promise<void> {
    this.flush();
    if (this.#unsettled === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  #settledOne(): void {
    this.#unsettled--;
    if (this.#unsettled === 0) {
      this.#stopSweeper();
      for (const waiter of this.#drainWaiters.splice(0)) waiter();
    }
  }

  #flushNow(): void {
    if (this.#linger) {
      clearTimeout(this.#linger as NodeJS.Timeout);
      clearImmediate(this.#linger as NodeJS.Immediate);
      this.#linger = undefined;
    }
    if (this.#inFlight) return;
    const batch = this.#takeBatch();
    if (batch.length === 0) return;
    const generation = ++this.#generation;
    this.#inFlight = { batch, generation };
    this.#options.produce(batch).then(
      (baseOffsets) => {
        if (generation !== this.#generation) return;
        // Records keep their batch order within a partition, so the n-th record of a
        // partition sits at that partition's base offset + n.
        const nextOffset = new Map<number, bigint>();
        const offsets: (string | undefined)[] = batch.map((record) => {
          const base = baseOffsets.get(record.partition);
          if (base === undefined) return undefined;
          const offset = nextOffset.get(record.partition) ?? BigInt(base);
          nextOffset.set(record.partition, offset + 1n);
          return offset.toString();
        });
        // kafkajs resolves a send without a partition it never sent (its responses are
        // kept per broker across retries: a partition whose leader moved to a broker
        // that had already answered is skipped, tulios/kafkajs#1798). Its sequence
        // number was rolled back although that request may have been written, so the
        // next records of that partition would reuse it and the broker would answer
        // them as duplicates of the earlier ones, with their offset, without storing
        // them: acknowledged and lost. A fresh producer (new producer id) must take over.
        if (offsets.includes(undefined)) this.#options.onFailure();
        const settle = () =>
          batch.forEach((record, n) => {
            const offset = offsets[n];
            if (offset !== undefined) this.#resolve(record, offset);
            else {
              const detail = `Kafka returned no offset for partition ${record.partition}`;
              this.#reject(record, this.#options.failureError(new Error(detail)));
            }
          });
        if (this.#queue.length > this.#head) {
          // Start the next request before waking this batch's callers: their
          // continuations (encoding their next sends) would otherwise run as
          // microtasks ahead of the request, instead of while it is in flight.
          this.#finished(generation);
          setImmediate(settle);
        } else {
          settle();
          this.#finished(generation);
        }
      },
      (error: unknown) => {
        if (generation !== this.#generation) return;
        const failure = this.#options.failureError(error);
        for (const record of batch) this.#reject(record, failure);
        this.#options.onFailure();
        this.#finished(generation);
      },
    );
  }

  #finished(generation: number): void {
    if (this.#inFlight?.generation !== generation) return;
    this.#inFlight = undefined;
    // Whatever queued meanwhile has already waited a round trip: send it at once.
    if (this.#queue.length > this.#head) this.#flushNow();
    // Callers woken by this request usually send again from their continuations
    // (microtasks of this same turn): gather them on the next turn instead of
    // lingering, so a busy bus never idles `lingerMs` between requests.
    else if (!this.#linger) this.#linger = setImmediate(() => this.#flushNow());
  }

  /**
   * Takes queued records in order, up to `maxBatchSize` records and `maxBatchBytes`
   * per partition (the broker refuses a partition's batch over `message.max.bytes`).
   * It stops at the first record that does not fit, so that no later record of any
   * partition overtakes it.
   */
  #takeBatch(): PendingRecord<M>[] {
    const batch: PendingRecord<M>[] = [];
    const partitionBytes = new Map<number, number>();
    while (this.#head < this.#queue.length && batch.length < this.#options.maxBatchSize) {
      const record = this.#queue[this.#head]!;
      const bytes = (partitionBytes.get(record.partition) ?? 0) + record.bytes;
      if (!record.settled && batch.length > 0 && bytes > this.#options.maxBatchBytes) break;
      this.#head++;
      if (record.settled) continue;
      partitionBytes.set(record.partition, bytes);
      batch.push(record);
    }
    this.#compact();
    return batch;
  }

  #compact(): void {
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
  }

  #startSweeper(): void {
    if (this.#sweeper) return;
    const every = Math.min(1000, Math.max(20, Math.floor(this.#options.timeoutMs / 20)));
    this.#sweeper = setInterval(() => this.#sweep(), every);
    this.#sweeper.unref();
  }

  #stopSweeper(): void {
    if (this.#sweeper) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }

  /** Fails records past their deadline; abandons a request whose records all timed out. */
  #sweep(): void {
    const expiredBefore = this.#now() - this.#options.timeoutMs;
    const inFlight = this.#inFlight;
    if (inFlight) {
      for (const record of inFlight.batch) {
        if (!record.settled && record.addedAt <= expiredBefore)
          this.#reject(record, this.#options.timeoutError(true));
      }
      if (inFlight.batch.every((r) => r.settled)) {
        this.#generation++;
        this.#inFlight = undefined;
        this.#options.onFailure();
      }
    }
    // The queue is in arrival order: expired records are at its head.
    while (this.#head < this.#queue.length && this.#queue[this.#head]!.addedAt <= expiredBefore) {
      const record = this.#queue[this.#head++]!;
      this.#reject(record, this.#options.timeoutError(false));
    }
    this.#compact();
    if (!this.#inFlight && this.#queue.length > this.#head && !this.#linger) this.#flushNow();
  }
}
