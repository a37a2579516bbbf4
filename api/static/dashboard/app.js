// The dashboard's entry point: sign-in (member token, or an invitation accepted here), the session header and
// the cards. The quota card refreshes itself every few seconds on Pro and Enterprise; Free loads it once.

import { api, onUnauthorized, session } from "./api.js";
import { $, fmt, h, periodsBefore, replace } from "./dom.js";
import * as cards from "./sections.js";

const LIVE_PLANS = new Set(["pro", "enterprise"]);
const LIVE_MS = 5000;
const CARDS = ["quota-card", "forecast-card", "usage-card", "invoices-card", "keys-card", "members-card"];

let me = null;
let generation = 0;          // bumped on every sign-in, sign-out and account switch: late answers are dropped
let timer = null;

function alertText(id, text) {
  const node = $(id);
  node.textContent = text || "";
  node.hidden = !text;
}

function stopLive() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

function showLogin({ error, info } = {}) {
  stopLive();
  generation += 1;
  me = null;
  $("app-view").hidden = true;
  $("session").hidden = true;
  $("login-view").hidden = false;
  alertText("login-error", error);
  alertText("login-info", info);
  alertText("invite-error", "");
  $("token").value = "";
  $("invite-token").value = "";
  for (const box of document.querySelectorAll(".token-once")) box.remove();
  document.title = "Sign in · aihub";
}

function logout(message) {
  session.clear();
  showLogin(message);
}

onUnauthorized((error) => logout({ error: `Your session has ended (${error.message}) Please sign in again.` }));

async function signIn(token, banner) {
  const caller = await api.get("/me", { token });
  session.setToken(token);
  start(caller, banner);
}

function start(caller, banner) {
  me = caller;
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("session").hidden = false;
  alertText("banner", banner);
  if (me.kind === "member") replace($("who"), me.email, " · ", h("span", { class: "role" }, me.role));
  else replace($("who"), me.kind === "operator" ? "Operator" : "API key");
  const picker = $("account-form");
  picker.hidden = me.kind !== "operator";
  const accountId = me.account_id || session.account();
  if (accountId) {
    $("account-id").value = accountId;
    show(accountId);
  } else {
    $("sections").hidden = true;
    replace($("account-name"), "No account chosen");
    $("plan-badge").hidden = true;
  }
}

async function accountHeader(accountId, alive) {
  replace($("account-name"), accountId);
  $("plan-badge").hidden = true;
  if (!me.permissions.includes("account:read")) return null;
  try {
    const account = await api.get(`/accounts/${encodeURIComponent(accountId)}`);
    if (!alive()) return null;
    replace($("account-name"), account.name);
    const badge = $("plan-badge");
    badge.textContent = account.subscription.plan;
    badge.className = `badge plan-${account.subscription.plan}`;
    badge.hidden = false;
    document.title = `${account.name} · aihub`;
    return account;
  } catch (error) {
    if (alive() && error.status !== 401) replace($("account-name"), `${accountId} (${error.message})`);
    return null;
  }
}

/** Runs `load(current)` for a card unless the role lacks its permission; errors are shown in the card. `current()`
 * is false once the view moved on (sign-out, another account): a late answer must not be drawn then. */
async function guarded(cardId, load) {
  const permission = $(cardId).dataset.permission;
  if (!me.permissions.includes(permission)) return cards.unavailable(cardId, me.role);
  cards.loading(cardId);
  const gen = generation;
  try {
    await load(() => gen === generation);
  } catch (error) {
    if (gen === generation && error.status !== 401) cards.failed(cardId, error, me.role);
  }
}

async function show(accountId) {
  stopLive();
  generation += 1;
  const gen = generation;
  const alive = () => gen === generation;
  $("sections").hidden = false;
  $("live-badge").hidden = true;
  const account = accountHeader(accountId, alive);
  guarded("quota-card", async (current) => {
    let usage = null;
    try {
      usage = await cards.loadCurrent(accountId);
    } finally {          // a failed first load is retried by the live refresh on Pro and Enterprise
      const live = LIVE_PLANS.has((await account)?.subscription.plan ?? usage?.plan);
      if (current() && live) timer = setInterval(() => refreshQuota(accountId, gen), LIVE_MS);
      if (current() && usage) cards.renderQuota(usage, live);
    }
  });
  guarded("forecast-card", (current) => cards.loadForecast(accountId, current));
  guarded("usage-card", async (current) => {
    const usage = await cards.loadUsage(accountId, null, current);
    if (usage) fillPeriods(usage, accountId);
  });
  guarded("invoices-card", (current) => cards.loadInvoices(accountId, current));
  guarded("keys-card", (current) => cards.loadKeys(accountId, current));
  guarded("members-card", (current) => cards.loadMembers(accountId, current));
}

async function refreshQuota(accountId, gen) {
  if (document.hidden || gen !== generation) return;
  try {
    const usage = await cards.loadCurrent(accountId);
    if (gen === generation) cards.renderQuota(usage, true);
  } catch (error) {
    if (gen === generation && error.status !== 401) cards.quotaStale(error);
  }
}

function fillPeriods(usage, accountId) {
  const select = $("period");
  select.replaceChildren(...periodsBefore(usage.period, 12).map((period) =>
    h("option", { value: period }, fmt.month(period))));
  select.value = usage.period;
  select.onchange = () => guarded("usage-card", (current) => cards.loadUsage(accountId, select.value, current));
}

/** The new member's token, shown once (this tab forgets it when closed), with a copy button. */
function showOnce(token) {
  const copy = h("button", { type: "button", class: "btn btn-small" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(token);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy it";
    }
  });
  const done = h("button", { type: "button", class: "btn btn-small btn-ghost" }, "Done");
  const box = h("div", { class: "alert alert-warn token-once", role: "status" },
    h("strong", {}, "Your member token, shown only now. "),
    "Save it in a password manager: you sign in with it next time.",
    h("div", { class: "token-row" }, h("code", { class: "token-value" }, token), copy, done));
  done.addEventListener("click", () => box.remove());
  $("banner").after(box);
}

function busy(form, on) {
  for (const control of form.elements) control.disabled = on;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const token = $("token").value.trim();
  if (!token) return;
  alertText("login-error", "");
  alertText("login-info", "");
  busy(form, true);
  try {
    await signIn(token);
  } catch (error) {
    alertText("login-error", error.status === 401
      ? "This token was not accepted: it is unknown, revoked or belongs to a removed member."
      : error.message);
  } finally {
    busy(form, false);
    $("token").value = "";
  }
});

$("invite-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const token = $("invite-token").value.trim();
  if (!token) return;
  alertText("invite-error", "");
  busy(form, true);
  try {
    const accepted = await api.post("/invites/accept", { token }, { auth: false });
    if (!accepted.token) throw new Error("The invitation was accepted, but no member token came back.");
    await signIn(accepted.token, `Welcome! You joined account ${accepted.account_id} as ${accepted.member.role}.`);
    showOnce(accepted.token);
  } catch (error) {
    alertText("invite-error", error.message);
  } finally {
    busy(form, false);
    $("invite-token").value = "";
  }
});

$("account-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("account-id").value.trim();
  if (!id) return;
  session.setAccount(id);
  show(id);
});

$("logout").addEventListener("click", () => logout({ info: "You are signed out." }));

for (const id of CARDS) cards.loading(id);
const saved = session.token();
if (saved) {
  api.get("/me").then((caller) => start(caller)).catch((error) => {
    if (error.status !== 401) showLogin({ error: `${error.message} Reload the page to try again.` });
  });
} else {
  showLogin();
}
