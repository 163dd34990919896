/** The function finder of scripts/function-length.ts on a small fixture, and the allow-list rules. */
import { describe, expect, it } from "vitest";
import { checkFunctionLengths, findFunctions } from "../scripts/function-length.ts";

/** Every kind of function the check must see, with a known length each. */
const fixture = `/** A header comment does not count. */
export function declared(a: number): number {
  const inner = (x: number) =>
    x + 1;
  return inner(a);
}

export class Box {
  constructor(private readonly value: number) {
    this.value = value;
  }
  get size(): number {
    return this.value;
  }
  method(): void {
    [1, 2].forEach(function each(n) {
      console.log(n);
    });
  }
}

const handlers = {
  onSend: async () => {
    await Promise.resolve();
  },
};

app.get("/x", async (request) => {
  return request;
});

declare function bodiless(): void;
`;

describe("findFunctions", () => {
  it("finds declarations, arrows, methods, accessors, constructors and callbacks with their lengths", () => {
    expect(findFunctions("fixture.ts", fixture)).toEqual([
      { name: "declared", line: 2, lines: 5 },
      { name: "inner", line: 3, lines: 2 },
      { name: "Box.constructor", line: 9, lines: 3 },
      { name: "Box.size", line: 12, lines: 3 },
      { name: "Box.method", line: 15, lines: 5 },
      { name: "each", line: 16, lines: 3 },
      { name: "onSend", line: 23, lines: 3 },
      { name: "app.get callback", line: 28, lines: 3 },
    ]);
  });
});

describe("checkFunctionLengths", () => {
  const files: [string, string][] = [["pkg/src/fixture.ts", fixture]];

  it("reports every function over the limit, marking the allowed ones", () => {
    const report = checkFunctionLengths(files, { "pkg/src/fixture.ts#declared": "being split" }, 4);
    expect(report.long.map((f) => [f.name, f.lines, f.allowed])).toEqual([
      ["declared", 5, "being split"],
      ["Box.method", 5, undefined],
    ]);
    expect(report.stale).toEqual([]);
  });

  it("reports allow-list entries whose function is no longer too long", () => {
    const report = checkFunctionLengths(files, { "pkg/src/fixture.ts#inner": "split already" }, 4);
    expect(report.stale).toEqual(["pkg/src/fixture.ts#inner"]);
  });

  it("passes a file whose functions are all within the limit", () => {
    expect(checkFunctionLengths(files, {}, 5)).toEqual({ long: [], stale: [] });
  });
});
