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
  /** Size counted against `maxBatchBytes`. */
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
  #queuedBytes = 0;
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
    const pending: PendingRecord<M> = { ...record, addedAt: this.#now() };
    const { resolve, reject } = pending;
    pending.resolve = (offset) => {
      if (pending.settled) return;
      pending.settled = true;
      this.#settledOne();
      resolve(offset);
    };
    pending.reject = (error) => {
      if (pending.settled) return;
      pending.settled = true;
      this.#settledOne();
      reject(error);
    };
    this.#unsettled++;
    this.#queue.push(pending);
    this.#queuedBytes += pending.bytes;
    this.#startSweeper();
    if (this.#inFlight) return;
    if (
      this.#queue.length - this.#head >= this.#options.maxBatchSize ||
      this.#queuedBytes >= this.#options.maxBatchBytes
    ) {
      this.#flushNow();
    } else if (!this.#linger) {
      this.#linger =
        this.#options.lingerMs > 0
          ? setTimeout(() => this.#flushNow(), this.#options.lingerMs)
          : setImmediate(() => this.#flushNow());
    }
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
        for (const record of batch) {
          const offset = nextOffset.get(record.partition) ?? BigInt(baseOffsets.get(record.partition) ?? -1);
          nextOffset.set(record.partition, offset + 1n);
          if (offset < 0n)
            record.reject(
              this.#options.failureError(new Error(`no offset returned for partition ${record.partition}`)),
            );
          else record.resolve(offset.toString());
        }
        this.#finished(generation);
      },
      (error: unknown) => {
        if (generation !== this.#generation) return;
        const failure = this.#options.failureError(error);
        for (const record of batch) record.reject(failure);
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
  }

  #takeBatch(): PendingRecord<M>[] {
    const batch: PendingRecord<M>[] = [];
    let bytes = 0;
    while (this.#head < this.#queue.length && batch.length < this.#options.maxBatchSize) {
      const record = this.#queue[this.#head]!;
      if (batch.length > 0 && bytes + record.bytes > this.#options.maxBatchBytes) break;
      this.#head++;
      this.#queuedBytes -= record.bytes;
      if (record.settled) continue;
      bytes += record.bytes;
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
          record.reject(this.#options.timeoutError(true));
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
      this.#queuedBytes -= record.bytes;
      record.reject(this.#options.timeoutError(false));
    }
    this.#compact();
    if (!this.#inFlight && this.#queue.length > this.#head && !this.#linger) this.#flushNow();
  }
}
