/** Plain-text tables for the command line: columns padded to the widest cell. */

/** Renders rows under a header; cells are stringified, long ones cut at `maxWidth`. */
export function renderTable(header: string[], rows: unknown[][], maxWidth = 60): string {
  const cell = (value: unknown) => {
    const text = value === null || value === undefined ? "-" : String(value).replace(/\s+/g, " ");
    return text.length > maxWidth ? `${text.slice(0, maxWidth - 1)}…` : text;
  };
  const body = rows.map((row) => row.map(cell));
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join("  ")
      .trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}
