/**
 * Finds the code a reader would copy from the documentation: every ```ts / ```js block
 * that imports a `@chatbus/` package. An HTML comment on the line before a block says
 * how to run it:
 *
 *   (none)                                    run to completion, exit code 0
 *   <!-- snippet: service "TEXT" -->          long-running: send it one chat message,
 *                                             wait for TEXT on its stdout, SIGTERM, exit 0
 *   <!-- snippet: fragment REASON -->         not runnable on its own (REASON says why)
 */
import { readFileSync } from "node:fs";

/** How the doc test runs one snippet. */
export type SnippetMode =
  | { kind: "script" }
  | { kind: "service"; expect: string }
  | { kind: "fragment"; reason: string };

/** One code block taken from a markdown file. */
export interface DocSnippet {
  /** `file:line` of the opening fence. */
  where: string;
  code: string;
  mode: SnippetMode;
}

const fence = /^```(ts|js|mjs|typescript|javascript)\n([\s\S]*?)^```$/gm;
const annotation = /<!--\s*snippet:\s*(service|fragment)\s*(.*?)\s*-->\s*$/;

function modeOf(previousLine: string, where: string): SnippetMode {
  const match = annotation.exec(previousLine);
  if (!match) return { kind: "script" };
  const argument = match[2] ?? "";
  if (match[1] === "service") {
    const expect = /^"(.+)"$/.exec(argument)?.[1];
    if (!expect) throw new Error(`${where}: <!-- snippet: service "TEXT" --> needs the text to wait for`);
    return { kind: "service", expect };
  }
  if (!argument) throw new Error(`${where}: <!-- snippet: fragment REASON --> needs a reason`);
  return { kind: "fragment", reason: argument };
}

/** The `@chatbus/` snippets of one markdown file, in file order. */
export function extractSnippets(path: string, label = path): DocSnippet[] {
  const text = readFileSync(path, "utf8");
  const snippets: DocSnippet[] = [];
  for (const match of text.matchAll(fence)) {
    const code = match[2] ?? "";
    if (!code.includes('from "@chatbus/')) continue;
    const before = text.slice(0, match.index);
    const line = before.split("\n").length;
    const previousLine = before.replace(/\n$/, "").split("\n").pop() ?? "";
    const where = `${label}:${line}`;
    snippets.push({ where, code, mode: modeOf(previousLine, where) });
  }
  return snippets;
}
