/** One handler call with a deadline (runtime/handler-call.ts): outcomes, abort reasons, late results. */
import { describe, expect, it } from "vitest";
import { type HandlerTimeoutError, RunningCalls } from "../src/runtime/handler-call.ts";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe("handler call with a deadline", () => {
  it("ok and failed calls report their outcome; nothing is late", async () => {
    const calls = new RunningCalls();
    const late: string[] = [];
    const ok = calls.start(
      0,
      "c",
      1000,
      async () => {},
      (how) => late.push(how),
    );
    expect(await ok.outcome).toEqual({ kind: "ok" });
    const boom = new Error("boom");
    const failed = calls.start(
      0,
      "c",
      1000,
      async () => {
        throw boom;
      },
      (how) => late.push(how),
    );
    expect(await failed.outcome).toEqual({ kind: "failed", error: boom });
    await sleep(10);
    expect(late).toEqual([]);
    expect(calls.size).toBe(0);
  });

  it("times out: aborts the signal with CHATBUS_HANDLER_TIMEOUT, ignores the late result and reports it once", async () => {
    const calls = new RunningCalls();
    const late: string[] = [];
    let signal: AbortSignal | undefined;
    const { outcome } = calls.start(
      1,
      "c",
      30,
      async (call) => {
        signal = call.signal;
        await sleep(120);
      },
      (how, reason) => late.push(`${how} ${reason}`),
    );
    const result = await outcome;
    expect(result.kind).toBe("timeout");
    expect((result as { error: HandlerTimeoutError }).error.code).toBe("CHATBUS_HANDLER_TIMEOUT");
    expect(signal?.aborted).toBe(true);
    expect(calls.size).toBe(1); // still running: the runtime cannot stop it
    await sleep(150);
    expect(late).toEqual(["resolved timeout"]);
    expect(calls.size).toBe(0);
  });

  it("a fence aborts running calls, returns only those, and their results are discarded", async () => {
    const calls = new RunningCalls();
    const late: string[] = [];
    const first = calls.start(
      0,
      "a",
      10_000,
      () => sleep(50),
      (how, reason) => late.push(`${how} ${reason}`),
    );
    const aborted = calls.abortAll("fence");
    expect(aborted).toEqual([first.call]);
    expect(calls.fenced("a")).toBe(first.call);
    expect(await first.outcome).toEqual({ kind: "aborted", reason: "fence" });
    // A later fence does not wait for a call an earlier one aborted.
    expect(calls.abortAll("fence")).toEqual([]);
    await RunningCalls.whenSettled(aborted);
    expect(late).toEqual(["resolved fence"]);
    expect(calls.fenced("a")).toBeUndefined();
  });

  it("a signal first read after a fence is already aborted, with the fence's reason", async () => {
    const calls = new RunningCalls();
    let signal: AbortSignal | undefined;
    const first = calls.start(
      0,
      "a",
      10_000,
      async (call) => {
        await sleep(20);
        signal = call.signal;
      },
      () => {},
    );
    calls.abortAll("fence");
    await RunningCalls.whenSettled([first.call]);
    expect(signal?.aborted).toBe(true);
    expect(String(signal?.reason)).toContain("fence");
  });

  it("a synchronous throw is a failure, not a crash", async () => {
    const calls = new RunningCalls();
    const { outcome } = calls.start(
      0,
      "c",
      1000,
      () => {
        throw new Error("sync");
      },
      () => {},
    );
    expect((await outcome).kind).toBe("failed");
  });
});
