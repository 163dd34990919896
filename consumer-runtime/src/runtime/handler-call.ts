/**
 * One handler call with a deadline, and the registry of calls still running.
 *
 * Every call gets its own AbortController (its `ctx.signal`). The signal is aborted
 * at the call's deadline (the call then fails with `HandlerTimeoutError`, a system
 * failure), when the runtime fences work at a rebalance or restart, and on a stop
 * past the shutdown deadline. A call whose signal was aborted never counts as a
 * success: whatever it resolves with later is ignored (and logged once), so that the
 * retry's result is the one that counts and an abandoned call is never committed.
 */
import { ChatBusError } from "@chatbus/producer-sdk";

/** A handler call ran past its deadline (`handlerTimeoutMs`): a system failure. */
export class HandlerTimeoutError extends ChatBusError<"CHATBUS_HANDLER_TIMEOUT"> {
  constructor(timeoutMs: number) {
    super(
      "CHATBUS_HANDLER_TIMEOUT",
      `the handler did not finish within ${timeoutMs} ms (handlerTimeoutMs); its ctx.signal was aborted and the event is retried with back-off`,
      { retryable: true },
    );
  }
}

/** Why a running call's signal was aborted. */
export type AbortReason = "timeout" | "fence" | "stop";

/** A call that is running (or hung) right now. */
export interface RunningCall {
  readonly controller: AbortController;
  /** Settles when the handler's own promise settles (never rejects). */
  readonly settled: Promise<void>;
  /** Set when the signal was aborted, with the reason. */
  abortedFor: AbortReason | null;
  /** Partition and conversation, for logs and for the per-key guard across generations. */
  readonly partition: number;
  readonly key: string;
}

/** What a finished call came to. */
export type CallOutcome =
  | { kind: "ok" }
  | { kind: "failed"; error: unknown }
  /** The deadline passed first; the handler may still be running. */
  | { kind: "timeout"; error: HandlerTimeoutError }
  /** The call was aborted by a fence or a stop: its result, whatever it is, is discarded. */
  | { kind: "aborted"; reason: AbortReason };

/** Calls running across every partition and generation of one runtime. */
export class RunningCalls {
  #calls = new Set<RunningCall>();

  get size(): number {
    return this.#calls.size;
  }

  /** A call of this conversation key aborted by a fence and still running, if any. */
  fenced(key: string): RunningCall | undefined {
    for (const call of this.#calls) if (call.key === key && call.abortedFor === "fence") return call;
    return undefined;
  }

  /**
   * Starts `invoke(signal)` with a deadline of `timeoutMs`. `onLate` is called once
   * if the handler settles after the call was given up (timeout, fence or stop).
   */
  start(
    partition: number,
    key: string,
    timeoutMs: number,
    invoke: (signal: AbortSignal) => Promise<void>,
    onLate: (outcome: "resolved" | "rejected", reason: AbortReason) => void,
  ): { call: RunningCall; outcome: Promise<CallOutcome> } {
    const controller = new AbortController();
    let handler: Promise<void>;
    try {
      handler = invoke(controller.signal);
    } catch (error) {
      handler = Promise.reject(error);
    }
    let settledFlag = false;
    const call: RunningCall = {
      controller,
      partition,
      key,
      abortedFor: null,
      settled: handler.then(
        () => {
          settledFlag = true;
          if (call.abortedFor) onLate("resolved", call.abortedFor);
        },
        () => {
          settledFlag = true;
          if (call.abortedFor) onLate("rejected", call.abortedFor);
        },
      ),
    };
    this.#calls.add(call);
    void call.settled.then(() => this.#calls.delete(call));

    let timer: NodeJS.Timeout | undefined;
    const aborted = new Promise<CallOutcome>((resolve) => {
      controller.signal.addEventListener(
        "abort",
        () => {
          if (call.abortedFor === "timeout") return;
          resolve({ kind: "aborted", reason: call.abortedFor ?? "stop" });
        },
        { once: true },
      );
    });
    const deadline = new Promise<CallOutcome>((resolve) => {
      timer = setTimeout(() => {
        if (settledFlag || call.abortedFor) return;
        const error = new HandlerTimeoutError(timeoutMs);
        call.abortedFor = "timeout";
        controller.abort(error);
        resolve({ kind: "timeout", error });
      }, timeoutMs);
    });
    const result = handler.then(
      (): CallOutcome => (call.abortedFor ? { kind: "aborted", reason: call.abortedFor } : { kind: "ok" }),
      (error: unknown): CallOutcome =>
        call.abortedFor ? { kind: "aborted", reason: call.abortedFor } : { kind: "failed", error },
    );
    const outcome = Promise.race([result, deadline, aborted]).finally(() => clearTimeout(timer));
    return { call, outcome };
  }

  /**
   * Aborts every running call not aborted yet with `reason`; returns the calls it
   * aborted (a caller waits for these only: a call aborted earlier that ignores its
   * signal must not delay every later fence).
   */
  abortAll(reason: Exclude<AbortReason, "timeout">): RunningCall[] {
    const aborted: RunningCall[] = [];
    for (const call of this.#calls) {
      if (call.abortedFor) continue;
      call.abortedFor = reason;
      call.controller.abort(new Error(`handler aborted: ${reason}`));
      aborted.push(call);
    }
    return aborted;
  }

  /** Resolves when every call of `list` has settled. */
  static whenSettled(list: RunningCall[]): Promise<void> {
    return Promise.all(list.map((c) => c.settled)).then(() => {});
  }
}
