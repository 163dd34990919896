/** The CLI's tables show server text without letting it drive the terminal. */
import { describe, expect, it } from "vitest";
import { renderTable } from "../src/cli/table.ts";

describe("renderTable", () => {
  it("replaces control and bidi-override characters in cells, keeps one line per row", () => {
    const hostile = "boom\u001b[2J\u001b]0;pwned\u0007 line\nbreak\u202eevil\u0085";
    const out = renderTable(["ERROR"], [[hostile]], 200);
    const unsafe = [...out].filter((c) => {
      const code = c.codePointAt(0)!;
      return (
        (code < 0x20 && c !== "\n") || (code >= 0x7f && code <= 0x9f) || (code >= 0x202a && code <= 0x202e)
      );
    });
    expect(unsafe).toEqual([]);
    expect(out.split("\n")).toHaveLength(3);
    expect(out).toContain("boom?[2J?]0;pwned? line break?evil");
  });

  it("pads columns and cuts long cells", () => {
    const out = renderTable(["A", "B"], [["x", "y".repeat(10)]], 5);
    expect(out.split("\n")).toEqual(["A  B", "-  -----", "x  yyyy…"]);
  });
});
