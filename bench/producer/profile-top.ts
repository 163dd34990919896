/**
 * Prints the top self-time entries of a V8 CPU profile (`node --cpu-prof` writes
 * `.cpuprofile` JSON), so that a profile can be summarised in a table without a
 * browser. Self time of a function = the sampled time spent in it, not in its callees;
 * entries are merged by function name and source position.
 *
 *   npx tsx bench/producer/profile-top.ts <file.cpuprofile> [--top 25] [--filter text] [--group]
 *
 * `--filter` keeps only entries whose name or file contains the text; percentages stay
 * relative to the whole profile. `--group` sums self time by where the code lives
 * instead: a package under node_modules, a folder of this repository, `node:` internals
 * (Buffer, streams, ...), or V8's own entries (GC, idle, native functions).
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { helpFromHeader } from "../usage.ts";

helpFromHeader(import.meta.url);

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** `file:///…/node_modules/kafkajs/src/x.js` → `kafkajs/src/x.js`; our files relative to the repo. */
function shortUrl(url: string): string {
  const modules = url.lastIndexOf("node_modules/");
  if (modules >= 0) return url.slice(modules + "node_modules/".length);
  const cwd = `file://${process.cwd()}/`;
  return url.startsWith(cwd) ? url.slice(cwd.length) : url;
}

/** Where an entry's code lives, for `--group`: `kafkajs`, `producer-sdk/src`, `node:internal`, `(garbage collector)`. */
function groupOf(entry: string): string {
  // V8's own entries ("(idle)", "(garbage collector)") and native functions have no file.
  if (/^\([a-z ]+\)$/.test(entry)) return entry;
  const where = entry.slice(entry.lastIndexOf(" ") + 1);
  if (where.startsWith("node:")) return "node: internals";
  if (!where.includes("/")) return "(native functions)";
  const parts = where.split("/");
  const depth = parts[0]?.startsWith("@") ? 3 : 2;
  return parts.slice(0, Math.min(depth, parts.length - 1)).join("/") || where;
}

/** Self time in microseconds per "name file:line", largest first. */
export function selfTimes(profile: CpuProfile): { entry: string; micros: number }[] {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const totals = new Map<string, number>();
  profile.samples.forEach((id, i) => {
    const frame = byId.get(id)?.callFrame;
    if (!frame) return;
    const name = frame.functionName || "(anonymous)";
    const where = frame.url ? ` ${shortUrl(frame.url)}:${frame.lineNumber + 1}` : "";
    const entry = `${name}${where}`;
    totals.set(entry, (totals.get(entry) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  return [...totals].map(([entry, micros]) => ({ entry, micros })).sort((a, b) => b.micros - a.micros);
}

function main(): void {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      top: { type: "string", default: "25" },
      filter: { type: "string", default: "" },
      group: { type: "boolean", default: false },
    },
  });
  const file = positionals[0];
  if (!file) {
    console.error("usage: profile-top.ts <file.cpuprofile> [--top 25] [--filter text] [--group]");
    process.exit(2);
  }
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  let entries = selfTimes(profile);
  if (values.group) {
    const groups = new Map<string, number>();
    for (const e of entries) groups.set(groupOf(e.entry), (groups.get(groupOf(e.entry)) ?? 0) + e.micros);
    entries = [...groups].map(([entry, micros]) => ({ entry, micros })).sort((a, b) => b.micros - a.micros);
  }
  const total = entries.reduce((n, e) => n + e.micros, 0);
  const shown = entries.filter((e) => !values.filter || e.entry.includes(values.filter));
  console.log(`${file}: ${(total / 1000).toFixed(0)} ms sampled`);
  console.log("| self ms | % | function |");
  console.log("|---:|---:|---|");
  for (const { entry, micros } of shown.slice(0, Number(values.top))) {
    console.log(`| ${(micros / 1000).toFixed(0)} | ${((100 * micros) / total).toFixed(1)} | ${entry} |`);
  }
}

main();
