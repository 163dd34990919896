/** Pure parts of the materialiser: back-off, notification channel, SSE cursor codec, options. */

import {
  decodeEventCursor,
  encodeEventCursor,
  eventsChannel,
  MaterialiserSettings,
} from "@chatbus/consumer-runtime/materialiser";
import { describe, expect, it } from "vitest";
import { backoffMs } from "../src/materialiser/materialiser.ts";
import { validateMaterialiserSettings } from "../src/materialiser/options.ts";

describe("materialiser pieces", () => {
  it("backs off exponentially with full jitter, capped", () => {
    for (let attempt = 1; attempt <= 20; attempt++) {
      const ceiling = Math.min(10_000, 100 * 2 ** (attempt - 1));
      for (let i = 0; i < 50; i++) {
        const ms = backoffMs(attempt, 100, 10_000);
        expect(ms).toBeGreaterThanOrEqual(1);
        expect(ms).toBeLessThanOrEqual(ceiling);
      }
    }
    const late = Array.from({ length: 200 }, () => backoffMs(12, 100, 10_000));
    expect(Math.max(...late)).toBeGreaterThan(5000);
    expect(new Set(late).size).toBeGreaterThan(50);
  });

  it("names the channel per schema", () => {
    expect(eventsChannel("public")).toBe("chatbus_events");
    expect(eventsChannel("t_abc")).toBe("chatbus_events_t_abc");
  });

  it("round-trips cursors and refuses garbage", () => {
    const cursor = { 3: "7", 0: "41", 11: "9007199254740993" };
    expect(encodeEventCursor(cursor)).toBe("0:41.3:7.11:9007199254740993");
    expect(decodeEventCursor(encodeEventCursor(cursor))).toEqual(cursor);
    expect(decodeEventCursor("")).toEqual({});
    expect(decodeEventCursor("0:41.x")).toBeNull();
    expect(decodeEventCursor("abc")).toBeNull();
  });

  it("rejects unknown and bad options naming the field", () => {
    expect(MaterialiserSettings.additionalProperties).toBe(false);
    expect(() => validateMaterialiserSettings({ groupID: "x" })).toThrow(/groupID/);
    expect(() => validateMaterialiserSettings({ retryMaxMs: 0 })).toThrow(/retryMaxMs/);
    expect(() => validateMaterialiserSettings({ topic: "chat.events", retryMaxMs: 500 })).not.toThrow();
  });
});
