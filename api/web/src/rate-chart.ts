/** A small line chart as inline SVG (no chart library): rates over the last minutes. */

const svgNs = "http://www.w3.org/2000/svg";

/** One line of the chart. */
export interface ChartSeries {
  name: string;
  /** CSS colour, chosen for contrast on white. */
  color: string;
  /** [time in ms, value] in time order. */
  points: [number, number][];
}

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attributes: Record<string, string | number>) {
  const element = document.createElementNS(svgNs, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/** A "nice" axis maximum at or above `value`: 1, 2, 5 × 10^n. */
export function niceMax(value: number): number {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

/** "45 s", "2 min", "2 min 30 s". */
export function agoText(ms: number): string {
  const seconds = Math.round(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  const rest = seconds % 60;
  return rest === 0 ? `${minutes} min` : `${minutes} min ${rest} s`;
}

/**
 * Draws `series` over the window `[now - windowMs, now]` into `container`
 * (replacing what was there). The SVG carries a text summary for screen readers.
 */
export function drawRateChart(
  container: Element,
  series: ChartSeries[],
  options: { now: number; windowMs: number; unit: string; summary: string },
): void {
  // As wide as the container (in CSS pixels), so text is not scaled.
  const width = Math.max(320, Math.round(container.clientWidth || 640));
  const height = 200;
  const left = 44;
  const right = 12;
  const top = 12;
  const bottom = 26;
  const start = options.now - options.windowMs;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.points.map(([, v]) => v))));
  const x = (t: number) => left + ((t - start) / options.windowMs) * (width - left - right);
  const y = (v: number) => top + (1 - v / max) * (height - top - bottom);

  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": options.summary,
    class: "rate-chart",
  });
  const title = svg("title", {});
  title.textContent = options.summary;
  root.append(title);
  for (let i = 0; i <= 4; i++) {
    const value = (max * i) / 4;
    root.append(svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }));
    const label = svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end", class: "axis" });
    label.textContent = String(Number(value.toFixed(2)));
    root.append(label);
  }
  for (let i = 4; i >= 0; i--) {
    const ago = (options.windowMs * i) / 4;
    const label = svg("text", {
      x: x(options.now - ago),
      y: height - 8,
      "text-anchor": "middle",
      class: "axis",
    });
    label.textContent = i === 0 ? "now" : `−${agoText(ago)}`;
    root.append(label);
  }
  const unit = svg("text", { x: left, y: top - 2, class: "axis" });
  unit.textContent = options.unit;
  root.append(unit);
  for (const line of series) {
    const visible = line.points.filter(([t]) => t >= start);
    if (visible.length === 0) continue;
    const path = visible.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    root.append(
      svg("polyline", {
        points: path,
        fill: "none",
        stroke: line.color,
        "stroke-width": 2.5,
        "stroke-linejoin": "round",
        "data-series": line.name,
      }),
    );
  }
  container.replaceChildren(root);
}
