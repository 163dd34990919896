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

  /** Adds one array per column; returns `unnest(...)` over them with their casts. */
  unnest(columns: [unknown[], string][]): string {
    return `unnest(${columns.map(([values, cast]) => this.add(values, `${cast}[]`)).join(", ")})`;
  }
}
