// The dashboard's cards: each fetches its resource and renders it (text nodes only), or shows why it cannot.

import { api, download } from "./api.js";
import { gauge, modelClass, shareBar, stackedBars } from "./charts.js";
import { $, daysOf, fmt, h, replace } from "./dom.js";

const body = (cardId) => $(cardId).querySelector("[data-body]");
const acct = (id) => `/accounts/${encodeURIComponent(id)}`;

export function loading(cardId) {
  $(cardId).classList.remove("unavailable");
  replace(body(cardId), h("div", { class: "state state-loading" }, "Loading…"));
}

export function unavailable(cardId, role) {
  $(cardId).classList.add("unavailable");
  const who = role === "api_key" ? "an API key" : `the ${role} role`;
  replace(body(cardId), h("div", { class: "state state-unavailable", "data-state": "unavailable" },
    `Not available for ${who}.`));
}

/** Shows `error` in the card (403: not available for the role). 401 is handled by the session. */
export function failed(cardId, error, role) {
  if (error.status === 403) return unavailable(cardId, role);
  replace(body(cardId), h("div", { class: "alert alert-error", role: "alert", "data-state": "error" },
    error.message, error.code && error.status ? h("code", { class: "code" }, error.code) : null));
}

const stat = (label, value, note, wide = false) => h("div", { class: wide ? "stat stat-wide" : "stat" },
  h("dt", {}, label), h("dd", {}, value, note ? h("small", {}, note) : null));

// -- quota ---------------------------------------------------------------------------------------------------
export async function loadCurrent(accountId) {
  return api.get(`${acct(accountId)}/usage/current`);
}

export function renderQuota(usage, live) {
  const unlimited = usage.limit === null;
  const stats = h("dl", { class: "stats" },
    stat("Used", fmt.int(usage.used), " calls"),
    stat("Limit", unlimited ? "Unlimited" : fmt.int(usage.limit), unlimited ? null : " calls"),
    unlimited ? null : stat("Remaining", fmt.int(usage.remaining), " calls"),
    stat("In flight", fmt.int(usage.reserved), " calls"),
    usage.overage_calls > 0 || usage.overage_enabled
      ? stat("Overage", fmt.int(usage.overage_calls), ` calls · ${fmt.money(usage.overage_minor, usage.currency)}`)
      : null,
    stat("Resets", fmt.dateTime(usage.resets_at), null, true));
  replace(body("quota-card"),
    h("div", { class: "quota", "data-used": usage.used, "data-percent": usage.percent ?? "" },
      h("div", { class: "gauge-wrap" }, gauge(usage.percent, { unlimited })), stats),
    h("p", { class: "footnote" }, `${fmt.month(usage.period)} · plan ${usage.plan} · tokens `,
      `${fmt.int(usage.prompt_tokens)} in / ${fmt.int(usage.completion_tokens)} out`));
  const badge = $("live-badge");
  badge.hidden = false;
  badge.className = live ? "pill pill-live" : "pill";
  badge.replaceChildren(...(live ? [h("span", { class: "dot" }), `Live · ${fmt.clock(new Date())}`]
    : [`Updated on load · ${fmt.clock(new Date())}`]));
}

export function quotaStale(error) {
  const badge = $("live-badge");
  badge.hidden = false;
  badge.className = "pill pill-stale";
  badge.textContent = `Not refreshed: ${error.message}`;
}

// -- forecast ------------------------------------------------------------------------------------------------
export async function loadForecast(accountId, current) {
  const f = await api.get(`${acct(accountId)}/usage/forecast`);
  if (!current()) return;
  const kpi = (label, value, note) => h("div", { class: "kpi" }, h("span", { class: "kpi-label" }, label),
    h("span", { class: "kpi-value" }, value), note ? h("span", { class: "kpi-note" }, note) : null);
  const money = (minor) => fmt.money(minor, f.currency);
  const lines = h("table", { class: "table lines" },
    h("tbody", {}, ...f.lines.map((line) => h("tr", {},
      h("td", {}, line.description), h("td", { class: "num" }, money(line.amount_minor)))),
    h("tr", { class: "sub" }, h("td", {}, `Tax${f.tax.reverse_charge ? " (reverse charge)" : ` ${f.tax.rate}%`}`),
      h("td", { class: "num" }, money(f.tax.amount_minor))),
    h("tr", { class: "total" }, h("td", {}, "Expected total"), h("td", { class: "num" }, money(f.total_minor)))));
  replace(body("forecast-card"),
    h("div", { class: "kpis", "data-projected": f.projected_calls },
      kpi("Projected calls", fmt.int(f.projected_calls),
        f.allowance === null ? "unlimited plan" : `of ${fmt.int(f.allowance)} included`),
      kpi("Run rate", fmt.int(Math.round(Number(f.daily_run_rate))), "calls per day"),
      kpi("Expected invoice", money(f.total_minor), `${fmt.month(f.period)}`)),
    f.projected_overage_calls > 0
      ? h("p", { class: "alert alert-warn" }, `About ${fmt.int(f.projected_overage_calls)} calls past the allowance.`)
      : null,
    lines,
    h("p", { class: "footnote" }, `${fmt.int(f.calls_so_far)} calls in the first `,
      Number(f.elapsed_days) < 1 ? "day" : `${f.elapsed_days} days`,
      ` of ${f.days_in_period}, as of ${fmt.dateTime(f.now)}.`));
}

// -- usage ---------------------------------------------------------------------------------------------------
export async function loadUsage(accountId, period, current) {
  const query = new URLSearchParams({ group_by: "day,model" });
  if (period) query.set("period", period);
  const usage = await api.get(`${acct(accountId)}/usage?${query}`);
  if (!current()) return null;
  const models = [...new Set(usage.data.map((line) => line.model))].sort();
  const cost = (text) => fmt.decimalMoney(text, usage.list_cost_currency);
  if (usage.data.length === 0) {
    replace(body("usage-card"), h("div", { class: "state state-empty" }, `No usage in ${fmt.month(usage.period)}.`));
    return usage;
  }
  const days = daysOf(usage.period);
  const tokens = (line) => line.prompt_tokens + line.completion_tokens;
  const perModel = models.map((model) => {
    const mine = usage.data.filter((line) => line.model === model);
    const sum = (key) => mine.reduce((total, line) => total + line[key], 0);
    const nanos = sum("list_cost_nanos");
    return { model, calls: sum("calls"), pt: sum("prompt_tokens"), ct: sum("completion_tokens"),
             cost: (nanos / 1e9).toFixed(9) };
  });
  const t = usage.totals;
  replace(body("usage-card"),
    h("div", { class: "legend", "data-models": models.join(",") }, ...models.map((model, i) =>
      h("span", { class: "legend-item" }, h("span", { class: `swatch ${modelClass(i)}` }), model))),
    h("div", { class: "charts" },
      h("figure", { id: "calls-chart", class: "chart-box" }, h("figcaption", {}, "Calls per day"),
        stackedBars({ days, lines: usage.data, models, value: (line) => line.calls, title: "Calls per day" })),
      h("figure", { id: "tokens-chart", class: "chart-box" }, h("figcaption", {}, "Tokens per day"),
        stackedBars({ days, lines: usage.data, models, value: tokens, title: "Tokens per day" }))),
    h("div", { class: "table-wrap" }, h("table", { class: "table", id: "models-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", { class: "num" }, "Calls"), h("th", {}, "Share"),
        h("th", { class: "num" }, "Prompt tokens"), h("th", { class: "num" }, "Completion tokens"),
        h("th", { class: "num" }, "List cost"))),
      h("tbody", {}, ...perModel.map((m, i) => h("tr", { "data-model": m.model },
        h("td", {}, h("span", { class: `swatch ${modelClass(i)}` }), m.model),
        h("td", { class: "num" }, fmt.int(m.calls)), h("td", { class: "share-cell" }, shareBar(m.calls, t.calls, i)),
        h("td", { class: "num" }, fmt.int(m.pt)), h("td", { class: "num" }, fmt.int(m.ct)),
        h("td", { class: "num" }, cost(m.cost))))),
      h("tfoot", {}, h("tr", {}, h("td", {}, "Total"), h("td", { class: "num" }, fmt.int(t.calls)), h("td", {}),
        h("td", { class: "num" }, fmt.int(t.prompt_tokens)), h("td", { class: "num" }, fmt.int(t.completion_tokens)),
        h("td", { class: "num" }, cost(t.list_cost)))))));
  return usage;
}

// -- lists ---------------------------------------------------------------------------------------------------
/** A table of a paginated list (`{data, has_more, next_cursor}`) with a "Show more" button. */
async function pagedTable(cardId, path, current, { head, row, empty }) {
  const first = await api.get(path);
  if (!current()) return;
  if (first.data.length === 0) {
    replace(body(cardId), h("div", { class: "state state-empty" }, empty));
    return;
  }
  const tbody = h("tbody", {}, ...first.data.map(row));
  const table = h("table", { class: "table" }, h("thead", {}, h("tr", {}, ...head.map(([label, cls]) =>
    h("th", { class: cls }, label)))), tbody);
  const more = h("button", { type: "button", class: "btn btn-small", hidden: !first.has_more }, "Show more");
  let cursor = first.next_cursor;
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api.get(`${path}${sep}starting_after=${encodeURIComponent(cursor)}`);
      tbody.append(...page.data.map(row));
      cursor = page.next_cursor;
      more.hidden = !page.has_more;
    } catch (error) {
      more.replaceWith(h("p", { class: "alert alert-error" }, error.message));
    } finally {
      more.disabled = false;
    }
  });
  replace(body(cardId), h("div", { class: "table-wrap" }, table), more);
}

const pill = (status) => h("span", { class: `pill status-${status}` }, status);

export function loadInvoices(accountId, current) {
  const path = `${acct(accountId)}/invoices`;
  return pagedTable("invoices-card", path, current, {
    empty: "No invoices yet. The first one is issued on the 1st after your first month.",
    head: [["Number"], ["Period"], ["Status"], ["Total", "num"], ["Issued"], ["Due"], ["", "num"]],
    row: (inv) => {
      const button = h("button", { type: "button", class: "btn btn-small pdf-link", "data-number": inv.number,
                                    "aria-label": `Download invoice ${inv.number} as PDF` }, "PDF");
      button.addEventListener("click", async () => {
        button.disabled = true;
        button.textContent = "Downloading…";
        try {
          await download(`${path}/${encodeURIComponent(inv.number)}/pdf`, `${inv.number}.pdf`);
          button.textContent = "PDF";
        } catch (error) {
          button.textContent = "Failed";
          button.title = error.message;
        } finally {
          button.disabled = false;
        }
      });
      return h("tr", { "data-number": inv.number }, h("td", {}, h("code", {}, inv.number)),
        h("td", {}, fmt.month(inv.period)), h("td", {}, pill(inv.status)),
        h("td", { class: "num" }, fmt.money(inv.total_minor, inv.currency)), h("td", {}, fmt.date(inv.issued_at)),
        h("td", {}, fmt.date(inv.due_at)), h("td", { class: "num" }, button));
    },
  });
}

export function loadKeys(accountId, current) {
  return pagedTable("keys-card", `${acct(accountId)}/keys`, current, {
    empty: "No API keys.",
    head: [["Name"], ["Id"], ["Created"], ["Last used"], ["Status"]],
    row: (key) => h("tr", {}, h("td", { class: "wrap" }, key.name), h("td", {}, h("code", {}, key.id)),
      h("td", {}, fmt.date(key.created_at)), h("td", {}, key.last_used_at ? fmt.date(key.last_used_at) : "never"),
      h("td", {}, pill(key.status))),
  });
}

export function loadMembers(accountId, current) {
  return pagedTable("members-card", `${acct(accountId)}/members`, current, {
    empty: "No members.",
    head: [["Email"], ["Role"], ["Status"], ["Since"]],
    row: (m) => h("tr", {}, h("td", { class: "wrap" }, m.email), h("td", {}, h("span", { class: "badge badge-role" }, m.role)),
      h("td", {}, pill(m.status)), h("td", {}, fmt.date(m.created_at))),
  });
}
