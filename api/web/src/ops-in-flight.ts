/**
 * The operations page's "In flight and stuck" card: per subscription the events in
 * flight and the oldest one's age, the records it has retried for a system failure
 * past its threshold (partition, offset, event type, conversation, error, attempts,
 * since when) each with a Skip button, and the skip requests not applied yet. The
 * card is built here (not in ops.html) so that it stays one module with its data.
 */
import { h, replaceChildren, shortTime } from "./element.ts";

/** A stuck record as `GET /v1/subscriptions` lists it. */
export interface StuckRecord {
  partition: number;
  offset: string;
  eventType: string | null;
  conversationId: string | null;
  error: string;
  attempts: number;
  since: string;
  instanceId: string;
}

/** A skip request as the API returns it. */
export interface SkipRequest {
  id: string;
  subscription: string;
  partition: number;
  offset: string;
  status: "pending" | "applied";
  requestedBy: string;
  requestedAt: string;
  appliedAt: string | null;
  appliedBy: string | null;
  deadLetterId: string | null;
}

/** What the card needs of a subscription. */
export interface InFlightSubscription {
  subscription: string;
  inFlight: number;
  oldestInFlightMs?: number | null;
  stuck?: StuckRecord[];
  skipsPending?: SkipRequest[];
}

/** `95000` → `1m 35s`; null → `–`. */
export function ageText(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return "–";
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** Creates the card after `after` and returns its body element. */
export function createInFlightCard(after: Element): HTMLElement {
  const body = h("div", { id: "in-flight-body" });
  const card = h(
    "section",
    { class: "card", id: "in-flight", "aria-labelledby": "in-flight-title" },
    h("h2", { id: "in-flight-title" }, "In flight and stuck"),
    body,
  );
  after.after(card);
  return body;
}

function stuckTable(
  subscriptions: InFlightSubscription[],
  onSkip: (subscription: string, record: StuckRecord) => void,
): HTMLElement | null {
  const rows = subscriptions.flatMap((s) =>
    (s.stuck ?? []).map((r) => ({ ...r, subscription: s.subscription })),
  );
  if (rows.length === 0) return null;
  return h(
    "div",
    { class: "table-scroll" },
    h(
      "table",
      { "aria-label": "Stuck records" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ...[
            "Subscription",
            "Partition",
            "Offset",
            "Event type",
            "Conversation",
            "Error",
            "Attempts",
            "Since",
            "",
          ].map((label) => h("th", { scope: "col" }, label)),
        ),
      ),
      h(
        "tbody",
        {},
        ...rows.map((r) =>
          h(
            "tr",
            { "data-stuck": `${r.subscription}:${r.partition}:${r.offset}` },
            h("th", { scope: "row" }, r.subscription),
            h("td", { class: "num" }, String(r.partition)),
            h("td", { class: "num" }, r.offset),
            h("td", {}, r.eventType ?? "–"),
            h("td", {}, r.conversationId ?? "–"),
            h("td", { class: "error-text" }, r.error),
            h("td", { class: "num" }, String(r.attempts)),
            h("td", { title: r.since }, shortTime(r.since)),
            h(
              "td",
              {},
              h(
                "button",
                { type: "button", class: "danger", onclick: () => onSkip(r.subscription, r) },
                "Skip",
                h("span", { class: "visually-hidden" }, ` offset ${r.offset} of partition ${r.partition}`),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

function skipList(skips: SkipRequest[]): HTMLElement | null {
  if (skips.length === 0) return null;
  return h(
    "ul",
    { class: "skip-requests", "aria-label": "Skip requests" },
    ...skips.map((k) =>
      h(
        "li",
        { "data-skip": k.id, "data-status": k.status },
        `Skip #${k.id}: ${k.subscription} partition ${k.partition} offset ${k.offset}, requested by ${k.requestedBy} at ${shortTime(k.requestedAt)} — `,
        k.appliedAt
          ? `applied ${shortTime(k.appliedAt)} by ${k.appliedBy ?? "?"}${k.deadLetterId ? `, dead letter #${k.deadLetterId}` : ""}`
          : "waiting for the instance that owns the partition",
      ),
    ),
  );
}

/**
 * Renders the card: a line per subscription with work in flight, the stuck records
 * with Skip buttons, and the skip requests (pending ones from the API plus those
 * this page made, with their outcome).
 */
export function renderInFlight(
  body: HTMLElement,
  subscriptions: InFlightSubscription[],
  recentSkips: SkipRequest[],
  onSkip: (subscription: string, record: StuckRecord) => void,
): void {
  const busy = subscriptions.filter((s) => s.inFlight > 0 || (s.stuck ?? []).length > 0);
  const pending = subscriptions.flatMap((s) => s.skipsPending ?? []);
  const skips = [...recentSkips, ...pending.filter((p) => !recentSkips.some((r) => r.id === p.id))];
  replaceChildren(
    body,
    busy.length === 0
      ? h("p", { class: "empty" }, "Nothing in flight.")
      : h(
          "ul",
          { class: "in-flight-list" },
          ...busy.map((s) =>
            h(
              "li",
              { "data-in-flight": s.subscription },
              h("strong", {}, s.subscription),
              `: ${s.inFlight} in flight, oldest ${ageText(s.oldestInFlightMs)}`,
              (s.stuck ?? []).length > 0 ? `, ${(s.stuck ?? []).length} stuck` : "",
            ),
          ),
        ),
    stuckTable(subscriptions, onSkip),
    skipList(skips),
  );
}
