import { afterEach, describe, expect, it } from "vitest";
import { groupPrefix } from "../../consumer-runtime/src/process.ts";

const saved = process.env.CHATBUS_GROUP_PREFIX;
afterEach(() => {
  if (saved === undefined) delete process.env.CHATBUS_GROUP_PREFIX;
  else process.env.CHATBUS_GROUP_PREFIX = saved;
});

describe("CHATBUS_GROUP_PREFIX", () => {
  it("defaults to chatbus (groups chatbus-materialiser, chatbus-notifications)", () => {
    delete process.env.CHATBUS_GROUP_PREFIX;
    expect(groupPrefix()).toBe("chatbus");
  });

  it("takes the configured prefix", () => {
    process.env.CHATBUS_GROUP_PREFIX = "staging.team-a";
    expect(groupPrefix()).toBe("staging.team-a");
  });

  it.each(["has space", "a/b", "x".repeat(101), "ümlaut"])("rejects %j and names the variable", (bad) => {
    process.env.CHATBUS_GROUP_PREFIX = bad;
    expect(() => groupPrefix()).toThrow(/CHATBUS_GROUP_PREFIX/);
  });
});
