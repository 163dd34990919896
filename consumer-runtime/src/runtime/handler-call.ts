/**
 * One handler call with a deadline, and the registry of calls still running.
 *
 * Every call gets its own AbortSignal (its `ctx.signal`, made when first read). The signal is aborted
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
  /**
   * The call's `ctx.signal`. Made on first read: most handlers never look at it, and
   * an AbortController per event cost more than the rest of the call together
   * (12 % of the runtime's CPU in the no-op benchmark's profile).
   */
  readonly signal: AbortSignal;
  /** Settles when the handler's own promise settles (never rejects). */
  readonly settled: Promise<void>;
  /** Set when the signal was aborted, with the reason. */
  readonly abortedFor: AbortReason | null;
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

/** The outcome of every call that succeeded: one shared object (nobody changes it). */
const ok: CallOutcome = Object.freeze({ kind: "ok" });

class Call implements RunningCall {
  abortedFor: AbortReason | null = null;
  /** Set by `RunningCalls.start` (no placeholder promise per call). */
  settled!: Promise<void>;
  #controller: AbortController | undefined;
  #abortError: Error | undefined;
  #done = false;
  #timer: NodeJS.Timeout | undefined;
  /** Resolves the call's outcome (set by `RunningCalls.start`). */
  finish: (outcome: CallOutcome) => void = () => {};

  constructor(
    readonly partition: number,
    readonly key: string,
    readonly timeoutMs: number,
  ) {}

  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#abortError) this.#controller.abort(this.#abortError);
    }
    return this.#controller.signal;
  }

  /** Starts the deadline: a static callback with the call as its argument, no closure per call. */
  startDeadline(): void {
    this.#timer = setTimeout(Call.#deadlinePassed, this.timeoutMs, this);
  }

  static #deadlinePassed(call: Call): void {
    if (call.#done || call.abortedFor) return;
    const error = new HandlerTimeoutError(call.timeoutMs);
    call.abort("timeout", error);
    call.settle({ kind: "timeout", error });
  }

  /** Ends the outcome once (later settlements are ignored) and clears the deadline. */
  settle(result: CallOutcome): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#timer);
    this.finish(result);
  }

  abort(reason: AbortReason, error: Error): void {
    this.abortedFor = reason;
    this.#abortError = error;
    this.#controller?.abort(error);
    if (reason !== "timeout") this.settle({ kind: "aborted", reason });
  }
}

/** Calls running across every partition and generation of one runtime. */
export class RunningCalls {
  #calls = new Set<Call>();
  /** Calls aborted by a fence and still running, by conversation key: looked up for every event. */
  #fenced = new Map<string, Call[]>();

  get size(): number {
    return this.#calls.size;
  }

  /** A call of this conversation key aborted by a fence and still running, if any. */
  fenced(key: string): RunningCall | undefined {
    return this.#fenced.size === 0 ? undefined : this.#fenced.get(key)?.[0];
  }

  /**
   * Starts `invoke(call)` (the handler reads `call.signal`) with a deadline of
   * `timeoutMs`. `onLate` is called once if the handler settles after the call was
   * given up (timeout, fence or stop). One promise and one timer per call: this runs
   * for every event.
   */
  start(
    partition: number,
    key: string,
    timeoutMs: number,
    invoke: (call: RunningCall) => Promise<void>,
    onLate: (outcome: "resolved" | "rejected", reason: AbortReason) => void,
  ): { call: RunningCall; outcome: Promise<CallOutcome> } {
    const call = new Call(partition, key, timeoutMs);
    const outcome = new Promise<CallOutcome>((resolve) => {
      call.finish = resolve;
    });
    call.startDeadline();
    let handler: Promise<void>;
    try {
      handler = invoke(call);
    } catch (error) {
      handler = Promise.reject(error);
    }
    this.#calls.add(call);
    call.settled = handler.then(
      () => {
        this.#forget(call);
        if (call.abortedFor) onLate("resolved", call.abortedFor);
        else call.settle(ok);
      },
      (error: unknown) => {
        this.#forget(call);
        if (call.abortedFor) onLate("rejected", call.abortedFor);
        else call.settle({ kind: "failed", error });
      },
    );
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
      call.abort(reason, new Error(`handler aborted: ${reason}`));
      if (reason === "fence") this.#fenced.set(call.key, [...(this.#fenced.get(call.key) ?? []), call]);
      aborted.push(call);
    }
    return aborted;
  }

  #forget(call: Call): void {
    this.#calls.delete(call);
    if (call.abortedFor !== "fence") return;
    const rest = this.#fenced.get(call.key)?.filter((c) => c !== call) ?? [];
    if (rest.length > 0) this.#fenced.set(call.key, rest);
    else this.#fenced.delete(call.key);
  }

  /** Resolves when every call of `list` has settled. */
  static whenSettled(list: RunningCall[]): Promise<void> {
    return Promise.all(list.map((c) => c.settled)).then(() => {});
  }
}
