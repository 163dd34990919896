/**
 * Which failures are the data's fault (dead letter, partition moves on) and which the
 * infrastructure's (retry, breaker): the SQLSTATE classes of issue 12.
 */
import { describe, expect, it } from "vitest";
import { OffsetGapError, OffsetMovedError } from "../src/materialiser/apply-batch.ts";
import { mergeResults } from "../src/materialiser/apply-isolated.ts";
import { classifyFailure } from "../src/materialiser/failure-class.ts";
import { restartUntilRunning } from "../src/materialiser/materialiser.ts";

/** An error shaped like node-postgres's DatabaseError. */
const pgError = (code: string, message = "refused", detail?: string) =>
  Object.assign(new Error(message), { code, ...(detail ? { detail } : {}) });

describe("classifyFailure", () => {
  it.each([
    ["22021", "invalid byte sequence"],
    ["22P05", "unsupported Unicode escape sequence"],
    ["22003", "numeric out of range"],
    ["23505", "duplicate key"],
    ["23514", "check constraint"],
    ["54000", "index row size exceeds maximum"],
  ])("SQLSTATE %s (%s) is the data's fault", (code, message) => {
    expect(classifyFailure(pgError(code, message))).toEqual({ kind: "data", sqlState: code, message });
  });

  it.each([
    ["08006", "connection failure"],
    ["08001", "cannot connect"],
    ["53300", "too many connections"],
    ["57P01", "admin shutdown"],
    ["57014", "canceling statement due to statement timeout"],
    ["58030", "io error"],
    ["42501", "permission denied"],
    ["42P01", "relation does not exist"],
  ])("SQLSTATE %s (%s) is a system failure", (code, message) => {
    expect(classifyFailure(pgError(code, message)).kind).toBe("system");
  });

  it("retries serialization failures, deadlocks and a moved offset in place", () => {
    expect(classifyFailure(pgError("40001")).kind).toBe("conflict");
    expect(classifyFailure(pgError("40P01")).kind).toBe("conflict");
    expect(classifyFailure(new OffsetMovedError("t", 0, "5")).kind).toBe("conflict");
  });

  it("treats errors without a SQLSTATE as system failures (connection refused, lost, timeouts, bugs)", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" });
    expect(classifyFailure(refused)).toEqual({ kind: "system", sqlState: null, message: refused.message });
    expect(classifyFailure(new Error("Connection terminated unexpectedly")).kind).toBe("system");
    expect(classifyFailure(new Error("timeout exceeded when trying to connect")).kind).toBe("system");
    expect(classifyFailure(new TypeError("x is undefined")).kind).toBe("system");
    expect(classifyFailure("a string").kind).toBe("system");
  });

  it("hands a gap to the caller and keeps the database's detail in the message", () => {
    expect(classifyFailure(new OffsetGapError("t", 1, "21", "50")).kind).toBe("gap");
    expect(classifyFailure(pgError("23505", "duplicate key", "Key (id)=(x) already exists.")).message).toBe(
      "duplicate key (Key (id)=(x) already exists.)",
    );
  });
});

describe("mergeResults", () => {
  it("adds the parts of a bisected batch", () => {
    const part = (from: string, to: string, data: number) => ({
      handled: 1,
      skipped: 0,
      applied: { "chat.message.sent": 1 },
      duplicates: 0,
      noops: {},
      deadLettered: { poison: 0, business: 0, data, operator: 0 },
      eventTimes: [new Date(0)],
      range: { from, to },
    });
    const merged = mergeResults(part("0", "3", 0), part("4", "9", 1));
    expect(merged.handled).toBe(2);
    expect(merged.applied).toEqual({ "chat.message.sent": 2 });
    expect(merged.deadLettered.data).toBe(1);
    expect(merged.range).toEqual({ from: "0", to: "9" });
  });
});

describe("restartUntilRunning", () => {
  it("keeps restarting with back-off after a failed restart until the consumer runs", async () => {
    let calls = 0;
    const failures: number[] = [];
    const ran = await restartUntilRunning(
      async () => {
        calls++;
        if (calls <= 2) throw new Error(`restart ${calls} fails`);
      },
      { running: () => true, initialMs: 5, maxMs: 20, onFailure: (_e, attempt) => failures.push(attempt) },
    );
    expect(ran).toBe(true);
    expect(calls).toBe(3);
    expect(failures).toEqual([1, 2]);
  });

  it("gives up when the materialiser stops", async () => {
    let running = true;
    const ran = await restartUntilRunning(
      async () => {
        running = false;
        throw new Error("broker unreachable");
      },
      { running: () => running, initialMs: 1, maxMs: 1 },
    );
    expect(ran).toBe(false);
  });
});
