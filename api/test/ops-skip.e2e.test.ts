/**
 * The operations page's "In flight and stuck" card in a real browser (Debian's
 * chromium driven by playwright-core) against the API on a free port and real
 * PostgreSQL: a status row published with the runtime's store function says a
 * subscription is stuck on a record; the page shows it (partition, offset, type,
 * conversation, error, attempts, since), its in-flight count and oldest age; the Skip
 * button records a request with the operator's name; a request written with
 * `requestSkip` shows as pending, and one marked applied shows its dead letter.
 */
import { existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { markSkipApplied, requestSkip } from "@chatbus/consumer-runtime/operator";
import { type Browser, chromium, type Page } from "playwright-core";
import { build } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { recordDeadLetter } from "../../consumer-runtime/src/dead-letters/store.ts";
import { publishSubscriptionStatus } from "../../consumer-runtime/src/status/store.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import { type Harness, operatorKey, startHarness } from "./harness.ts";

const webRoot = fileURLToPath(new URL("../web/", import.meta.url));
const artifacts = fileURLToPath(new URL("../../test-results/web/", import.meta.url));
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const timeout = 30_000;

/** Newest modification time under `path` (files only), skipping `dist`. */
function newest(path: string): number {
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  return Math.max(
    0,
    ...readdirSync(path)
      .filter((name) => name !== "dist" && name !== "node_modules")
      .map((name) => newest(join(path, name))),
  );
}

/** Builds the pages unless `web/dist` is newer than every source (as web-pages.e2e.test.ts does). */
async function ensureBuilt(): Promise<void> {
  const index = join(webRoot, "dist", "index.html");
  if (existsSync(index) && statSync(index).mtimeMs >= newest(webRoot)) return;
  await build({ configFile: join(webRoot, "vite.config.ts"), logLevel: "warn" });
}

let h: Harness;
let browser: Browser;
let page: Page;
const subscription = uniqueName("ops_stuck");
const since = new Date(Date.now() - 95_000).toISOString();
const pageErrors: string[] = [];

function poll<T>(check: () => T | Promise<T>) {
  return expect.poll(check, { timeout, interval: 100 });
}

beforeAll(async () => {
  await ensureBuilt();
  mkdirSync(artifacts, { recursive: true });
  h = await startHarness("ops_skip", {}, 2);
  await publishSubscriptionStatus(h.schema.pool, subscription, "instance-a", {
    group: subscription,
    topic: h.topic,
    breaker: "open",
    inFlight: 3,
    oldestInFlightMs: 95_000,
    stuck: [
      {
        partition: 1,
        offset: "41",
        eventType: "chat.message.sent",
        conversationId: "conv-stuck",
        error: "connect ECONNREFUSED 10.0.0.9:443",
        attempts: 17,
        since,
      },
    ],
    processed: 10,
    failed: 17,
    deadLettered: 0,
    startedAt: new Date().toISOString(),
    partitions: [
      { partition: 0, committedOffset: "12", highWatermark: "12", lag: 0, paused: false },
      { partition: 1, committedOffset: "41", highWatermark: "50", lag: 9, paused: true },
    ],
  });
  if (!existsSync(chromiumPath)) {
    throw new Error(
      `no chromium at ${chromiumPath}: install it (apt-get install -y chromium) or set CHROMIUM_PATH.`,
    );
  }
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-quic"],
  });
  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
    locale: "en-GB",
    timezoneId: "UTC",
  });
  page = await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on("pageerror", (error) => pageErrors.push(error.message));
});

afterAll(async () => {
  await browser?.close();
  await h?.close();
});

describe("operations page: in flight and stuck", () => {
  it("shows in-flight work and the stuck record with its details", async () => {
    await page.goto(`${h.url}/ops`);
    await page.getByLabel("Operator key").fill(operatorKey);
    await page.getByLabel("Your name").fill("oli");
    await page.getByRole("button", { name: "Open" }).click();
    const line = page.locator(`[data-in-flight="${subscription}"]`);
    await poll(() => line.textContent()).toBe(`${subscription}: 3 in flight, oldest 1m 35s, 1 stuck`);
    const row = page.locator(`tr[data-stuck="${subscription}:1:41"]`);
    const cells = await row.locator("th, td").allTextContents();
    expect(cells.slice(0, 7)).toEqual([
      subscription,
      "1",
      "41",
      "chat.message.sent",
      "conv-stuck",
      "connect ECONNREFUSED 10.0.0.9:443",
      "17",
    ]);
    expect(await row.locator("td").nth(6).getAttribute("title")).toBe(since);
    await page.screenshot({ path: join(artifacts, "ops-stuck.png"), fullPage: true });
  });

  it("the Skip button records a request with the operator's name and shows it until applied", async () => {
    await page.locator(`tr[data-stuck="${subscription}:1:41"]`).getByRole("button", { name: /Skip/ }).click();
    const dialog = page.getByRole("dialog");
    await expect(dialog.textContent()).resolves.toContain('dead letter of class "operator"');
    await dialog.getByRole("button", { name: "Skip" }).click();
    const stored = async () =>
      (
        await h.schema.pool.query<{ id: string; requested_by: string }>(
          `SELECT id::text, requested_by FROM subscription_skips WHERE subscription = $1 AND partition = 1 AND "offset" = 41`,
          [subscription],
        )
      ).rows;
    await poll(async () => (await stored()).length).toBe(1);
    const skip = (await stored())[0]!;
    expect(skip.requested_by).toBe("operator:oli");
    const item = page.locator(`li[data-skip="${skip.id}"]`);
    await poll(() => item.getAttribute("data-status")).toBe("pending");
    expect(await item.textContent()).toContain("requested by operator:oli");
    expect(await item.textContent()).toContain("waiting for the instance that owns the partition");

    // A request written with the store function (as the CLI's route does) shows as pending too.
    const other = await requestSkip(h.schema.pool, {
      subscription,
      topic: h.topic,
      partition: 1,
      offset: "43",
      requestedBy: "operator:cli-user",
    });
    await poll(() => page.locator(`li[data-skip="${other.id}"]`).textContent()).toContain(
      "requested by operator:cli-user",
    );

    // The runtime's side (stood in for here) applies it: the page shows the dead letter.
    const { id: deadLetterId } = await recordDeadLetter(h.schema.pool, {
      subscription,
      topic: h.topic,
      partition: 1,
      offset: "41",
      key: "conv-stuck",
      headers: {},
      value: Buffer.from("{}"),
      failureClass: "operator",
      errorCode: "CHATBUS_OPERATOR_SKIP",
      errorMessage: "skipped by operator:oli",
      attempts: 17,
      firstFailedAt: new Date(since),
      lastFailedAt: new Date(),
    });
    await markSkipApplied(h.schema.pool, skip.id, "instance-a", deadLetterId);
    await poll(() => item.getAttribute("data-status")).toBe("applied");
    expect(await item.textContent()).toContain(`dead letter #${deadLetterId}`);
    await page.screenshot({ path: join(artifacts, "ops-skip-applied.png"), fullPage: true });
    expect(pageErrors).toEqual([]);
  });
});
