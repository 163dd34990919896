/**
 * Reads the monitoring files of dashboards/ and docs/ for the monitoring tests: the
 * alert rules, the rule unit tests, the Grafana dashboard's queries, the runbook's
 * anchors and the documented metric names.
 *
 * The rule files are read with small line-based parsers that know the layout of
 * dashboards/prometheus/alerts.yml (one `- alert:` item per rule, `expr` inline or as
 * a `|` block); `promtool check rules` validates the YAML itself.
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const alertsFile = join(root, "dashboards/prometheus/alerts.yml");
export const alertTestsFile = join(root, "dashboards/prometheus/alerts.test.yml");
export const dashboardFile = join(root, "dashboards/grafana/chatbus.json");
export const runbookFile = join(root, "docs/runbook.md");
export const metricsDocFile = join(root, "docs/metrics.md");

export interface AlertRule {
  alert: string;
  expr: string;
  /** The `for:` duration as written, e.g. `5m`; undefined when the rule has none. */
  for: string | undefined;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

function unquote(value: string): string {
  const trimmed = value.trim();
  if (trimmed.startsWith('"') && trimmed.endsWith('"')) return JSON.parse(trimmed) as string;
  if (trimmed.startsWith("'") && trimmed.endsWith("'")) return trimmed.slice(1, -1).replaceAll("''", "'");
  return trimmed;
}

const indentOf = (line: string) => line.length - line.trimStart().length;

/** The alerting rules of alerts.yml, in file order. */
export function readAlertRules(text = readFileSync(alertsFile, "utf8")): AlertRule[] {
  const lines = text.split("\n");
  const rules: AlertRule[] = [];
  let rule: AlertRule | undefined;
  let section: "labels" | "annotations" | undefined;
  let sectionIndent = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? "";
    const trimmed = line.trim();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    const start = /^-\s+alert:\s*(\S+)\s*$/.exec(trimmed);
    if (start) {
      rule = { alert: unquote(start[1] ?? ""), expr: "", for: undefined, labels: {}, annotations: {} };
      rules.push(rule);
      section = undefined;
      continue;
    }
    if (!rule) continue;
    if (trimmed.startsWith("- ")) {
      rule = undefined; // a recording rule or another list
      continue;
    }
    if (section && indentOf(line) > sectionIndent) {
      const match = /^([A-Za-z_][A-Za-z0-9_]*):\s*(.*)$/.exec(trimmed);
      if (match) rule[section][match[1] ?? ""] = unquote(match[2] ?? "");
      continue;
    }
    section = undefined;
    const key = /^(expr|for|labels|annotations):\s*(.*)$/.exec(trimmed);
    if (!key) continue;
    const [, name, value = ""] = key;
    if (name === "labels" || name === "annotations") {
      section = name;
      sectionIndent = indentOf(line);
    } else if (name === "for") {
      rule.for = value.trim();
    } else if (value.trim() === "|" || value.trim() === "|-" || value.trim() === ">") {
      const block: string[] = [];
      const base = indentOf(line);
      while (
        i + 1 < lines.length &&
        ((lines[i + 1] ?? "").trim() === "" || indentOf(lines[i + 1] ?? "") > base)
      ) {
        i++;
        block.push((lines[i] ?? "").trim());
      }
      rule.expr = block.filter(Boolean).join(value.trim() === ">" ? " " : "\n");
    } else {
      rule.expr = unquote(value);
    }
  }
  return rules;
}

export interface AlertTestCase {
  alertname: string;
  evalTime: string;
  /** True when the case expects at least one alert (`exp_alerts` not empty). */
  firing: boolean;
}

/** The `alert_rule_test` cases of alerts.test.yml. */
export function readAlertTestCases(text = readFileSync(alertTestsFile, "utf8")): AlertTestCase[] {
  const cases: AlertTestCase[] = [];
  const pattern = /-\s+eval_time:\s*(\S+)\s*\n\s+alertname:\s*(\S+)\s*\n\s+exp_alerts:[ \t]*(\[\])?/g;
  for (const match of text.matchAll(pattern)) {
    cases.push({ evalTime: match[1] ?? "", alertname: match[2] ?? "", firing: match[3] === undefined });
  }
  return cases;
}

/** Grafana's reference to the dashboard's data source variable (Grafana syntax, not a JS template). */
// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana variable syntax
export const datasourceVariable = "${datasource}";

export interface DashboardQuery {
  panel: string;
  refId: string;
  expr: string;
}

interface DashboardJson {
  templating?: { list?: { name: string; type: string; query?: unknown }[] };
  panels?: DashboardPanel[];
}
interface DashboardPanel {
  title?: string;
  type?: string;
  datasource?: { type?: string; uid?: string };
  targets?: { refId?: string; expr?: string; datasource?: { uid?: string } }[];
  panels?: DashboardPanel[];
}

export function readDashboard(): DashboardJson {
  return JSON.parse(readFileSync(dashboardFile, "utf8")) as DashboardJson;
}

/** Every panel of the dashboard, including those inside collapsed rows. */
export function dashboardPanels(dashboard = readDashboard()): DashboardPanel[] {
  const all: DashboardPanel[] = [];
  const walk = (panels: DashboardPanel[] | undefined) => {
    for (const panel of panels ?? []) {
      all.push(panel);
      walk(panel.panels);
    }
  };
  walk(dashboard.panels);
  return all;
}

/** The PromQL of every panel target, as written (with Grafana variables). */
export function dashboardQueries(dashboard = readDashboard()): DashboardQuery[] {
  return dashboardPanels(dashboard).flatMap((panel) =>
    (panel.targets ?? []).map((target) => ({
      panel: panel.title ?? "(untitled)",
      refId: target.refId ?? "?",
      expr: target.expr ?? "",
    })),
  );
}

/**
 * Replaces the dashboard's Grafana variables so that Prometheus can run the query:
 * `$subscription` → all subscriptions, `$__rate_interval` → `rateInterval`.
 */
export function resolveGrafanaVariables(expr: string, rateInterval: string): string {
  return expr
    .replaceAll("$__rate_interval", rateInterval)
    .replaceAll(`$\{subscription}`, ".*")
    .replaceAll("$subscription", ".*");
}

/** GitHub's anchor for a Markdown heading. */
export function headingAnchor(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");
}

/** The anchors of the runbook's headings. */
export function runbookAnchors(text = readFileSync(runbookFile, "utf8")): Set<string> {
  const anchors = new Set<string>();
  for (const match of text.matchAll(/^#{1,6}\s+(.+)$/gm)) anchors.add(headingAnchor(match[1] ?? ""));
  return anchors;
}

/** Metric names documented in docs/metrics.md (first column of its tables), with their type. */
export function documentedMetrics(text = readFileSync(metricsDocFile, "utf8")): Map<string, string> {
  return new Map([...documentedMetricDetails(text)].map(([name, details]) => [name, details.type]));
}

export interface MetricDetails {
  type: string;
  /** Label names, as the labels column of docs/metrics.md lists them. */
  labels: string[];
}

/** The metrics of docs/metrics.md's tables: `| \`name\` | type | labels | ...`. */
export function documentedMetricDetails(
  text = readFileSync(metricsDocFile, "utf8"),
): Map<string, MetricDetails> {
  const metrics = new Map<string, MetricDetails>();
  for (const match of text.matchAll(/^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*([a-z]+)\s*\|([^|]*)\|/gm)) {
    const labels = [...(match[3] ?? "").matchAll(/`([a-z_][a-z0-9_]*)`/g)].map((m) => m[1] ?? "");
    metrics.set(match[1] ?? "", { type: match[2] ?? "", labels });
  }
  return metrics;
}

/** The latency histogram buckets every chatbus histogram uses (seconds), as `le` label values. */
export const latencyBuckets = [
  "0.001",
  "0.0025",
  "0.005",
  "0.01",
  "0.025",
  "0.05",
  "0.1",
  "0.25",
  "0.5",
  "1",
  "2.5",
  "5",
  "10",
  "+Inf",
];

/**
 * The metric names a PromQL expression reads, e.g. `chatbus_consumer_lag`,
 * `chatbus_end_to_end_latency_seconds_bucket`, `up`.
 */
export function metricsInExpr(expr: string): string[] {
  const names = new Set<string>();
  for (const match of expr.matchAll(/\bchatbus_[a-z0-9_]+/g)) names.add(match[0]);
  if (/(^|[^a-z0-9_])up\s*\{/.test(expr)) names.add("up");
  return [...names];
}

/** The documented metric a series name belongs to (`…_bucket` of a documented histogram → the histogram). */
export function documentedMetricFor(name: string, documented: Map<string, string>): string | undefined {
  if (documented.has(name)) return name;
  const base = name.replace(/_(bucket|count|sum)$/, "");
  return base !== name && documented.get(base) === "histogram" ? base : undefined;
}
