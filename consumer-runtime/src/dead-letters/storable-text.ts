/**
 * PostgreSQL text and jsonb cannot hold U+0000 (in JSON, the escape `\\u0000`). A dead
 * letter exists because a record is hostile or broken, so its descriptive columns (key,
 * headers, ids, the error message that may quote the bad value) replace U+0000 with
 * U+FFFD: the dead letter itself can always be stored. The record's value is kept byte
 * for byte (bytea).
 */
export const storable = (text: string): string =>
  text.replaceAll("\u0000", "\ufffd").replaceAll("\\u0000", "\\ufffd");

/** `storable` for an optional column. */
export const storableOrNull = (text: string | null | undefined): string | null =>
  text === null || text === undefined ? null : storable(text);
