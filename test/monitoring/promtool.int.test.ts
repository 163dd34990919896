/**
 * The alert rules and the dashboard, checked with the real `promtool` (Debian package
 * `prometheus`, installed by `npm test` when missing): the rules load, their unit tests
 * pass, every alert is tested firing and not firing, every runbook link resolves,
 * every metric is documented, and every dashboard query parses.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  alertsFile,
  alertTestsFile,
  dashboardPanels,
  dashboardQueries,
  datasourceVariable,
  documentedMetricFor,
  documentedMetrics,
  metricsInExpr,
  readAlertRules,
  readAlertTestCases,
  readDashboard,
  resolveGrafanaVariables,
  root,
  runbookAnchors,
} from "./monitoring-files.ts";

const read = (path: string) => readFileSync(join(root, path), "utf8");

function promtool(args: string[]): { status: number | null; output: string } {
  const result = spawnSync("promtool", args, { cwd: root, encoding: "utf8" });
  if (result.error) {
    throw new Error(
      `promtool could not run (${result.error.message}); install the Debian package "prometheus" (apt-get install prometheus), as npm test does.`,
    );
  }
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

const rules = readAlertRules();
const cases = readAlertTestCases();
const queries = dashboardQueries();
const documented = documentedMetrics();
const scratch = mkdtempSync(join(tmpdir(), "chatbus-promtool-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe("alert rules", () => {
  it("load with promtool check rules", () => {
    const { status, output } = promtool(["check", "rules", alertsFile]);
    expect(output).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(status, output).toBe(0);
  });

  it("pass their unit tests (promtool test rules)", () => {
    const { status, output } = promtool(["test", "rules", alertTestsFile]);
    expect(status, output).toBe(0);
    expect(output).toContain("SUCCESS");
  });

  it("are read completely by the test's parser", () => {
    // Guards the checks below: a rule the parser missed would escape them.
    expect(rules.length).toBeGreaterThanOrEqual(10);
    for (const rule of rules) {
      expect(rule.expr, rule.alert).not.toBe("");
      expect(Object.keys(rule.annotations).sort(), rule.alert).toEqual([
        "description",
        "runbook_url",
        "summary",
      ]);
    }
  });

  it.each(rules.map((rule) => [rule.alert, rule] as const))(
    "%s has a severity, a summary and a runbook link",
    (_, rule) => {
      expect(["critical", "warning", "info"]).toContain(rule.labels.severity);
      // The summary names the subscription, or the job/instance when the alert has none.
      const names = /\{\{ \$labels\.(subscription|instance|job) \}\}/;
      expect(rule.annotations.summary).toMatch(names);
      expect(rule.annotations.runbook_url).toMatch(/^docs\/runbook\.md#[a-z0-9-]+$/);
    },
  );

  it.each(rules.map((rule) => [rule.alert, rule] as const))(
    "%s links to a runbook section that exists",
    (_, rule) => {
      const anchor = (rule.annotations.runbook_url ?? "").split("#")[1] ?? "";
      expect([...runbookAnchors()]).toContain(anchor);
    },
  );

  it.each(rules.map((rule) => [rule.alert] as const))("%s is unit-tested firing and not firing", (alert) => {
    const mine = cases.filter((c) => c.alertname === alert);
    expect(
      mine.some((c) => c.firing),
      `${alert}: no alerts.test.yml case expects it to fire`,
    ).toBe(true);
    expect(
      mine.some((c) => !c.firing),
      `${alert}: no alerts.test.yml case expects it not to fire`,
    ).toBe(true);
  });

  it("unit tests name only existing alerts", () => {
    const names = new Set(rules.map((rule) => rule.alert));
    expect(cases.length).toBeGreaterThan(0);
    for (const c of cases)
      expect(names, `alerts.test.yml tests unknown alert ${c.alertname}`).toContain(c.alertname);
  });

  it("use only documented metrics", () => {
    const undocumented = rules.flatMap((rule) =>
      metricsInExpr(rule.expr)
        .filter((name) => documentedMetricFor(name, documented) === undefined)
        .map((name) => `${rule.alert}: ${name}`),
    );
    expect(undocumented, "document these in docs/metrics.md").toEqual([]);
  });
});

describe("Grafana dashboard", () => {
  it("takes its data source from the datasource variable", () => {
    const dashboard = readDashboard();
    const variable = dashboard.templating?.list?.find((v) => v.name === "datasource");
    expect(variable?.type).toBe("datasource");
    expect(variable?.query).toBe("prometheus");
    const panels = dashboardPanels(dashboard).filter((panel) => panel.type !== "row");
    expect(panels.length).toBeGreaterThan(10);
    for (const panel of panels) {
      expect(panel.datasource?.uid, panel.title).toBe(datasourceVariable);
      for (const target of panel.targets ?? [])
        expect(target.datasource?.uid, panel.title).toBe(datasourceVariable);
    }
  });

  it("queries parse (checked by promtool as recording rules)", () => {
    expect(queries.length).toBeGreaterThan(10);
    const lines = ["groups:", "  - name: dashboard", "    rules:"];
    queries.forEach((query, i) => {
      lines.push(`      - record: chatbus:dashboard_query_${i}`);
      lines.push(`        expr: ${JSON.stringify(resolveGrafanaVariables(query.expr, "1m"))}`);
    });
    const file = join(scratch, "dashboard-queries.yml");
    writeFileSync(file, `${lines.join("\n")}\n`);
    const { status, output } = promtool(["check", "rules", file]);
    expect(status, output).toBe(0);
  });

  it("uses only documented metrics", () => {
    const undocumented = queries.flatMap((query) =>
      metricsInExpr(query.expr)
        .filter((name) => documentedMetricFor(name, documented) === undefined)
        .map((name) => `${query.panel}: ${name}`),
    );
    expect(undocumented, "document these in docs/metrics.md").toEqual([]);
  });

  it("shows every metric that an alert watches", () => {
    const shown = new Set(
      queries.flatMap((query) =>
        metricsInExpr(query.expr).map((name) => documentedMetricFor(name, documented)),
      ),
    );
    const missing = rules.flatMap((rule) =>
      metricsInExpr(rule.expr)
        .map((name) => documentedMetricFor(name, documented))
        .filter((name) => name !== undefined && name !== "up" && !shown.has(name))
        .map((name) => `${rule.alert}: ${name}`),
    );
    expect(missing).toEqual([]);
  });

  it("has a panel for every metric the spec names", () => {
    const shown = new Set(
      queries.flatMap((query) =>
        metricsInExpr(query.expr).map((name) => documentedMetricFor(name, documented)),
      ),
    );
    const unshown = [...documented.keys()].filter((name) => name !== "up" && !shown.has(name));
    expect(unshown).toEqual([]);
  });
});

describe("docker compose provisioning", () => {
  // compose.yaml mounts dashboards/prometheus at /etc/prometheus, the provisioning
  // folder at /etc/grafana/provisioning and dashboards/grafana at /var/lib/grafana/dashboards.
  const compose = read("compose.yaml");

  it("mounts the folders the configuration files point into", () => {
    expect(compose).toContain("./dashboards/prometheus:/etc/prometheus");
    expect(compose).toContain("./dashboards/grafana/provisioning:/etc/grafana/provisioning");
    expect(compose).toContain("./dashboards/grafana:/var/lib/grafana/dashboards");
    expect(compose).toContain("--config.file=/etc/prometheus/prometheus.yml");
    expect(read("dashboards/grafana/provisioning/dashboards/chatbus.yml")).toMatch(
      /path: \/var\/lib\/grafana\/dashboards\n/,
    );
    expect(read("dashboards/grafana/provisioning/datasources/prometheus.yml")).toContain(
      "url: http://prometheus:9090",
    );
  });

  it("gives Prometheus a configuration that promtool accepts, with the alert rules", () => {
    const config = read("dashboards/prometheus/prometheus.yml");
    expect(config).toContain("- /etc/prometheus/alerts.yml");
    for (const job of ["chatbus-runtime", "chatbus-api"]) expect(config).toContain(`job_name: ${job}`);
    // Check it as compose runs it: the rule path mapped to this checkout.
    const file = join(scratch, "prometheus.yml");
    writeFileSync(file, config.replace("/etc/prometheus/alerts.yml", alertsFile));
    const { status, output } = promtool(["check", "config", file]);
    expect(output).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(status, output).toBe(0);
  });
});
