// DOM and formatting helpers. Data only ever reaches the page as text nodes or attribute values (never parsed as
// HTML): h() and s() take children as nodes or strings, and strings become text nodes.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: h("td", {class: "num"}, "12"). */
export const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);

/** An SVG element. */
export const s = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

export const $ = (id) => document.getElementById(id);

export function replace(node, ...children) {
  node.replaceChildren();
  return build(node, {}, children);
}

const integer = new Intl.NumberFormat("en-US");
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
const dateFmt = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });
const timeFmt = new Intl.DateTimeFormat("en-GB", { dateStyle: "medium", timeStyle: "short", timeZone: "UTC" });
const clockFmt = new Intl.DateTimeFormat("en-GB", { timeStyle: "medium" });
const monthFmt = new Intl.DateTimeFormat("en-GB", { month: "long", year: "numeric", timeZone: "UTC" });

export const fmt = {
  int: (n) => integer.format(Number(n)),
  compact: (n) => compact.format(Number(n)),
  /** "25.00" -> "25%", "104.17" -> "104.17%" (the API's exact decimal string). */
  percent: (text) => `${Number(text).toLocaleString("en-US", { maximumFractionDigits: 2 })}%`,
  date: (iso) => (iso ? dateFmt.format(new Date(iso)) : "—"),
  dateTime: (iso) => (iso ? `${timeFmt.format(new Date(iso))} UTC` : "—"),
  clock: (date) => clockFmt.format(date),
  month: (period) => monthFmt.format(new Date(`${period}-01T00:00:00Z`)),
  /** Integer minor units of `currency` as money ("$1,234.50"). */
  money(minor, currency) {
    const style = new Intl.NumberFormat("en-US", { style: "currency", currency });
    const digits = style.resolvedOptions().maximumFractionDigits;
    return style.format(Number(minor) / 10 ** digits);
  },
  /** An exact decimal string (list cost) as money with up to 4 decimals. */
  decimalMoney(text, currency) {
    return new Intl.NumberFormat("en-US", { style: "currency", currency, minimumFractionDigits: 2,
                                            maximumFractionDigits: 4 }).format(Number(text));
  },
};

/** The days of a `YYYY-MM` period, as `YYYY-MM-DD` strings. */
export function daysOf(period) {
  const [year, month] = period.split("-").map(Number);
  const count = new Date(Date.UTC(year, month, 0)).getUTCDate();
  return Array.from({ length: count }, (_, i) => `${period}-${String(i + 1).padStart(2, "0")}`);
}

/** The `n` periods up to and including `period`, newest first. */
export function periodsBefore(period, n) {
  const [year, month] = period.split("-").map(Number);
  return Array.from({ length: n }, (_, i) => {
    const d = new Date(Date.UTC(year, month - 1 - i, 1));
    return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, "0")}`;
  });
}
