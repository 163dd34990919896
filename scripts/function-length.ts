/**
 * `npx tsx scripts/function-length.ts`: the 150-line limit on functions (issue 15).
 * Lists every function, method, accessor, constructor and arrow function in the
 * packages' `src/` (producer-sdk, consumer-runtime, api with its web pages) that is
 * longer than the limit, and exits 1 when one of them is not on the allow-list
 * below. The allow-list only shrinks: an entry whose function is back under the
 * limit (or gone) also fails the check, so that it is removed and cannot regrow.
 *
 * Why a script and not Biome's `noExcessiveLinesPerFunction`: Biome's rule has no
 * per-function allow-list (only suppression comments in files other engineers are
 * editing right now), and it counts lines differently from the issue's measure.
 * This one counts the lines from a function's first token to its last, comments
 * inside included, the measure issue 15 quotes.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

/** Longest function, in lines, that passes. */
export const maxLines = 150;

/** Where the check looks, relative to the repository root. */
export const sourceRoots = ["producer-sdk/src", "consumer-runtime/src", "api/src", "api/web/src"];

/**
 * Functions over the limit that other engineers are splitting now (issue 15 and the
 * materialiser issue), as `path#name`. Remove an entry when its split lands: the
 * check fails until you do.
 */
export const allowList: Record<string, string> = {};

/** One function of a source file. */
export interface FunctionSpan {
  /** Its name, qualified where that helps (`Class.method`, `app.get callback`). */
  name: string;
  /** First line (1-based). */
  line: number;
  /** Lines from its first token to its last. */
  lines: number;
}

/** What a nameless function is called: after what it is assigned to or passed to. */
function nameOf(node: ts.Node, source: ts.SourceFile): string {
  const parent = node.parent;
  const named = (node as { name?: ts.Node }).name;
  const text = (n: ts.Node) => n.getText(source);
  if (ts.isConstructorDeclaration(node)) return `${className(node)}.constructor`;
  if (named && (ts.isMethodDeclaration(node) || ts.isAccessor(node))) {
    return ts.isClassLike(parent) ? `${className(node)}.${text(named)}` : text(named);
  }
  if (named) return text(named);
  if (
    ts.isVariableDeclaration(parent) ||
    ts.isPropertyDeclaration(parent) ||
    ts.isPropertyAssignment(parent)
  ) {
    return text(parent.name);
  }
  if (ts.isCallExpression(parent) || ts.isNewExpression(parent)) {
    return `${text(parent.expression)} callback`;
  }
  return "<anonymous>";
}

function className(node: ts.Node): string {
  const owner = node.parent;
  return ts.isClassLike(owner) && owner.name ? owner.name.text : "<class>";
}

function isFunction(node: ts.Node): node is ts.FunctionLikeDeclaration {
  return (
    ts.isFunctionDeclaration(node) ||
    ts.isFunctionExpression(node) ||
    ts.isArrowFunction(node) ||
    ts.isMethodDeclaration(node) ||
    ts.isConstructorDeclaration(node) ||
    ts.isGetAccessorDeclaration(node) ||
    ts.isSetAccessorDeclaration(node)
  );
}

/** Every function with a body in `text`, nested ones included, in source order. */
export function findFunctions(fileName: string, text: string): FunctionSpan[] {
  const source = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const found: FunctionSpan[] = [];
  const visit = (node: ts.Node): void => {
    if (isFunction(node) && node.body) {
      const first = source.getLineAndCharacterOfPosition(node.getStart(source)).line;
      const last = source.getLineAndCharacterOfPosition(node.getEnd()).line;
      found.push({ name: nameOf(node, source), line: first + 1, lines: last - first + 1 });
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** A function over the limit, where it is. */
export interface LongFunction extends FunctionSpan {
  /** Path from the repository root. */
  file: string;
  /** The allow-list's reason, when it is on the list. */
  allowed?: string;
}

/** The outcome: what is too long, and allow-list entries that no longer match one. */
export interface LengthReport {
  long: LongFunction[];
  stale: string[];
}

/** Checks `files` (path from the root → text) against the limit and the allow-list. */
export function checkFunctionLengths(
  files: Iterable<[string, string]>,
  allowed: Record<string, string> = allowList,
  limit = maxLines,
): LengthReport {
  const long: LongFunction[] = [];
  for (const [file, text] of files) {
    for (const span of findFunctions(file, text)) {
      if (span.lines <= limit) continue;
      const reason = allowed[`${file}#${span.name}`];
      long.push({ ...span, file, ...(reason === undefined ? {} : { allowed: reason }) });
    }
  }
  const matched = new Set(long.map((f) => `${f.file}#${f.name}`));
  return { long, stale: Object.keys(allowed).filter((key) => !matched.has(key)) };
}

function* sourceFiles(root: string, dir: string): Generator<[string, string]> {
  for (const entry of readdirSync(join(root, dir)).sort()) {
    const path = join(dir, entry);
    if (statSync(join(root, path)).isDirectory()) yield* sourceFiles(root, path);
    else if (entry.endsWith(".ts") && !entry.endsWith(".d.ts")) {
      yield [path.split("\\").join("/"), readFileSync(join(root, path), "utf8")];
    }
  }
}

function main(): number {
  const root = relative(process.cwd(), join(dirname(fileURLToPath(import.meta.url)), "..")) || ".";
  const files = sourceRoots.flatMap((dir) => [...sourceFiles(root, dir)]);
  const report = checkFunctionLengths(files);
  for (const f of report.long) {
    const where = `${f.file}:${f.line} ${f.name}: ${f.lines} lines`;
    console.log(f.allowed ? `  allowed (${f.allowed}) ${where}` : `  TOO LONG ${where}`);
  }
  for (const key of report.stale) {
    console.log(
      `  STALE allow-list entry ${key}: no longer over ${maxLines} lines; remove it from scripts/function-length.ts`,
    );
  }
  const failures = report.long.filter((f) => !f.allowed).length + report.stale.length;
  if (failures > 0) {
    console.error(
      `function length: ${failures} problem(s). Split functions over ${maxLines} lines into pieces with one job each.`,
    );
    return 1;
  }
  console.log(
    `function length: no function over ${maxLines} lines outside the allow-list (${files.length} files).`,
  );
  return 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) process.exit(main());
