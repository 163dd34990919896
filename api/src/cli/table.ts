/** Plain-text tables for the command line: columns padded to the widest cell. */

/**
 * Renders rows under a header; cells are stringified on one line, control and
 * bidirectional-override characters replaced by "?", long ones cut at `maxWidth`.
 */
export function renderTable(header: string[], rows: unknown[][], maxWidth = 60): string {
  const cell = (value: unknown) => {
    // Server strings (handler error messages, record values) are free text: control
    // characters such as ESC could rewrite the operator's terminal, so they are shown as "?".
    const text =
      value === null || value === undefined
        ? "-"
        : String(value)
            .replace(/\s+/g, " ")
            // biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
            .replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, "?");
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
