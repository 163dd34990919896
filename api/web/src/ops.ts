/**
 * The operations page (`/ops`): each subscription's state (breaker, lag, rates,
 * instances), a chart of consumption and failures over the last minutes, and dead
 * letters with filters, the error and the event side by side, replay and discard
 * with confirmation, and bulk replay; events in flight and the records a subscription
 * is stuck on, with a Skip button (ops-in-flight.ts). Polls the operator API every 2 s. The operator
 * key is entered here and kept in sessionStorage (gone when the tab closes).
 */
import "./base.css";
import "./ops.css";
import { confirmDialog, formDialog } from "./dialogs.ts";
import { byId, h, replaceChildren, shortTime } from "./element.ts";
import { ApiRequestError, apiRequest } from "./http.ts";
import {
  createInFlightCard,
  type InFlightSubscription,
  renderInFlight,
  type SkipRequest,
  type StuckRecord,
} from "./ops-in-flight.ts";
import { agoText, drawRateChart } from "./rate-chart.ts";

interface PartitionStatus {
  partition: number;
  committedOffset: string;
  highWatermark: string;
  lag: number;
  paused: boolean;
}

interface Subscription extends InFlightSubscription {
  subscription: string;
  state: "running" | "paused" | "stopped";
  breaker: "closed" | "halfOpen" | "open";
  group: string | null;
  topic: string | null;
  lag: number;
  partitions: PartitionStatus[];
  processed: number;
  failed: number;
  deadLettered: number;
  inFlight: number;
  deadLettersWaiting: number;
  instances: { instanceId: string; live: boolean; lastSeenAt: string; startedAt: string; breaker: string }[];
}

interface DeadLetter {
  id: string;
  subscription: string;
  status: "waiting" | "replaying" | "replayed" | "discarded";
  failureClass: string;
  errorCode: string | null;
  errorMessage: string;
  attempts: number;
  eventId: string | null;
  eventType: string | null;
  conversationId: string | null;
  topic: string;
  partition: number;
  offset: string;
  key: string | null;
  headers: unknown;
  value: string | null;
  valueEncoding: "utf8" | "base64" | null;
  firstFailedAt: string;
  lastFailedAt: string;
  statusChangedAt: string | null;
  statusChangedBy: string | null;
  statusReason: string | null;
  replayCount: number;
  lastReplayError: string | null;
  errorStack: string | null;
}

interface Sample {
  at: number;
  processed: Record<string, number>;
  failed: Record<string, number>;
}

const keyStorage = "chatbus.operatorKey";
const nameStorage = "chatbus.operatorName";
const pollMs = 2000;
const chartWindowMs = 5 * 60_000;

const state = {
  key: sessionStorage.getItem(keyStorage),
  name: sessionStorage.getItem(nameStorage) ?? "",
  subscriptions: [] as Subscription[],
  samples: [] as Sample[],
  deadLetters: [] as DeadLetter[],
  nextCursor: null as string | null,
  /** Pages beyond the first are loaded: polling then refreshes all of them. */
  pages: 1,
  selectedId: null as string | null,
  timer: undefined as number | undefined,
  /** Skip requests made from this page, refreshed until applied. */
  skips: [] as SkipRequest[],
};

const keyView = byId("key-view");
const keyForm = byId<HTMLFormElement>("key-form");
const keyError = byId("key-error");
const opsView = byId("ops-view");
const updated = byId("updated");
const subscriptionRows = byId("subscription-rows");
const chart = byId("chart");
const filterSubscription = byId<HTMLSelectElement>("filter-subscription");
const filterStatus = byId<HTMLSelectElement>("filter-status");
const deadLetterRows = byId("dead-letter-rows");
const deadLettersEmpty = byId("dead-letters-empty");
const loadMore = byId<HTMLButtonElement>("load-more");
const detail = byId("detail");
const replayAll = byId<HTMLButtonElement>("replay-all");
const pageError = byId("page-error");
const inFlightBody = createInFlightCard(byId("subscriptions-title").closest("section") as Element);

function call<T>(path: string, options: Parameters<typeof apiRequest>[1] = {}): Promise<T> {
  const headers: Record<string, string> = state.name ? { "x-chatbus-operator": state.name } : {};
  return apiRequest<T>(path, { ...options, token: state.key, headers }).catch((error: unknown) => {
    if (error instanceof ApiRequestError && (error.status === 401 || error.status === 403)) {
      forgetKey("The operator key was refused; enter it again.");
    }
    throw error;
  });
}

// ---- key --------------------------------------------------------------------

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(keyForm);
  const key = String(form.get("key") ?? "").trim();
  const name = String(form.get("name") ?? "").trim();
  keyError.textContent = "";
  apiRequest("/v1/subscriptions", { token: key }).then(
    () => {
      state.key = key;
      state.name = name;
      sessionStorage.setItem(keyStorage, key);
      sessionStorage.setItem(nameStorage, name);
      show();
    },
    (error: ApiRequestError) => {
      keyError.textContent =
        error.status === 401 || error.status === 403
          ? "That is not the operator key (CHATBUS_OPERATOR_KEY)."
          : error.message;
    },
  );
});

byId("forget-key").addEventListener("click", () => forgetKey());

function forgetKey(message?: string): void {
  window.clearTimeout(state.timer);
  state.key = null;
  sessionStorage.removeItem(keyStorage);
  opsView.hidden = true;
  keyView.hidden = false;
  keyError.textContent = message ?? "";
  byId<HTMLInputElement>("operator-key").focus();
}

function show(): void {
  keyView.hidden = true;
  opsView.hidden = false;
  byId("operator").textContent = state.name || "operator";
  void poll();
}

// ---- polling ----------------------------------------------------------------

async function poll(): Promise<void> {
  window.clearTimeout(state.timer);
  if (!state.key) return;
  try {
    await Promise.all([refreshSubscriptions(), refreshDeadLetters()]);
    pageError.textContent = "";
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    updated.dataset.state = "ok";
  } catch (error) {
    pageError.textContent = (error as Error).message;
    updated.dataset.state = "stale";
  }
  if (state.key) state.timer = window.setTimeout(() => void poll(), pollMs);
}

async function refreshSubscriptions(): Promise<void> {
  const { subscriptions } = await call<{ subscriptions: Subscription[] }>("/v1/subscriptions");
  subscriptions.sort((a, b) => a.subscription.localeCompare(b.subscription));
  state.subscriptions = subscriptions;
  const now = Date.now();
  // A poll right after an action would make a rate over a few milliseconds: keep the cadence.
  if (now - (state.samples.at(-1)?.at ?? 0) < pollMs / 2) state.samples.pop();
  state.samples.push({
    at: now,
    processed: Object.fromEntries(subscriptions.map((s) => [s.subscription, s.processed])),
    failed: Object.fromEntries(subscriptions.map((s) => [s.subscription, s.failed])),
  });
  state.samples = state.samples.filter((s) => s.at >= now - chartWindowMs - pollMs);
  renderSubscriptions();
  renderFilterOptions();
  renderChart();
  await refreshSkips();
  renderInFlight(inFlightBody, state.subscriptions, state.skips, skipRecord);
}

/** Re-reads the skip requests made here until each is applied (then it shows its dead letter). */
async function refreshSkips(): Promise<void> {
  state.skips = await Promise.all(
    state.skips.map((k) =>
      k.appliedAt ? k : call<SkipRequest>(`/v1/subscriptions/skips/${encodeURIComponent(k.id)}`),
    ),
  );
}

function skipRecord(subscription: string, record: StuckRecord): Promise<boolean> {
  return confirmDialog({
    title: `Skip offset ${record.offset} of partition ${record.partition}?`,
    message: `${subscription} stops retrying this ${record.eventType ?? "record"} (conversation ${record.conversationId ?? "unknown"}): it becomes a dead letter of class "operator", recorded with your name, and the partition moves on. You can replay it later from the dead letters.`,
    confirmLabel: "Skip",
    danger: true,
    action: async () => {
      const skip = await call<SkipRequest>(`/v1/subscriptions/${encodeURIComponent(subscription)}/skip`, {
        method: "POST",
        body: { partition: record.partition, offset: record.offset },
      });
      state.skips = [skip, ...state.skips.filter((k) => k.id !== skip.id)].slice(0, 10);
      await poll();
    },
  });
}

/** Per-second rate of a counter between the last two samples (0 after a restart resets it). */
function rate(subscription: string, counter: "processed" | "failed", from?: Sample, to?: Sample): number {
  const samples = state.samples;
  const b = to ?? samples[samples.length - 1];
  const a = from ?? samples[samples.length - 2];
  if (!a || !b || b.at === a.at) return 0;
  const delta = (b[counter][subscription] ?? 0) - (a[counter][subscription] ?? 0);
  return Math.max(0, delta) / ((b.at - a.at) / 1000);
}

const breakerText = { closed: "closed", halfOpen: "half-open", open: "open" };

function renderSubscriptions(): void {
  if (state.subscriptions.length === 0) {
    replaceChildren(
      subscriptionRows,
      h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No subscription has reported yet.")),
    );
    return;
  }
  replaceChildren(
    subscriptionRows,
    ...state.subscriptions.map((s) => {
      const live = s.instances.filter((i) => i.live).length;
      const lastSeen = s.instances
        .map((i) => i.lastSeenAt)
        .sort()
        .at(-1);
      return h(
        "tr",
        { "data-subscription": s.subscription },
        h("th", { scope: "row" }, s.subscription, h("small", {}, s.group ? ` group ${s.group}` : "")),
        h("td", {}, h("span", { class: `badge state-${s.state}` }, s.state)),
        h(
          "td",
          {},
          h(
            "span",
            { class: `badge breaker-${s.breaker}`, "data-testid": "breaker" },
            breakerText[s.breaker],
          ),
        ),
        h(
          "td",
          {
            class: "num",
            title: s.partitions
              .map((p) => `p${p.partition}: ${p.lag}${p.paused ? " (paused)" : ""}`)
              .join("\n"),
          },
          s.lag.toLocaleString(),
          h("small", {}, ` · ${s.partitions.length} partitions`),
        ),
        h("td", { class: "num" }, rate(s.subscription, "processed").toFixed(1)),
        h("td", { class: "num" }, rate(s.subscription, "failed").toFixed(1)),
        h("td", { class: "num" }, `${s.processed.toLocaleString()} / ${s.failed.toLocaleString()}`),
        h(
          "td",
          { class: "num" },
          s.deadLettersWaiting > 0
            ? h(
                "button",
                {
                  type: "button",
                  class: "link",
                  onclick: () => {
                    filterSubscription.value = s.subscription;
                    filterStatus.value = "waiting";
                    void reloadDeadLetters();
                  },
                },
                String(s.deadLettersWaiting),
                h(
                  "span",
                  { class: "visually-hidden" },
                  ` waiting dead letters of ${s.subscription}: show them`,
                ),
              )
            : "0",
        ),
        h(
          "td",
          {
            title: s.instances
              .map((i) => `${i.instanceId} ${i.live ? "live" : "gone"}, last seen ${i.lastSeenAt}`)
              .join("\n"),
          },
          `${live} live / ${s.instances.length}`,
          lastSeen ? h("small", {}, ` · seen ${shortTime(lastSeen)}`) : null,
        ),
      );
    }),
  );
}

function renderFilterOptions(): void {
  const names = new Set(state.subscriptions.map((s) => s.subscription));
  for (const d of state.deadLetters) names.add(d.subscription);
  const current = filterSubscription.value;
  const wanted = ["", ...[...names].sort()];
  const have = [...filterSubscription.options].map((o) => o.value);
  if (wanted.join("\n") === have.join("\n")) return;
  replaceChildren(
    filterSubscription,
    ...wanted.map((name) =>
      h("option", { value: name, selected: name === current }, name || "All subscriptions"),
    ),
  );
}

function renderChart(): void {
  const samples = state.samples;
  const names = state.subscriptions.map((s) => s.subscription);
  const consumed: [number, number][] = [];
  const failed: [number, number][] = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1]!;
    const b = samples[i]!;
    consumed.push([b.at, names.reduce((n, s) => n + rate(s, "processed", a, b), 0)]);
    failed.push([b.at, names.reduce((n, s) => n + rate(s, "failed", a, b), 0)]);
  }
  const last = (points: [number, number][]) => (points.at(-1)?.[1] ?? 0).toFixed(1);
  // The last 5 minutes, or less while the page has not been open that long.
  const now = Date.now();
  const windowMs = Math.min(chartWindowMs, Math.max(30_000, now - (samples[0]?.at ?? now)));
  const label = agoText(windowMs);
  byId("chart-title").textContent = `Consumption and failures, last ${label}`;
  drawRateChart(
    chart,
    [
      { name: "consumed", color: "#0b5cad", points: consumed },
      { name: "failed", color: "#b42318", points: failed },
    ],
    {
      now,
      windowMs,
      unit: "events/s",
      summary: `Events consumed per second across all subscriptions over the last ${label}: now ${last(consumed)}; failed: now ${last(failed)}.`,
    },
  );
  byId("rate-now").textContent = `now ${last(consumed)} consumed/s, ${last(failed)} failed/s`;
}

// ---- dead letters -------------------------------------------------------------

function query(cursor?: string | null, limit = 50): string {
  const params = new URLSearchParams({ limit: String(limit) });
  if (filterSubscription.value) params.set("subscription", filterSubscription.value);
  if (filterStatus.value) params.set("status", filterStatus.value);
  if (cursor) params.set("cursor", cursor);
  return `/v1/dead-letters?${params}`;
}

async function refreshDeadLetters(): Promise<void> {
  const page = await call<{ items: DeadLetter[]; nextCursor: string | null }>(query(null, 50 * state.pages));
  state.deadLetters = page.items;
  state.nextCursor = page.nextCursor;
  renderDeadLetters();
}

async function reloadDeadLetters(): Promise<void> {
  state.pages = 1;
  state.selectedId = null;
  await refreshDeadLetters().catch((error: Error) => {
    pageError.textContent = error.message;
  });
}

filterSubscription.addEventListener("change", () => void reloadDeadLetters());
filterStatus.addEventListener("change", () => void reloadDeadLetters());

loadMore.addEventListener("click", () => {
  if (!state.nextCursor) return;
  void call<{ items: DeadLetter[]; nextCursor: string | null }>(query(state.nextCursor)).then((page) => {
    state.pages++;
    state.deadLetters.push(...page.items);
    state.nextCursor = page.nextCursor;
    renderDeadLetters();
  });
});

function renderDeadLetters(): void {
  deadLettersEmpty.hidden = state.deadLetters.length > 0;
  loadMore.hidden = state.nextCursor === null;
  const bulk = filterSubscription.value;
  const waiting = state.subscriptions.find((s) => s.subscription === bulk)?.deadLettersWaiting ?? 0;
  replayAll.disabled = !bulk || waiting === 0;
  replayAll.textContent = bulk
    ? `Replay all ${waiting} waiting of ${bulk}`
    : "Replay all (choose a subscription)";
  replaceChildren(
    deadLetterRows,
    ...state.deadLetters.map((d) =>
      h(
        "tr",
        { "data-dead-letter": d.id, "aria-selected": d.id === state.selectedId ? "true" : undefined },
        h(
          "td",
          {},
          h(
            "button",
            { type: "button", class: "link", onclick: () => select(d.id) },
            `#${d.id}`,
            h("span", { class: "visually-hidden" }, ": show error and event"),
          ),
        ),
        h("td", {}, d.subscription),
        h("td", {}, d.eventType ?? "(undecodable)"),
        h("td", {}, h("span", { class: `badge class-${d.failureClass}` }, d.failureClass)),
        h(
          "td",
          { class: "error-cell", title: d.errorMessage },
          d.errorCode ? `${d.errorCode}: ` : "",
          d.errorMessage,
        ),
        h("td", { class: "num" }, String(d.attempts)),
        h("td", {}, h("time", { datetime: d.lastFailedAt }, shortTime(d.lastFailedAt))),
        h(
          "td",
          {},
          h("span", { class: `badge status-${d.status}`, "data-testid": "dead-letter-status" }, d.status),
        ),
      ),
    ),
  );
  renderDetail();
}

function select(id: string): void {
  state.selectedId = id;
  detailShown = "";
  renderDeadLetters();
  detail.querySelector<HTMLElement>("h3")?.focus();
}

function prettyValue(d: DeadLetter): string {
  if (d.value === null) return "(no value)";
  if (d.valueEncoding === "base64") return `base64: ${d.value}`;
  try {
    return JSON.stringify(JSON.parse(d.value), null, 2);
  } catch {
    return d.value;
  }
}

function facts(rows: [string, string | number | null][]): HTMLElement {
  return h(
    "dl",
    { class: "facts" },
    ...rows.flatMap(([term, value]) => [
      h("dt", {}, term),
      h("dd", {}, value === null ? "—" : String(value)),
    ]),
  );
}

/** What the detail shows now: it is redrawn only when that changes (keeps focus and open sections). */
let detailShown = "";

function renderDetail(): void {
  const d = state.deadLetters.find((x) => x.id === state.selectedId);
  detail.hidden = !d;
  const shown = d ? JSON.stringify(d) : "";
  if (!d || shown === detailShown) return;
  detailShown = shown;
  const waiting = d.status === "waiting";
  replaceChildren(
    detail,
    h(
      "div",
      { class: "detail-header" },
      h("h3", { tabindex: -1 }, `Dead letter #${d.id} · ${d.subscription}`),
      h("span", { class: `badge status-${d.status}` }, d.status),
      h(
        "button",
        { type: "button", class: "primary", disabled: !waiting, onclick: () => void replayOne(d) },
        "Replay",
      ),
      h(
        "button",
        { type: "button", class: "danger", disabled: !waiting, onclick: () => void discardOne(d) },
        "Discard",
      ),
      h("button", { type: "button", class: "secondary", onclick: () => select("") }, "Close"),
    ),
    h(
      "div",
      { class: "side-by-side" },
      h(
        "section",
        { class: "panel", "aria-label": "Error" },
        h("h4", {}, "Error"),
        facts([
          ["Class", d.failureClass],
          ["Code", d.errorCode],
          ["Attempts", d.attempts],
          ["First failed", new Date(d.firstFailedAt).toLocaleString()],
          ["Last failed", new Date(d.lastFailedAt).toLocaleString()],
          ["Replays", d.replayCount],
          [
            "Status by",
            d.statusChangedBy ? `${d.statusChangedBy}${d.statusReason ? ` (${d.statusReason})` : ""}` : null,
          ],
        ]),
        h("p", { class: "error-message" }, d.errorMessage),
        d.lastReplayError ? h("p", { class: "error-message" }, `Last replay: ${d.lastReplayError}`) : null,
        d.errorStack ? h("details", {}, h("summary", {}, "Stack"), h("pre", {}, d.errorStack)) : null,
      ),
      h(
        "section",
        { class: "panel", "aria-label": "Event" },
        h("h4", {}, "Event"),
        facts([
          ["Type", d.eventType],
          ["Event id", d.eventId],
          ["Conversation", d.conversationId],
          ["Record", `${d.topic} / ${d.partition} @ ${d.offset}`],
          ["Key", d.key],
        ]),
        h("pre", { class: "event-value", "data-testid": "event-value" }, prettyValue(d)),
        h("details", {}, h("summary", {}, "Headers"), h("pre", {}, JSON.stringify(d.headers, null, 2))),
      ),
    ),
  );
}

function replayOne(d: DeadLetter): Promise<boolean> {
  return confirmDialog({
    title: `Replay dead letter #${d.id}?`,
    message: `The event is delivered again to ${d.subscription} only. Replay after the handler is fixed.`,
    confirmLabel: "Replay",
    action: async () => {
      await call(`/v1/dead-letters/${d.id}/replay`, { method: "POST" });
      await poll();
    },
  });
}

function discardOne(d: DeadLetter): Promise<boolean> {
  return formDialog({
    title: `Discard dead letter #${d.id}?`,
    description: `${d.subscription} will never handle this event. The dead letter is kept, marked discarded, with your name and reason.`,
    fields: [
      {
        name: "reason",
        label: "Reason",
        required: true,
        maxLength: 1000,
        placeholder: "Duplicate of a fixed event",
      },
    ],
    submitLabel: "Discard",
    danger: true,
    submit: async (values) => {
      await call(`/v1/dead-letters/${d.id}/discard`, { method: "POST", body: { reason: values.reason } });
      await poll();
    },
  });
}

replayAll.addEventListener("click", () => {
  const subscription = filterSubscription.value;
  if (!subscription) return;
  const waiting = state.subscriptions.find((s) => s.subscription === subscription)?.deadLettersWaiting ?? 0;
  void confirmDialog({
    title: `Replay all waiting dead letters of ${subscription}?`,
    message: `${waiting} dead letter${waiting === 1 ? "" : "s"} will be delivered again to ${subscription}.`,
    confirmLabel: "Replay all",
    action: async () => {
      const { count } = await call<{ count: number }>("/v1/dead-letters/replay", {
        method: "POST",
        body: { subscription },
      });
      pageError.textContent = "";
      updated.textContent = `Replaying ${count} dead letter${count === 1 ? "" : "s"}…`;
      await poll();
    },
  });
});

// ---- boot -------------------------------------------------------------------

if (state.key) show();
else byId<HTMLInputElement>("operator-key").focus();
