/**
 * The web pages in a real browser (Debian's chromium driven by playwright-core)
 * against the whole stack in this process: the API on a free port, the real
 * materialiser, a real runtime subscription whose handler fails until "fixed", the
 * shared Kafka broker and PostgreSQL (own topic and schema).
 *
 * - two browser contexts log in as two users, create a conversation and chat: each
 *   sees the other's messages live, then delivered and read states;
 * - one context goes offline and back: the messages sent meanwhile appear once, in order;
 * - the operations page shows the dead letter of a failing handler; replay after the
 *   fix clears it;
 * - screenshots of both pages are saved under `test-results/web/`.
 */
import { existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { BusinessError, createRuntime, type Runtime } from "@chatbus/consumer-runtime";
import Fastify from "fastify";
import pino from "pino";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { build } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import { webPages } from "../src/web-pages.ts";
import { eventually, type Harness, operatorKey, startHarness } from "./harness.ts";

const webRoot = fileURLToPath(new URL("../web/", import.meta.url));
const artifacts = fileURLToPath(new URL("../../test-results/web/", import.meta.url));
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const expectTimeout = 30_000;

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

/** Server modules the chat page bundles (`web/src/chat/` imports them as values). */
const sharedSources = [fileURLToPath(new URL("../src/delivery.ts", import.meta.url))];

/** Builds the pages unless `web/dist` is newer than every source. */
async function ensureBuilt(): Promise<void> {
  const index = join(webRoot, "dist", "index.html");
  const sources = Math.max(newest(webRoot), ...sharedSources.map(newest));
  if (existsSync(index) && statSync(index).mtimeMs >= sources) return;
  await build({ configFile: join(webRoot, "vite.config.ts"), logLevel: "warn" });
}

let h: Harness;
let runtime: Runtime;
let browser: Browser;
const contexts: BrowserContext[] = [];
const subscription = uniqueName("web_notify");
let fixed = false;
/** Texts of the messages the subscription handled. */
const handled: string[] = [];
/** Console errors other than the network failures the offline test causes on purpose. */
const consoleErrors: string[] = [];

/** `expect.poll` with this file's patience (the default is 1 s). */
function poll<T>(check: () => T | Promise<T>, options: { timeout?: number } = {}) {
  return expect.poll(check, { timeout: options.timeout ?? expectTimeout, interval: 100 });
}

async function newPage(viewport = { width: 1100, height: 760 }): Promise<Page> {
  const context = await browser.newContext({ viewport, locale: "en-GB", timezoneId: "UTC" });
  contexts.push(context);
  const page = await context.newPage();
  page.setDefaultTimeout(expectTimeout);
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    const text = message.text();
    if (/net::ERR_|Failed to load resource/.test(text)) return;
    consoleErrors.push(text);
  });
  page.on("pageerror", (error) => consoleErrors.push(`page error: ${error.message}`));
  return page;
}

async function login(page: Page, user: string): Promise<void> {
  await page.goto(h.url);
  await page.screenshot({ path: join(artifacts, `login-${user}.png`) });
  await page.getByLabel("User name").fill(user);
  await page.getByRole("button", { name: "Log in" }).click();
  await poll(() => page.locator("#connection").getAttribute("data-state")).toBe("live");
}

/** The texts of the messages shown in the open conversation, in order. */
function messageTexts(page: Page): Promise<string[]> {
  return page.locator('[data-testid="message"] .body').allTextContents();
}

/** The delivery state of one's own (materialised) message with `text`. */
function deliveryOf(page: Page, text: string): Promise<string | null> {
  return page
    .locator('[data-testid="message"].mine')
    .filter({ hasText: text })
    .getByTestId("delivery")
    .getAttribute("data-state");
}

/** An attribute of the focused element (evaluated in the page). */
function focused(page: Page, attribute: string): Promise<string | null> {
  return page.evaluate(`document.activeElement?.getAttribute(${JSON.stringify(attribute)}) ?? null`);
}

async function sendText(page: Page, text: string): Promise<void> {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByLabel("Message", { exact: true }).press("Enter");
}

beforeAll(async () => {
  await ensureBuilt();
  mkdirSync(artifacts, { recursive: true });
  h = await startHarness("web", {}, 4);
  runtime = createRuntime({
    group: subscription,
    topic: h.topic,
    brokers: kafkaBrokers(),
    pool: h.schema.pool,
    fromBeginning: true,
    statusIntervalMs: 500,
    replayPollMs: 200,
    sessionTimeoutMs: 6000,
    logger: pino({ level: "silent" }),
  });
  runtime.on("chat.message.sent", async (event) => {
    const text = event.data.content.type === "text" ? event.data.content.text : "";
    if (text.startsWith("poison") && !fixed) throw new BusinessError(`cannot notify about "${text}".`);
    handled.push(text);
  });
  await runtime.start();
  if (!existsSync(chromiumPath)) {
    throw new Error(
      `no chromium at ${chromiumPath}: install it (apt-get install -y chromium) or set CHROMIUM_PATH.`,
    );
  }
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
});

afterAll(async () => {
  for (const context of contexts) await context.close().catch(() => {});
  await browser?.close();
  await runtime?.stop();
  await h?.close();
});

describe("web pages in chromium", () => {
  let ana: Page;
  let ben: Page;
  let ops: Page;

  it("answers 503 with how to build them when the pages are not built", async () => {
    const app = Fastify();
    await app.register(webPages, { root: join(artifacts, "no-such-build") });
    const res = await app.inject({ method: "GET", url: "/ops" });
    await app.close();
    expect(res.statusCode).toBe(503);
    expect(res.body).toContain("npm run -w api build:web");
  });

  it("serves both pages with a strict CSP, and the built assets", async () => {
    for (const path of ["/", "/ops"]) {
      const res = await fetch(`${h.url}${path}`);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toContain("text/html");
      expect(res.headers.get("content-security-policy")).toContain("script-src 'self'");
      const html = await res.text();
      const script = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
      expect(script).toBeDefined();
      const asset = await fetch(`${h.url}${script}`);
      expect(asset.status).toBe(200);
      expect(asset.headers.get("cache-control")).toContain("immutable");
    }
  });

  it("two users chat live and see delivered and read", async () => {
    ana = await newPage();
    ben = await newPage({ width: 390, height: 780 }); // phone-sized
    await Promise.all([login(ana, "ana"), login(ben, "ben")]);
    // The operations page watches from the start, so its chart has the whole run.
    ops = await newPage({ width: 1280, height: 900 });
    await ops.goto(`${h.url}/ops`);
    await ops.screenshot({ path: join(artifacts, "ops-key.png") });
    await ops.getByLabel("Operator key").fill(operatorKey);
    await ops.getByLabel("Your name").fill("oli");
    await ops.getByRole("button", { name: "Open" }).click();
    await ops.locator('tr[data-subscription="materialiser"]').waitFor();

    // Ana starts a direct conversation with Ben; it opens once materialised.
    await ana.getByRole("button", { name: "New", exact: true }).click();
    await ana.getByLabel("Kind").selectOption("direct");
    await ana.getByLabel("With").fill("ben");
    await ana.getByRole("button", { name: "Create" }).click();
    await poll(() => ana.locator("#conversation-title").textContent()).toBe("ben");

    // Ben sees it in his inbox live; he stays on the inbox (phone layout).
    const benItem = ben.locator('[data-conversation="dm:ana:ben"]');
    await benItem.waitFor();

    // Ana's message reaches Ben's stream: delivered (he has not opened it yet).
    await sendText(ana, "hello ben");
    await poll(() => messageTexts(ana)).toEqual(["hello ben"]);
    await poll(() => benItem.locator('[data-testid="unread"]').textContent()).toBe("1");
    await poll(() => deliveryOf(ana, "hello ben")).toBe("delivered");

    // Ben opens it: read.
    await benItem.click();
    await poll(() => messageTexts(ben)).toEqual(["hello ben"]);
    await poll(() => deliveryOf(ana, "hello ben")).toBe("read");
    // Ben's stream delivered it, so Ana sees him online.
    await poll(() =>
      ana.locator('#conversation-members .presence[data-user="ben"]').getAttribute("class"),
    ).toContain("online");

    // Ben answers; Ana sees it live; with Ana looking at it, Ben's turns read.
    await sendText(ben, "hi ana");
    await poll(() => messageTexts(ana)).toEqual(["hello ben", "hi ana"]);
    await poll(() => deliveryOf(ben, "hi ana")).toBe("read");

    // A red packet renders as a card; an edit and a recall show on both sides.
    await ana.getByRole("button", { name: "Send a red packet" }).click();
    await ana.getByLabel("Greeting").fill("Happy new year");
    await ana.getByRole("button", { name: "Send red packet" }).click();
    await ben.locator('[data-testid="red-packet"]').filter({ hasText: "Happy new year" }).waitFor();
    await poll(() => ben.locator('[data-testid="red-packet"]').textContent()).toContain("88 CNY");

    await ana
      .getByTestId("message")
      .filter({ hasText: "hello ben" })
      .getByRole("button", { name: /^Edit/ })
      .click();
    await ana.getByLabel("Message", { exact: true }).last().fill("hello ben (edited)");
    await ana.getByRole("button", { name: "Save" }).click();
    await poll(() => messageTexts(ben)).toContain("hello ben (edited)");
    await ben.locator('[data-testid="edited"]').first().waitFor();

    await sendText(ana, "oops, wrong chat");
    await poll(() => messageTexts(ben)).toContain("oops, wrong chat");
    await ana
      .getByTestId("message")
      .filter({ hasText: "oops, wrong chat" })
      .getByRole("button", { name: /^Recall/ })
      .click();
    await ana.getByRole("dialog").getByRole("button", { name: "Recall" }).click();
    await poll(() => messageTexts(ben)).toContain("This message was recalled.");
    await poll(() => messageTexts(ben)).not.toContain("oops, wrong chat");

    // New messages are added to the live region without re-creating the others.
    await ben
      .getByTestId("message")
      .first()
      .evaluate((element) => element.setAttribute("data-probe", "kept"));
    await sendText(ana, "see you at the station at 6?");
    await poll(() => messageTexts(ben)).toContain("see you at the station at 6?");
    expect(await ben.locator('[data-probe="kept"]').count()).toBe(1);
    await poll(() => deliveryOf(ana, "see you at the station at 6?")).toBe("read");
    await poll(() =>
      ana.locator('[data-conversation="dm:ana:ben"] .conversation-preview').textContent(),
    ).toBe("You: see you at the station at 6?");
    await ana.screenshot({ path: join(artifacts, "chat.png") });
    await ben.screenshot({ path: join(artifacts, "chat-phone.png") });
  });

  it("a user who goes offline and back gets the messages sent meanwhile once, in order", async () => {
    const before = await messageTexts(ben);
    const context = ben.context();
    await context.route("**/v1/me/events**", (route) => route.abort("internetdisconnected"));
    await context.setOffline(true);
    await poll(() => ben.locator("#connection").getAttribute("data-state")).toBe("reconnecting");

    // Ana sees Ben go offline (after the server's grace period).
    const benDot = ana.locator('#conversation-members .presence[data-user="ben"]');
    await poll(() => benDot.getAttribute("class")).toContain("offline");

    const missed = ["offline 1", "offline 2", "offline 3", "offline 4", "offline 5"];
    for (const text of missed) {
      await sendText(ana, text);
      await poll(async () => (await messageTexts(ana)).at(-1)).toBe(text);
    }
    // All five are materialised (Ana's stream has them) while Ben is still offline.
    expect(await messageTexts(ben)).toEqual(before);

    await context.setOffline(false);
    await context.unroute("**/v1/me/events**");
    await poll(() => ben.locator("#connection").getAttribute("data-state"), { timeout: 45_000 }).toBe("live");
    await poll(() => messageTexts(ben), { timeout: 45_000 }).toEqual([...before, ...missed]);

    // Each once, in sequence order, with no gap.
    const seqs = (await ben
      .locator('[data-testid="message"]')
      .evaluateAll((items) => items.map((item) => Number(item.getAttribute("data-seq"))))) as number[];
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(seqs.at(-1)! - seqs[0]! + 1).toBe(seqs.length);
    // Ben is back: Ana sees him online, and his read of the missed messages.
    await poll(() => benDot.getAttribute("class")).toContain("online");
    await poll(() => deliveryOf(ana, "offline 5")).toBe("read");
  });

  it("the operations page shows a failing handler's dead letter; replay after the fix clears it", async () => {
    await sendText(ana, "poison pill for notifications");

    const row = ops.locator(`tr[data-subscription="${subscription}"]`);
    await row.waitFor();
    await ops.getByLabel("Subscription", { exact: true }).selectOption(subscription);
    const deadLetter = ops.locator("tr[data-dead-letter]").first();
    await deadLetter.waitFor({ timeout: 60_000 });
    await poll(() => row.locator("td").nth(6).textContent()).toContain("1");
    await poll(() => deadLetter.textContent()).toContain("business");
    await deadLetter.getByRole("button").click();
    const detail = ops.locator("#detail");
    await poll(() => detail.textContent()).toContain('cannot notify about "poison pill for notifications"');
    await poll(() => detail.getByTestId("event-value").textContent()).toContain(
      "poison pill for notifications",
    );
    // A few polls so the chart has points.
    await poll(() => ops.locator(".rate-chart polyline").count()).toBe(2);
    await ops.screenshot({ path: join(artifacts, "ops.png"), fullPage: true });

    fixed = true;
    await detail.getByRole("button", { name: "Replay" }).click();
    await ops.getByRole("dialog").getByRole("button", { name: "Replay" }).click();
    await poll(() => ops.locator("tr[data-dead-letter]").count(), { timeout: 60_000 }).toBe(0);
    await ops.getByText("No dead letters match these filters.").waitFor();
    await eventually(
      "the replayed event handled",
      () => handled.includes("poison pill for notifications"),
      60_000,
    );
    await ops.getByLabel("Status").selectOption("replayed");
    await poll(() => ops.locator("tr[data-dead-letter]").first().textContent(), {
      timeout: 60_000,
    }).toContain("replayed");
    await ops.screenshot({ path: join(artifacts, "ops-replayed.png"), fullPage: true });
  });

  it("discards with a reason and bulk-replays from the operations page", async () => {
    fixed = false;
    await sendText(ana, "poison spam");
    await sendText(ana, "poison again");
    await ops.getByLabel("Status").selectOption("waiting");
    await poll(() => ops.locator("tr[data-dead-letter]").count(), { timeout: 60_000 }).toBe(2);

    const spam = ops.locator("tr[data-dead-letter]").filter({ hasText: "poison spam" });
    await spam.getByRole("button").click();
    await ops.locator("#detail").getByRole("button", { name: "Discard" }).click();
    const dialog = ops.getByRole("dialog");
    await dialog.getByLabel("Reason").fill("spam, not worth a notification");
    await dialog.getByRole("button", { name: "Discard" }).click();
    await poll(() => ops.locator("tr[data-dead-letter]").count()).toBe(1);

    fixed = true;
    await ops.getByRole("button", { name: /^Replay all 1 waiting/ }).click();
    await ops.getByRole("dialog").getByRole("button", { name: "Replay all" }).click();
    await poll(() => ops.locator("tr[data-dead-letter]").count(), { timeout: 60_000 }).toBe(0);
    await eventually("the bulk replay handled", () => handled.includes("poison again"), 60_000);
    expect(handled).not.toContain("poison spam");

    await ops.getByLabel("Status").selectOption("discarded");
    const discarded = ops.locator("tr[data-dead-letter]").first();
    await poll(() => discarded.textContent()).toContain("discarded");
    await discarded.getByRole("button").click();
    await poll(() => ops.locator("#detail").textContent()).toContain(
      "operator:oli (spam, not worth a notification)",
    );
  });

  it("a group: created from the dialog, history scrolls back in pages, people added", async () => {
    await ana.getByRole("button", { name: "New", exact: true }).click();
    await ana.getByLabel("Kind").selectOption("group");
    await ana.getByLabel("With").fill("ben");
    await ana.getByLabel("Title").fill("Weekend plans");
    await ana.getByRole("button", { name: "Create" }).click();
    await poll(() => ana.locator("#conversation-title").textContent()).toBe("Weekend plans");
    const groupId = await ana
      .locator('.conversation-item[aria-current="true"]')
      .getAttribute("data-conversation");
    expect(groupId).toMatch(/^g-/);

    // 45 messages while Ana looks at another conversation: opening shows the newest 30.
    await ana.locator('[data-conversation="dm:ana:ben"]').click();
    const token = await h.login("ben");
    const texts = Array.from({ length: 45 }, (_, i) => `plan ${i + 1}`);
    for (const text of texts) {
      const res = await h.app.inject({
        method: "POST",
        url: `/v1/conversations/${groupId}/messages`,
        headers: { authorization: `Bearer ${token}` },
        payload: { content: { type: "text", text } },
      });
      expect(res.statusCode).toBe(202);
    }
    const group = ana.locator(`[data-conversation="${groupId}"]`);
    await poll(() => group.getByTestId("unread").textContent()).toBe("45");
    await group.click();
    await poll(() => messageTexts(ana)).toEqual(texts.slice(15));
    await ana.locator("#messages").evaluate((element) => {
      element.scrollTop = 0;
    });
    await poll(() => messageTexts(ana)).toEqual(texts);
    await poll(() => ana.locator("#load-older").isHidden()).toBe(true);

    await ana.getByRole("button", { name: "Add people" }).click();
    await ana.getByLabel("User names").fill("cy");
    await ana.getByRole("button", { name: "Add", exact: true }).click();
    await ana.locator('#conversation-members .member:has-text("cy")').waitFor();
  });

  it("works from the keyboard: log in, open a dialog, cancel it with Escape", async () => {
    const page = await newPage({ width: 800, height: 600 });
    await page.goto(h.url);
    await page.keyboard.type("cy"); // the user name field has focus
    await page.keyboard.press("Enter");
    await poll(() => page.locator("#connection").getAttribute("data-state")).toBe("live");
    // Cy was added to the group: it is in the inbox, reachable with Tab.
    const newButton = page.getByRole("button", { name: "New", exact: true });
    await newButton.focus();
    await page.keyboard.press("Enter");
    await page.getByRole("dialog").waitFor();
    await poll(() => focused(page, "name")).toBe("kind");
    await page.keyboard.press("Escape");
    await poll(() => page.getByRole("dialog").count()).toBe(0);
    await poll(() => focused(page, "id")).toBe("new-conversation");
    await page.keyboard.press("Tab");
    await poll(() => focused(page, "data-conversation")).toMatch(/^g-/);
    await page.keyboard.press("Enter");
    await poll(() => page.locator("#conversation-title").textContent()).toBe("Weekend plans");
    await poll(() => focused(page, "id")).toBe("composer-input");
  });

  it("logs no page errors and no CSP violations", () => {
    expect(consoleErrors).toEqual([]);
  });
});
