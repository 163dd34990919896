/**
 * A small builder of positional parameters: `p.add(value)` returns its placeholder
 * (`$1`, `$2`, …) so that SQL assembled from parts never renumbers `$n` by hand.
 */
export class SqlParams {
  readonly values: unknown[] = [];

  /** Adds a value; returns its placeholder, with a cast when given (`$3::text[]`). */
  add(value: unknown, cast?: string): string {
    this.values.push(value);
    return cast ? `$${this.values.length}::${cast}` : `$${this.values.length}`;
  }

  /**
   * Adds one parameter per column; returns a FROM item yielding one row per index
   * (`ROWS FROM` zips the columns like a multi-argument `unnest`). A column of cast
   * `json` holds JS values (objects, not their text): it is sent as ONE JSON array
   * (`JSON.stringify` is native) and read back with `json_array_elements`, one json value
   * per row. Why: a `text[]` of JSON texts is escaped element by element in JS by pg
   * (`escapeElement`) and parsed again by PostgreSQL's `array_in`, both slower for large
   * texts than the JSON array (measured: docs/decisions.md, issue 12).
   */
  unnest(columns: [unknown[], string][]): string {
    const items = columns.map(([values, cast]) =>
      cast === "json"
        ? `json_array_elements(${this.add(JSON.stringify(values), "json")})`
        : `unnest(${this.add(values, `${cast}[]`)})`,
    );
    return `ROWS FROM (${items.join(", ")})`;
  }
}
