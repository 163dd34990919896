import { defineConfig } from "vitest/config";

// Tiers by suffix: *.unit.test.ts (pure logic), *.int.test.ts (real Kafka and
// PostgreSQL), *.e2e.test.ts (whole processes, real clients). Integration tiers
// share one broker started by the global setup; each test file makes its own
// topics and PostgreSQL schema, so files run in parallel without seeing each other.
const shared = {
  resolve: { conditions: ["@chatbus/source"] },
  ssr: { resolve: { conditions: ["@chatbus/source"] } },
};
const packages = "{producer-sdk,consumer-runtime,api,test}";

export default defineConfig({
  ...shared,
  test: {
    projects: [
      { ...shared, test: { name: "unit", include: [`${packages}/**/*.unit.test.ts`] } },
      {
        ...shared,
        test: {
          name: "int",
          include: [`${packages}/**/*.int.test.ts`],
          globalSetup: ["test/support/global-setup.ts"],
          testTimeout: 120_000,
          hookTimeout: 120_000,
        },
      },
      {
        ...shared,
        test: {
          name: "e2e",
          include: [`${packages}/**/*.e2e.test.ts`],
          globalSetup: ["test/support/global-setup.ts"],
          testTimeout: 300_000,
          hookTimeout: 180_000,
        },
      },
    ],
  },
});
