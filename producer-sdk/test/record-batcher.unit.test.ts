import { describe, expect, it } from "vitest";
import { type PendingRecord, RecordBatcher, type RecordBatcherOptions } from "../src/record-batcher.ts";

type Msg = { id: number };

/** A fake broker: each partition's log is an array; produce appends and returns base offsets. */
function fakeBroker() {
  const logs = new Map<number, number[]>();
  const requests: number[] = [];
  let gate: Promise<void> = Promise.resolve();
  let failNext: Error | undefined;
  return {
    logs,
    requests,
    hold() {
      let release!: () => void;
      gate = new Promise((r) => {
        release = r;
      });
      return () => release();
    },
    failNext(error: Error) {
      failNext = error;
    },
    produce: async (batch: PendingRecord<Msg>[]) => {
      requests.push(batch.length);
      await gate;
      if (failNext) {
        const error = failNext;
        failNext = undefined;
        throw error;
      }
      const bases = new Map<number, string>();
      for (const r of batch) {
        const log = logs.get(r.partition) ?? [];
        logs.set(r.partition, log);
        if (!bases.has(r.partition)) bases.set(r.partition, String(log.length));
        log.push(r.message.id);
      }
      return bases;
    },
  };
}

function setup(overrides: Partial<RecordBatcherOptions<Msg>> = {}) {
  const broker = fakeBroker();
  let failures = 0;
  const batcher = new RecordBatcher<Msg>({
    produce: broker.produce,
    lingerMs: 2,
    maxBatchSize: 100,
    maxBatchBytes: 1_000_000,
    timeoutMs: 10_000,
    timeoutError: (sent) => new Error(sent ? "timed out in flight" : "timed out unsent"),
    failureError: (error) => new Error(`failed: ${(error as Error).message}`),
    onFailure: () => failures++,
    ...overrides,
  });
  const send = (id: number, partition: number, bytes = 10) =>
    new Promise<string>((resolve, reject) =>
      batcher.add({ message: { id }, partition, bytes, resolve, reject }),
    );
  return { broker, batcher, send, failures: () => failures };
}

describe("RecordBatcher", () => {
  it("gathers concurrent sends into one request and gives each its own offset", async () => {
    const { broker, send } = setup();
    const offsets = await Promise.all(Array.from({ length: 30 }, (_, i) => send(i, i % 3)));
    expect(broker.requests).toEqual([30]);
    for (let i = 0; i < 30; i++) {
      expect(broker.logs.get(i % 3)![Number(offsets[i])]).toBe(i);
    }
  });

  it("keeps one request in flight and batches what arrives meanwhile, in order", async () => {
    const { broker, send } = setup({ maxBatchSize: 10 });
    const release = broker.hold();
    const first = send(0, 0);
    await new Promise((r) => setTimeout(r, 10));
    const rest = Array.from({ length: 25 }, (_, i) => send(i + 1, 0));
    release();
    const offsets = await Promise.all([first, ...rest]);
    expect(broker.requests).toEqual([1, 10, 10, 5]);
    expect(offsets).toEqual(Array.from({ length: 26 }, (_, i) => String(i)));
    expect(broker.logs.get(0)).toEqual(Array.from({ length: 26 }, (_, i) => i));
  });

  it("bounds the bytes of each partition in a request, not the request", async () => {
    const { broker, send } = setup({ maxBatchBytes: 2048 });
    await Promise.all(Array.from({ length: 6 }, (_, i) => send(i, i, 1000)));
    expect(broker.requests).toEqual([6]);
  });

  it("bounds a batch by bytes", async () => {
    const { broker, send } = setup({ maxBatchBytes: 2048 });
    await Promise.all(Array.from({ length: 10 }, (_, i) => send(i, 0, 1000)));
    expect(broker.requests.every((n) => n <= 2)).toBe(true);
    expect(broker.requests.reduce((a, b) => a + b, 0)).toBe(10);
  });

  it("rejects every record of a failed request and reports the failure", async () => {
    const { broker, send, failures } = setup();
    broker.failNext(new Error("boom"));
    const results = await Promise.allSettled([send(1, 0), send(2, 1)]);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect((results[0] as PromiseRejectedResult).reason.message).toBe("failed: boom");
    expect(failures()).toBe(1);
    await expect(send(3, 0)).resolves.toBe("0");
  });

  it("rejects the records of a partition the response lacks and resets the producer", async () => {
    // kafkajs can resolve a send without a partition it skipped (tulios/kafkajs#1798).
    const broker = fakeBroker();
    let drop: number | undefined = 1;
    const { send, failures } = setup({
      produce: async (batch) => {
        const bases = await broker.produce(batch);
        if (drop !== undefined) bases.delete(drop);
        drop = undefined;
        return bases;
      },
    });
    const results = await Promise.allSettled([send(1, 0), send(2, 1), send(3, 1)]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "rejected"]);
    expect((results[1] as PromiseRejectedResult).reason.message).toContain("no offset for partition 1");
    expect(failures()).toBe(1);
    await expect(send(4, 1)).resolves.toBe("2");
  });

  it("times out records of a stuck request and moves on", async () => {
    const { broker, send, batcher, failures } = setup({ timeoutMs: 200 });
    broker.hold();
    const started = performance.now();
    const stuck = send(1, 0);
    await expect(stuck).rejects.toThrow("timed out in flight");
    expect(performance.now() - started).toBeLessThan(1000);
    expect(failures()).toBe(1);
    expect(batcher.pending).toBe(0);
  });

  it("times out unsent records behind a stuck request", async () => {
    const { broker, send } = setup({ timeoutMs: 300 });
    broker.hold();
    const first = send(1, 0);
    await new Promise((r) => setTimeout(r, 100));
    const second = send(2, 0);
    await expect(first).rejects.toThrow("timed out in flight");
    // The stuck request was abandoned; the second goes out on the next request,
    // which is held too, and times out as sent.
    await expect(second).rejects.toThrow(/timed out/);
  });

  it("drained() waits for every pending record", async () => {
    const { broker, send, batcher } = setup();
    const release = broker.hold();
    const all = Promise.all([send(1, 0), send(2, 0)]);
    let drained = false;
    const done = batcher.drained().then(() => {
      drained = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(drained).toBe(false);
    release();
    await done;
    await expect(all).resolves.toEqual(["0", "1"]);
  });
});
