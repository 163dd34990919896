/** Connection settings of the test run, from the same env vars as production. */
export function kafkaBrokers(): string[] {
  return (process.env.KAFKA_BROKERS ?? "127.0.0.1:9092").split(",");
}

export function databaseUrl(): string {
  return process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/chatbus";
}
