/**
 * The preamble every runtime integration test shares, once: a fresh migrated schema
 * (and a topic, when `partitions` is given) before the file's tests; after them,
 * every runtime made or tracked here stopped and the schema dropped. `runtime(...)`
 * fills in the shared broker, the file's schema, a quiet logger and a unique group.
 */
import { afterAll, beforeAll } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { createRuntime, type Runtime, type RuntimeOptions } from "../src/index.ts";
import { quietLogger } from "./runtime-support.ts";

/** What `useRuntimeFixture` gives a test file; read it inside tests (set in beforeAll). */
export interface RuntimeFixture {
  /** The file's schema (its pool's search_path). */
  readonly schema: TestSchema;
  /** The file's topic (only with `partitions`). */
  readonly topic: string;
  /** A runtime on the shared broker and the file's schema, stopped after the file's tests. */
  runtime(options?: Partial<RuntimeOptions>): Runtime;
  /** Stops `runtime` after the file's tests (one made with other defaults). */
  track(runtime: Runtime): Runtime;
}

/** Registers the file's beforeAll/afterAll; `prefix` names its schema, topic and groups. */
export function useRuntimeFixture(prefix: string, options: { partitions?: number } = {}): RuntimeFixture {
  let schema: TestSchema | undefined;
  let topic: string | undefined;
  const runtimes: Runtime[] = [];
  beforeAll(async () => {
    schema = await createTestSchema(prefix);
    if (options.partitions !== undefined) topic = await createTestTopic(prefix, options.partitions);
  });
  afterAll(async () => {
    await Promise.all(runtimes.map((runtime) => runtime.stop()));
    await schema?.cleanup();
  });
  const fixture: RuntimeFixture = {
    get schema() {
      if (!schema)
        throw new Error("the runtime fixture's schema is made in beforeAll; read it inside a test");
      return schema;
    },
    get topic() {
      if (!topic) throw new Error("the runtime fixture has a topic only with `partitions`, inside a test");
      return topic;
    },
    runtime(overrides = {}) {
      return fixture.track(
        createRuntime({
          group: uniqueName(prefix),
          ...(topic === undefined ? {} : { topic }),
          brokers: kafkaBrokers(),
          pool: fixture.schema.pool,
          logger: quietLogger(),
          ...overrides,
        }),
      );
    },
    track(runtime) {
      runtimes.push(runtime);
      return runtime;
    },
  };
  return fixture;
}
